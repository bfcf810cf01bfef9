//! FP8 experts on the device: block-scaled e4m3 weight stacks, and the launches of
//! kernels/fp8.cu (activation quantization, tile scan, the FP8 grouped GEMM and its K splits).
//!
//! Longer than most files: every launch of kernels/fp8.cu has its wrapper here, beside the weight
//! stacks and buffers they take, and the benchmark helpers (dense rate, timing data) that the
//! bench command and `benches/fp8_gemm.rs` share.

use super::gpu::{Gpu, Timer};
use super::kernels::wave_splits;
use super::kernels::{
    DevPtr, Fp8BlocksArgs, Fp8GemmArgs, Fp8QuantArgs, Fp8SiluArgs, Fp8TilesArgs, GemmRows,
    SplitkReduceArgs,
};
pub use super::kernels::{Fp8Sum, Tile};
use crate::engine::step::Stage;
use crate::engine::weights::fp8::{BlockScaled, Fp8Mlp, BLOCK};
use anyhow::{ensure, Result};
use cudarc::driver::CudaSlice;

/// Equal-shape block-scaled matrices on the device, one after the other: bytes
/// [count × rows × cols], scales [count × rows/128 × cols/128].
pub struct DeviceStack {
    pub data: CudaSlice<u8>,
    pub scales: CudaSlice<f32>,
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
}

impl DeviceStack {
    /// Uploads `mats` (each [rows × cols] with rows and cols multiples of 128).
    pub fn upload(gpu: &Gpu, mats: &[&BlockScaled], what: &str) -> Result<DeviceStack> {
        let first = mats
            .first()
            .ok_or_else(|| anyhow::anyhow!("{what}: no matrices"))?;
        let (rows, cols) = (first.rows, first.cols);
        ensure!(
            rows.is_multiple_of(BLOCK) && cols.is_multiple_of(BLOCK),
            "{what}: FP8 weights of shape [{rows}, {cols}]; the FP8 GEMM needs both dimensions multiples of {BLOCK}"
        );
        let mut data = Vec::with_capacity(mats.len() * rows * cols);
        let mut scales = Vec::with_capacity(mats.len() * (rows / BLOCK) * (cols / BLOCK));
        for m in mats {
            ensure!(
                (m.rows, m.cols) == (rows, cols),
                "{what}: matrices of shapes [{rows}, {cols}] and [{}, {}]",
                m.rows,
                m.cols
            );
            data.extend_from_slice(&m.data);
            scales.extend_from_slice(&m.scale_inv);
        }
        Ok(DeviceStack {
            data: gpu.upload(&data, what)?,
            scales: gpu.upload(&scales, what)?,
            count: mats.len(),
            rows,
            cols,
        })
    }

    /// Block-quantizes `count` bf16 matrices [rows × cols] at `input` on the device (the bits
    /// of `BlockScaled::quantize`).
    pub fn quantize(
        gpu: &Gpu,
        input: DevPtr<u16>,
        count: usize,
        rows: usize,
        cols: usize,
        what: &str,
    ) -> Result<DeviceStack> {
        ensure!(
            rows.is_multiple_of(BLOCK) && cols.is_multiple_of(BLOCK) && count > 0,
            "{what}: {count} FP8 matrices of shape [{rows}, {cols}]; the FP8 GEMM needs both dimensions multiples of {BLOCK}"
        );
        let stack = DeviceStack {
            data: gpu.alloc(count * rows * cols, what)?,
            scales: gpu.alloc(count * (rows / BLOCK) * (cols / BLOCK), what)?,
            count,
            rows,
            cols,
        };
        gpu.launch(Fp8BlocksArgs {
            input,
            out: gpu.ptr(&stack.data),
            scales: gpu.ptr(&stack.scales),
            mats: count as u64,
            rows: rows as u64,
            cols: cols as u64,
        })?;
        Ok(stack)
    }

    /// Matrix `idx` copied back from the device, as stored there.
    pub fn download(&self, gpu: &Gpu, idx: usize) -> Result<BlockScaled> {
        ensure!(idx < self.count, "FP8 matrix {idx} of {}", self.count);
        let (n, ns) = (
            self.rows * self.cols,
            (self.rows / BLOCK) * (self.cols / BLOCK),
        );
        Ok(BlockScaled {
            rows: self.rows,
            cols: self.cols,
            data: gpu.download_at(&self.data, idx * n, n, "FP8 weights")?,
            scale_inv: gpu.download_at(&self.scales, idx * ns, ns, "FP8 weight scales")?,
        })
    }

