//! The grouped GEMM launches of a path: how each GEMM's arguments are formed, and the K split
//! (partials, then a fixed-order sum, so results are deterministic).

use super::super::gpu::Gpu;
use super::super::kernels::{DevPtr, GemmArgs, GemmRows, SplitkReduceArgs, GEMM_BM};
use anyhow::Result;

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
    pub tiles: DevPtr<i32>,
    pub count: usize,
    /// An upper bound of the M tiles over all groups (the grid's x).
    pub max_tiles: usize,
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
) -> GemmArgs {
    GemmArgs {
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
        max_tiles: groups.max_tiles as i32,
    }
}

/// Runs `g` (written for no split, C [rows × n] with its column bias) in `splits` K splits:
/// partials into `parts`, then their sum in split order plus the bias into g's C.
pub fn run_split(
    gpu: &Gpu,
    mut g: GemmArgs,
    splits: usize,
    rows: usize,
    parts: DevPtr<f32>,
) -> Result<()> {
    if splits <= 1 {
        return gpu.launch(g);
    }
    let (out, bias, n) = (g.c, g.col_bias, g.n as usize);
    g.c = parts;
    g.col_bias = DevPtr::NULL;
    g.k_splits = splits as i32;
    g.c_split = (rows * n) as i64;
    gpu.launch(g)?;
    gpu.launch(SplitkReduceArgs {
        part: parts,
        splits: splits as i32,
        n: (rows * n) as u64,
        cols: n as i32,
        bias,
        out,
    })
}

/// M tiles of `rows` rows in `groups` groups, at most.
pub fn max_tiles(rows: usize, groups: usize) -> usize {
    rows.div_ceil(GEMM_BM) + groups
}
