//! The grouped GEMM launches of a path: how each GEMM's arguments are formed, and the K split
//! (partials, then a fixed-order sum, so results are deterministic).

use super::super::gpu::Gpu;
use super::super::kernels::{
    DevPtr, GemmArgs, GemmRows, InitUniformArgs, SplitkReduceArgs, Tile, GEMM_ROW_BYTES,
};
use anyhow::{ensure, Result};

/// The B side of a grouped GEMM: group g < n_first reads b0 + g · stride, later groups
/// b1 + (g − n_first) · stride (routed experts, then the shared slots).
#[derive(Clone, Copy, Debug)]
pub struct Weights {
    pub b0: DevPtr<u16>,
    pub b1: DevPtr<u16>,
    pub n_first: usize,
    pub stride: usize,
}

impl Weights {
    /// One weight tensor of groups `stride` apart.
    pub fn one(b: DevPtr<u16>, groups: usize, stride: usize) -> Weights {
        Weights {
            b0: b,
            b1: b,
            n_first: groups,
            stride,
        }
    }
}

/// The groups of a grouped GEMM: row and tile offsets per group on the device.
#[derive(Clone, Copy, Debug)]
pub struct Groups {
    pub offsets: DevPtr<i32>,
    /// Offsets of `tile`-row tiles.
    pub tiles: DevPtr<i32>,
    pub count: usize,
    /// An upper bound of the rows of all groups together.
    pub rows: usize,
    pub tile: Tile,
}

/// One grouped bf16 GEMM launch: its arguments and the tile height they were made for.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub args: GemmArgs,
    pub tile: Tile,
}

/// C [rows × n] = A (rows found by `rows`) · B_g^T over K = `k`, without K splits.
#[allow(clippy::too_many_arguments)]
pub fn args(
    a: DevPtr<u16>,
    rows: GemmRows,
    a_map: DevPtr<i32>,
    a_div: usize,
    w: Weights,
    groups: Groups,
    c: DevPtr<f32>,
    col_bias: DevPtr<f32>,
    n: usize,
    k: usize,
) -> Gemm {
    let args = GemmArgs {
        a,
        a_mode: rows,
        a_map,
        a_div: a_div as i32,
        b0: w.b0,
        b1: w.b1,
        n_first: w.n_first as i32,
        b_stride: w.stride as i64,
        c,
        col_bias,
        offsets: groups.offsets,
        tiles: groups.tiles,
        groups: groups.count as i32,
        n: n as i32,
        k: k as i32,
        k_splits: 1,
        c_split: 0,
        bm: groups.tile.rows() as i32,
        max_tiles: groups.tile.max_tiles(groups.rows, groups.count) as i32,
    };
    Gemm {
        args,
        tile: groups.tile,
    }
}

/// Runs `g` (written for no split, C [rows × n] with its column bias) in `splits` K splits:
/// partials into `parts`, then their sum in split order plus the bias into g's C.
pub fn run_split(
    gpu: &Gpu,
    gemm: Gemm,
    splits: usize,
    rows: usize,
    parts: DevPtr<f32>,
) -> Result<()> {
    let (mut g, function) = (gemm.args, gemm.tile.bf16_function());
    ensure!(
        (g.k as usize * 2).is_multiple_of(GEMM_ROW_BYTES) && g.n % 2 == 0,
        "grouped bf16 GEMM of N {} and K {}: K must be a multiple of {} and N even",
        g.n,
        g.k,
        GEMM_ROW_BYTES / 2
    );
    let stages = g.k as usize * 2 / GEMM_ROW_BYTES;
    ensure!(
        splits >= 1 && stages.is_multiple_of(splits),
        "grouped bf16 GEMM: {splits} K splits do not divide {stages} K stages"
    );
    if splits <= 1 {
        return gpu.launch_fn(function, g);
    }
    let (out, bias, n) = (g.c, g.col_bias, g.n as usize);
    g.c = parts;
    g.col_bias = DevPtr::NULL;
    g.k_splits = splits as i32;
    g.c_split = (rows * n) as i64;
    gpu.launch_fn(function, g)?;
    gpu.launch(SplitkReduceArgs {
        part: parts,
        splits: splits as i32,
        n: (rows * n) as u64,
        cols: n as i32,
        bias,
        out,
    })
}

/// TFLOP/s of one dense bf16 GEMM [8192 × 7168] · [4096 × 7168]ᵀ with the grouped kernel's
/// 64-row tiles (the median of `repeats` event-timed runs): the dense bf16 rate the grouped
/// expert GEMMs are measured against.
pub fn dense_tflops(gpu: &Gpu, repeats: usize) -> Result<f64> {
    let (m, n, k) = (8192usize, 4096usize, 7168usize);
    let random = |len: usize, tensor: u64| -> Result<_> {
        let buf = gpu.alloc::<u16>(len, "random bf16")?;
        gpu.launch(InitUniformArgs {
            out: gpu.ptr(&buf),
            n: len as u64,
            seed: 7,
            tensor,
            amp: 1.0,
        })?;
        Ok(buf)
    };
    let (a, b) = (random(m * k, 5)?, random(n * k, 6)?);
    let c = gpu.alloc::<f32>(m * n, "C")?;
    let tile = Tile::for_rows(m, 1); // the tile a group of m rows gets
    let offsets = gpu.upload(&[0i32, m as i32], "offsets")?;
    let tiles = gpu.upload(&[0i32, m.div_ceil(tile.rows()) as i32], "tiles")?;
    let groups = Groups {
        offsets: gpu.ptr(&offsets),
        tiles: gpu.ptr(&tiles),
        count: 1,
        rows: m,
        tile,
    };
    let w = Weights::one(gpu.ptr(&b), 1, 0);
    let g = args(
        gpu.ptr(&a),
        GemmRows::Direct,
        DevPtr::NULL,
        1,
        w,
        groups,
        gpu.ptr(&c),
        DevPtr::NULL,
        n,
        k,
    );
    let us =
        super::super::timing::median_us(gpu, repeats, || run_split(gpu, g, 1, m, DevPtr::NULL))?;
    Ok(2.0 * (m * n * k) as f64 / us / 1e6)
}