    /// Bytes per matrix (e4m3 codes and scales): what one group of a GEMM streams.
    pub fn bytes_per_matrix(&self) -> usize {
        self.rows * self.cols + 4 * (self.rows / BLOCK) * (self.cols / BLOCK)
    }
}

/// The FP8 weights of a set of MLP slots: gate and up stacked per slot as [2I × H] (gate rows
/// first, as the bf16 `w13`), down [H × I].
pub struct Fp8Slots {
    pub w13: DeviceStack,
    pub w2: DeviceStack,
}

impl Fp8Slots {
    /// Slot `idx` copied back from the device: gate and up split again.
    pub fn download(&self, gpu: &Gpu, idx: usize) -> Result<Fp8Mlp> {
        let w13 = self.w13.download(gpu, idx)?;
        let inter = w13.rows / 2;
        let (h, split, split_s) = (
            w13.cols,
            inter * w13.cols,
            (inter / BLOCK) * (w13.cols / BLOCK),
        );
        let half = |data: &[u8], scales: &[f32]| BlockScaled {
            rows: inter,
            cols: h,
            data: data.to_vec(),
            scale_inv: scales.to_vec(),
        };
        Ok(Fp8Mlp {
            hidden: h,
            intermediate: inter,
            gate: half(&w13.data[..split], &w13.scale_inv[..split_s]),
            up: half(&w13.data[split..], &w13.scale_inv[split_s..]),
            down: self.w2.download(gpu, idx)?,
        })
    }

    pub fn upload(gpu: &Gpu, mlps: &[Fp8Mlp], what: &str) -> Result<Fp8Slots> {
        let w13: Vec<BlockScaled> = mlps
            .iter()
            .map(|m| BlockScaled {
                rows: m.gate.rows + m.up.rows,
                cols: m.gate.cols,
                data: [m.gate.data.as_slice(), &m.up.data].concat(),
                scale_inv: [m.gate.scale_inv.as_slice(), &m.up.scale_inv].concat(),
            })
            .collect();
        let refs: Vec<&BlockScaled> = w13.iter().collect();
        let downs: Vec<&BlockScaled> = mlps.iter().map(|m| &m.down).collect();
        Ok(Fp8Slots {
            w13: DeviceStack::upload(gpu, &refs, &format!("{what} gate/up"))?,
            w2: DeviceStack::upload(gpu, &downs, &format!("{what} down"))?,
        })
    }
}

/// Quantizes bf16 `input` [rows × cols] per row and group of 128 into `out` and `scales`.
pub fn quant_rows(
    gpu: &Gpu,
    input: DevPtr<u16>,
    rows: usize,
    cols: usize,
    out: DevPtr<u8>,
    scales: DevPtr<f32>,
) -> Result<()> {
    ensure!(
        cols.is_multiple_of(BLOCK),
        "FP8 activation quantization of {cols} columns; expected a multiple of {BLOCK}"
    );
    gpu.launch(Fp8QuantArgs {
        input,
        out,
        scales,
        rows: rows as u64,
        cols: cols as u64,
    })
}

/// SiLU·mul of `h` f32 [rows × 2·inter], rounded to bf16 and quantized per row and group of 128.
pub fn silu_mul_quant(
    gpu: &Gpu,
    h: DevPtr<f32>,
    rows: usize,
    inter: usize,
    out: DevPtr<u8>,
    scales: DevPtr<f32>,
) -> Result<()> {
    ensure!(
        inter.is_multiple_of(BLOCK),
        "FP8 SiLU·mul over an intermediate size of {inter}; expected a multiple of {BLOCK}"
    );
    gpu.launch(Fp8SiluArgs {
        h,
        out,
        scales,
        rows: rows as u64,
        inter: inter as u64,
    })
}

/// `tiles` [groups + 1] of `tile`-row tiles from row `offsets` [groups + 1], on the device.
pub fn tile_scan(
    gpu: &Gpu,
    offsets: DevPtr<i32>,
    groups: usize,
    tile: Tile,
    tiles: DevPtr<i32>,
) -> Result<()> {
    ensure!(
        (1..=1024).contains(&groups),
        "FP8 GEMM over {groups} groups; supported: 1 to 1024"
    );
    gpu.launch(Fp8TilesArgs {
        offsets,
        tiles,
        groups: groups as i32,
        bm: tile.rows() as i32,
    })
}

/// K splits of a GEMM with `tiles` M tiles, N columns and K depth (`wave_splits`), each split at
/// least 4 K blocks deep (the pipeline's stages).
pub fn k_splits(sms: u32, tile: Tile, tiles: usize, n: usize, k: usize) -> usize {
    wave_splits(sms, tile, tiles * n.div_ceil(BLOCK), k / BLOCK, 4)
}

/// One FP8 grouped-GEMM launch (kernels/fp8.cu `fp8_gemm`; the fields are its arguments).
#[derive(Clone, Copy, Debug)]
pub struct Fp8Gemm {
    pub a: DevPtr<u8>,
    pub a_scales: DevPtr<f32>,
    pub a_mode: GemmRows,
    pub a_map: DevPtr<i32>,
    pub a_div: i32,
    pub b0: DevPtr<u8>,
    pub b1: DevPtr<u8>,
    pub bs0: DevPtr<f32>,
    pub bs1: DevPtr<f32>,
    pub n_first: i32,
    /// Elements between consecutive groups' weights and scales.
    pub b_stride: i64,
    pub bs_stride: i64,
    pub c: DevPtr<f32>,
    pub offsets: DevPtr<i32>,
    /// Tile offsets for `tile` (from `tile_scan`).
    pub tiles: DevPtr<i32>,
    pub groups: usize,
    pub n: usize,
    pub k: usize,
    /// An upper bound of the rows of all groups together.
    pub rows: usize,
    pub tile: Tile,
    pub sum: Fp8Sum,
    /// K splits (partials at c + z · c_split, summed by `splitk_reduce`) or 1.
    pub k_splits: usize,
    pub c_split: usize,
}

impl Fp8Gemm {
    /// The weights of groups `0..` from one stack (b0 = b1).
    pub fn weights(mut self, gpu: &Gpu, w: &DeviceStack) -> Fp8Gemm {
        self.b0 = gpu.ptr(&w.data);
        self.b1 = self.b0;
        self.bs0 = gpu.ptr(&w.scales);
        self.bs1 = self.bs0;
        self.n_first = w.count as i32;
        self.b_stride = (w.rows * w.cols) as i64;
        self.bs_stride = ((w.rows / BLOCK) * (w.cols / BLOCK)) as i64;
        self
    }
}

/// Launches one FP8 grouped GEMM.
pub fn gemm(gpu: &Gpu, g: &Fp8Gemm) -> Result<()> {
    ensure!(
        g.n.is_multiple_of(BLOCK) && g.k.is_multiple_of(BLOCK),
        "FP8 GEMM of N {} and K {}; both must be multiples of {BLOCK}",
        g.n,
        g.k
    );
    ensure!(
        g.k_splits >= 1 && (g.k / BLOCK).is_multiple_of(g.k_splits),
        "FP8 GEMM: {} K splits do not divide {} K blocks",
        g.k_splits,
        g.k / BLOCK
    );
    let max_tiles = g.tile.max_tiles(g.rows, g.groups);
    let args = Fp8GemmArgs {
        a: g.a,
        a_scales: g.a_scales,
        a_mode: g.a_mode,
        a_map: g.a_map,
        a_div: g.a_div,
        b0: g.b0,
        b1: g.b1,
        bs0: g.bs0,
        bs1: g.bs1,
        n_first: g.n_first,
        b_stride: g.b_stride,
        bs_stride: g.bs_stride,
        c: g.c,
        offsets: g.offsets,
        tiles: g.tiles,
        groups: g.groups as i32,
        n: g.n as i32,
        k: g.k as i32,
        k_splits: g.k_splits as i32,
        c_split: g.c_split as i64,
        bm: g.tile.rows() as i32,
        max_tiles: max_tiles as i32,
    };
    gpu.launch_fn(g.tile.fp8_function(g.sum), args)
}

/// Sums `splits` partial [rows × n] products at `parts` into `out` in split order
/// (kernels/moe.cu `splitk_reduce`; deterministic).
pub fn splitk_reduce(
    gpu: &Gpu,
    parts: DevPtr<f32>,
    splits: usize,
    rows: usize,
    n: usize,
    out: DevPtr<f32>,
) -> Result<()> {
    gpu.launch(SplitkReduceArgs {
        part: parts,
        splits: splits as i32,
        n: (rows * n) as u64,
        cols: n as i32,
        bias: DevPtr::NULL,
        out,
    })
}

/// `gemm` with `splits` K splits into `parts` (at least splits × rows × n floats), reduced
/// into `g.c`; or straight into `g.c` when `splits` is 1.
pub fn gemm_split(gpu: &Gpu, g: &Fp8Gemm, splits: usize, parts: DevPtr<f32>) -> Result<()> {
    if splits <= 1 {
        return gemm(gpu, &Fp8Gemm { k_splits: 1, ..*g });
    }
    let split = Fp8Gemm {
        c: parts,
        k_splits: splits,
        c_split: g.rows * g.n,
        ..*g
    };
    gemm(gpu, &split)?;
    splitk_reduce(gpu, parts, splits, g.rows, g.n, g.c)
}

/// The FP8 weights of the grouped expert MLP: the routed experts, then (path B) the shared
/// slots as extra groups.
pub struct Fp8Experts {
    pub routed: Fp8Slots,
    pub shared: Option<Fp8Slots>,
}

impl Fp8Experts {
    /// Groups of the grouped GEMMs.
    pub fn groups(&self) -> usize {
        self.routed.w13.count + self.shared.as_ref().map_or(0, |s| s.w13.count)
    }

    /// FP8 bytes (codes and scales) of one group's up and down weights.
    pub fn bytes_per_group(&self) -> usize {
        self.routed.w13.bytes_per_matrix() + self.routed.w2.bytes_per_matrix()
    }
}

/// How one projection of the FP8 expert MLP launches: how it sums, its tile, its K splits and
/// its tile offsets.
pub struct Projection {
    pub sum: Fp8Sum,
    pub tile: Tile,
    pub splits: usize,
    /// Tile offsets [groups + 1] (`tile_scan` each step; the down projection reads the up
    /// projection's where the two take the same tile).
    pub tiles: CudaSlice<i32>,
}

impl Projection {
    fn new(gpu: &Gpu, sum: Fp8Sum, rows: usize, groups: usize, n: usize, k: usize) -> Result<Self> {
        let tile = Tile::for_fp8_rows(rows, groups, sum);
        Ok(Projection {
            sum,
            tile,
            splits: k_splits(gpu.sms, tile, tile.max_tiles(rows, groups), n, k),
            tiles: gpu.alloc(groups + 1, "FP8 GEMM tiles")?,
        })
    }
}

/// Device buffers of the FP8 expert MLP for `tokens` tokens of `spt` slots each.
pub struct ExpertBuffers {
    pub tokens: usize,
    pub rows: usize,
    /// The up projection sums in fp32: its output is quantized again, where a difference of
    /// 1e-4 moves codes (`Fp8Sum`). The down projection's output is summed as it is.
    pub up: Projection,
    pub down: Projection,
    /// The tokens in e4m3 [T × H] and their scales [T × H/128].
    pub xq: CudaSlice<u8>,
    pub xs: CudaSlice<f32>,
    /// Up projection [rows × 2I] f32.
    pub h1: CudaSlice<f32>,
    /// SiLU·mul in e4m3 [rows × I] and its scales.
    pub aq: CudaSlice<u8>,
    pub a_s: CudaSlice<f32>,
    pub parts: CudaSlice<f32>,
}

impl ExpertBuffers {
    pub fn new(gpu: &Gpu, w: &Fp8Experts, tokens: usize, spt: usize) -> Result<ExpertBuffers> {
        ExpertBuffers::for_slots(gpu, &w.routed, w.groups(), tokens, spt)
    }

    /// Buffers for `groups` groups of slots shaped as `like`, `tokens` × `spt` rows.
    pub fn for_slots(
        gpu: &Gpu,
        like: &Fp8Slots,
        groups: usize,
        tokens: usize,
        spt: usize,
    ) -> Result<ExpertBuffers> {
        let (h, i2) = (like.w13.cols, like.w13.rows);
        let i = i2 / 2;
        let rows = tokens * spt;
        let up = Projection::new(gpu, Fp8Sum::Fp32, rows, groups, i2, h)?;
        let down = Projection::new(gpu, Fp8Sum::TensorCore, rows, groups, h, i)?;
        let part = |splits: usize, n: usize| if splits > 1 { splits * rows * n } else { 0 };
        let parts = part(up.splits, i2).max(part(down.splits, h));
        Ok(ExpertBuffers {
            tokens,
            rows,
            up,
            down,
            xq: gpu.alloc(tokens * h, "FP8 tokens")?,
            xs: gpu.alloc(tokens * h / BLOCK, "FP8 token scales")?,
            h1: gpu.alloc(rows * i2, "FP8 expert gate/up outputs")?,
            aq: gpu.alloc(rows * i, "FP8 expert activations")?,
            a_s: gpu.alloc(rows * i / BLOCK, "FP8 activation scales")?,
            parts: gpu.alloc(parts, "FP8 GEMM partials")?,
        })
    }
}

/// Where the grouped expert MLP reads its rows: the step's tokens (bf16 [T × H]) and the
/// alignment (order [rows]: assignment per permuted row; offsets [groups + 1]).
#[derive(Clone, Copy, Debug)]
pub struct ExpertInputs {
    pub x: DevPtr<u16>,
    /// How rows find their token: `Mapped` (order[row] / spt, the routed experts) or
    /// `PerGroup` (row − offsets[group], the separate shared MLP: every group all tokens).
    pub rows_mode: GemmRows,
    pub order: DevPtr<i32>,
    pub offsets: DevPtr<i32>,
    pub spt: usize,
    /// Output [rows × H] f32, one row per permuted assignment (what `combine` reads).
    pub eo: DevPtr<f32>,
}

/// The FP8 expert MLP over every slot, as the bf16 `experts` stage: quantize the tokens, up
/// GEMM, SiLU·mul quantized, down GEMM.
pub fn run_experts(gpu: &Gpu, w: &Fp8Experts, b: &ExpertBuffers, io: &ExpertInputs) -> Result<()> {
    let mut off = Timer::new(false);
    run_slots(gpu, &w.routed, w.shared.as_ref(), b, io, &mut off)
}

/// `run_experts` over `routed` slots and, as extra groups after them, `shared` ones, each
/// launch timed by `timer` as a stage of the layer (the GEMMs' bytes are filled in later, as
/// the bf16 GEMMs' are).
pub fn run_slots(
    gpu: &Gpu,
    routed: &Fp8Slots,
    shared: Option<&Fp8Slots>,
    b: &ExpertBuffers,
    io: &ExpertInputs,
    timer: &mut Timer,
) -> Result<()> {
    let (h, i2) = (routed.w13.cols, routed.w13.rows);
    if let Some(s) = shared {
        ensure!(
            (s.w13.rows, s.w13.cols) == (i2, h),
            "FP8 shared slots of [{}, {}] beside routed experts of [{i2}, {h}]: a fused slot must have the routed experts' shape",
            s.w13.rows,
            s.w13.cols
        );
    }
    let groups = routed.w13.count + shared.map_or(0, |s| s.w13.count);
    timer.start(gpu)?;
    quant_rows(gpu, io.x, b.tokens, h, gpu.ptr(&b.xq), gpu.ptr(&b.xs))?;
    // One scan per tile height: at decode sizes both projections take 16-row tiles.
    tile_scan(gpu, io.offsets, groups, b.up.tile, gpu.ptr(&b.up.tiles))?;
    let down_tiles = if b.down.tile == b.up.tile {
        &b.up.tiles
    } else {
        tile_scan(gpu, io.offsets, groups, b.down.tile, gpu.ptr(&b.down.tiles))?;
        &b.down.tiles
    };
    let quant_bytes = (b.tokens * h * 3 + 4 * b.tokens * h / BLOCK) as u64;
    timer.stop(gpu, Stage::Fp8Quant, Some(quant_bytes))?;
    let gemm_of = |p: &Projection,
                   tiles: &CudaSlice<i32>,
                   stack: &DeviceStack,
                   shared: Option<&DeviceStack>| {
        let g = Fp8Gemm {
            a_map: io.order,
            a_div: io.spt as i32,
            offsets: io.offsets,
            tiles: gpu.ptr(tiles),
            groups,
            rows: b.rows,
            tile: p.tile,
            sum: p.sum,
            ..Fp8Gemm::blank(gpu, stack)
        };
        match shared {
            Some(s) => Fp8Gemm {
                b1: gpu.ptr(&s.data),
                bs1: gpu.ptr(&s.scales),
                ..g
            },
            None => g,
        }
    };
    let up = Fp8Gemm {
        a: gpu.ptr(&b.xq),
        a_scales: gpu.ptr(&b.xs),
        a_mode: io.rows_mode,
        c: gpu.ptr(&b.h1),
        ..gemm_of(&b.up, &b.up.tiles, &routed.w13, shared.map(|s| &s.w13))
    };
    let parts = gpu.ptr(&b.parts);
    timer.start(gpu)?;
    gemm_split(gpu, &up, b.up.splits, parts)?;
    timer.stop(gpu, Stage::ExpertGemmUp, None)?;
    timer.start(gpu)?;
    silu_mul_quant(
        gpu,
        gpu.ptr(&b.h1),
        b.rows,
        i2 / 2,
        gpu.ptr(&b.aq),
        gpu.ptr(&b.a_s),
    )?;
    let silu_bytes = (b.rows * i2 * 4 + b.rows * i2 / 2 + 4 * b.rows * i2 / 2 / BLOCK) as u64;
    timer.stop(gpu, Stage::SiluMul, Some(silu_bytes))?;
    let down = Fp8Gemm {
        a: gpu.ptr(&b.aq),
        a_scales: gpu.ptr(&b.a_s),
        c: io.eo,
        ..gemm_of(&b.down, down_tiles, &routed.w2, shared.map(|s| &s.w2))
    };
    timer.start(gpu)?;
    gemm_split(gpu, &down, b.down.splits, parts)?;
    timer.stop(gpu, Stage::ExpertGemmDown, None)
}

// --- for benchmarks: data that only has to be there, and a dense rate of the same kernel ---

/// `n` random bytes (bf16 uniform bit patterns read as e4m3 codes): timing needs non-zero
/// data, not meaningful values.
pub fn random_bytes(gpu: &Gpu, n: usize, tensor: u64) -> Result<CudaSlice<u8>> {
    let buf = gpu.alloc::<u8>(n.next_multiple_of(2), "random bytes")?;
    gpu.launch(super::kernels::InitUniformArgs {
        out: gpu.ptr(&buf).cast::<u16>(),
        n: (n / 2) as u64,
        seed: 7,
        tensor,
        amp: 1.0,
    })?;
    Ok(buf)
}

/// `count` random matrices [rows × cols] with unit scales.
pub fn random_stack(
    gpu: &Gpu,
    count: usize,
    rows: usize,
    cols: usize,
    tensor: u64,
) -> Result<DeviceStack> {
    let scales = gpu.alloc::<f32>(count * (rows / BLOCK) * (cols / BLOCK), "scales")?;
    gpu.fill(gpu.ptr(&scales), scales.len(), 1f32.to_bits())?;
    Ok(DeviceStack {
        data: random_bytes(gpu, count * rows * cols, tensor)?,
        scales,
        count,
        rows,
        cols,
    })
}

impl Fp8Gemm {
    /// A one-group GEMM over `w` with nothing else set (the fields a launch fills in).
    pub fn blank(gpu: &Gpu, w: &DeviceStack) -> Fp8Gemm {
        Fp8Gemm {
            a: DevPtr::NULL,
            a_scales: DevPtr::NULL,
            a_mode: GemmRows::Direct,
            a_map: DevPtr::NULL,
            a_div: 1,
            b0: DevPtr::NULL,
            b1: DevPtr::NULL,
            bs0: DevPtr::NULL,
            bs1: DevPtr::NULL,
            n_first: 0,
            b_stride: 0,
            bs_stride: 0,
            c: DevPtr::NULL,
            offsets: DevPtr::NULL,
            tiles: DevPtr::NULL,
            groups: 1,
            n: w.rows,
            k: w.cols,
            rows: 0,
            tile: Tile::M64,
            sum: Fp8Sum::Fp32,
            k_splits: 1,
            c_split: 0,
        }
        .weights(gpu, w)
    }
}

/// TFLOP/s of one dense GEMM [8192 × 7168] · [4096 × 7168]ᵀ with this kernel, summing as `sum`
/// says (the median of `repeats` event-timed runs): the dense FP8 rates grouped GEMMs are
/// measured against.
pub fn dense_tflops(gpu: &Gpu, repeats: usize, sum: Fp8Sum) -> Result<f64> {
    let (m, n, k) = (8192usize, 4096usize, 7168usize);
    let w = random_stack(gpu, 1, n, k, 3)?;
    let a = random_bytes(gpu, m * k, 4)?;
    let sa = gpu.alloc::<f32>(m * k / BLOCK, "A scales")?;
    gpu.fill(gpu.ptr(&sa), sa.len(), 1f32.to_bits())?;
    let c = gpu.alloc::<f32>(m * n, "C")?;
    let off = gpu.upload(&[0i32, m as i32], "offsets")?;
    let tiles = gpu.alloc::<i32>(2, "tiles")?;
    // The tile a group of m rows gets.
    let tile = Tile::for_fp8_rows(m, 1, sum);
    tile_scan(gpu, gpu.ptr(&off), 1, tile, gpu.ptr(&tiles))?;
    let g = Fp8Gemm {
        a: gpu.ptr(&a),
        a_scales: gpu.ptr(&sa),
        c: gpu.ptr(&c),
        offsets: gpu.ptr(&off),
        tiles: gpu.ptr(&tiles),
        rows: m,
        tile,
        sum,
        ..Fp8Gemm::blank(gpu, &w)
    };
    let us = super::timing::median_us(gpu, repeats, || gemm(gpu, &g))?;
    Ok(2.0 * (m * n * k) as f64 / us / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tile_fits_its_blocks_in_an_sm() {
        // 227 KB of shared memory per SM, 1 KB reserved per block.
        for t in Tile::ALL {
            let blocks = t.blocks_per_sm() as u32;
            assert!(blocks * (t.shared_bytes() + 1024) <= 227 * 1024, "{t:?}");
            assert!(t.shared_bytes().is_multiple_of(16));
        }
        assert_eq!(Tile::for_rows(8, 8), Tile::M16);
        // DeepSeek-V3 at T = 256 (2560 rows over 257 groups): 64-row wgmma tiles, 16-row mma.sync.
        assert_eq!(Tile::for_rows(2560, 257), Tile::M64);
        assert_eq!(Tile::for_fp8_rows(2560, 257, Fp8Sum::Fp32), Tile::M16);
        assert_eq!(Tile::for_rows(2048, 9), Tile::M64);
        assert_eq!(Tile::for_rows(4096, 9), Tile::M128);
        // DeepSeek-V3 at T = 512 and 1024 (path B: 5120 and 10240 rows over 257 groups): the
        // wgmma rule takes 64-row tiles, the mma.sync rule 32-row ones.
        assert_eq!(Tile::for_rows(5120, 257), Tile::M64);
        assert_eq!(Tile::for_rows(10240, 257), Tile::M64);
        assert_eq!(Tile::for_fp8_rows(5120, 257, Fp8Sum::Fp32), Tile::M32);
        assert_eq!(Tile::for_fp8_rows(10240, 257, Fp8Sum::Fp32), Tile::M32);
        assert_eq!(
            Tile::for_fp8_rows(10240, 257, Fp8Sum::TensorCore),
            Tile::M64
        );
        assert_eq!(Tile::for_fp8_rows(2048, 9, Fp8Sum::Fp32), Tile::M64);
        assert_eq!(Tile::for_fp8_rows(4096, 9, Fp8Sum::Fp32), Tile::M128);
    }

    #[test]
    fn k_splits_fill_the_device_at_small_batches_only() {
        // T = 1, DeepSeek-V3 up projection: 9 groups × 32 column blocks, 56 K blocks.
        let s = k_splits(132, Tile::M16, 9, 4096, 7168);
        assert!(s > 1 && 56 % s == 0 && 56 / s >= 4, "{s}");
        // Many tiles: no split.
        assert_eq!(k_splits(132, Tile::M16, 600, 4096, 7168), 1);
        // Too shallow to split.
        assert_eq!(k_splits(132, Tile::M16, 1, 128, 256), 1);
    }
}
