//! Every kernel's argument struct, its launch geometry and the functions that take it, by module
//! (kernels/NAME.cu). The field comments give the shapes; the kernels' own comments say what they
//! compute.

use super::{AnyPtr, ArgsInfo, CType, DevPtr, Field, Grid, Kernel, KernelInfo, Module};

/// Blocks of the output-statistics reduction (one partial each, summed on the host).
pub const STATS_BLOCKS: usize = 512;
/// Grouped GEMM (kernels/grouped_gemm.cuh): columns per tile (GG_BN), bytes of each row's K
/// slice per pipeline stage (GG_ROW: 64 bf16 or 128 e4m3 values), pipeline stages (GG_STAGES),
/// the padded shared row (GG_LD), and the dynamic shared memory of one block of `bm`-row tiles.
pub const GEMM_BN: usize = 128;
pub const GEMM_ROW_BYTES: usize = 128;
pub const GEMM_STAGES: usize = 4;
pub const GEMM_LD: usize = GEMM_ROW_BYTES + 16;
pub const fn gemm_shared_bytes(bm: usize) -> u32 {
    (GEMM_STAGES * (bm * GEMM_LD + GEMM_BN * GEMM_LD + 4 * bm + 16)) as u32
}

/// K splits of a grouped GEMM of `blocks` output tiles of `tile` over `stages` pipeline stages of
/// K, at the tile's blocks per SM: none once the output fills four waves; else the divisor of `stages` (each split
/// at least `min_depth` stages deep, at most 64 splits, at most 16 waves) whose last wave is
/// fullest, with a little held against each extra split (more partials to sum and pipelines to
/// fill). At DeepSeek-V3's T = 1, 288 up-projection tiles in 4 splits make 4.4 waves (the fifth
/// 36% full); 8 splits make 8.7.
pub fn wave_splits(sms: u32, tile: Tile, blocks: usize, stages: usize, min_depth: usize) -> usize {
    let slots = tile.blocks_per_sm() * sms.max(1) as usize;
    if blocks >= 4 * slots || blocks == 0 {
        return 1;
    }
    let waves = |d: usize| (blocks * d) as f64 / slots as f64;
    let score = |d: usize| waves(d) / waves(d).ceil() - 0.01 * d as f64;
    (1..=(stages / min_depth.max(1)).clamp(1, 64))
        .filter(|&d| stages.is_multiple_of(d) && (d == 1 || waves(d) <= 16.0))
        .max_by(|&a, &b| score(a).total_cmp(&score(b)))
        .unwrap_or(1)
}

/// The tile height of a grouped-GEMM launch (the same kernels for bf16 and FP8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 16 rows: decode and small batches, where most rows of a 64-row tile would be empty.
    M16,
    /// 32 rows: on mma.sync, groups of 12 to 48 rows (DeepSeek-V3 near T = 512), where 16-row
    /// tiles would stream each group's weights through L2 twice or more and 64-row tiles would
    /// be mostly zero fill.
    M32,
    M64,
    /// 128 rows: prefill-sized groups, where the MMA rate bounds the GEMM and a larger warp tile
    /// loads fewer fragments per MMA (one block per SM).
    M128,
}

impl Tile {
    pub const ALL: [Tile; 4] = [Tile::M16, Tile::M32, Tile::M64, Tile::M128];

    pub fn rows(self) -> usize {
        match self {
            Tile::M16 => 16,
            Tile::M32 => 32,
            Tile::M64 => 64,
            Tile::M128 => 128,
        }
    }

    /// Blocks of this tile one SM holds (shared memory and registers).
    pub fn blocks_per_sm(self) -> usize {
        match self {
            Tile::M128 => 1,
            _ => 2,
        }
    }

    /// The tile of a bf16 GEMM, or of an FP8 one on the tensor cores' sums, for `rows` rows over
    /// `groups` groups, by the groups' average rows: 16 below 6, 64 below 256, else 128 (fewer
    /// rows of zero fill against fewer passes over the weights). Measured on an H200, DeepSeek-V3
    /// layer B, where the 64- and 128-row tiles run on wgmma: 64-row tiles from 6 rows a group
    /// beat 16-row ones (run G35, T = 256, 9 rows a group: bf16 6254 -> 5766 µs) and 32-row
    /// mma.sync ones (run G34, T = 512, 18 rows: bf16 6761 -> 6180), and win up to about 256
    /// (run G31: T = 2048 8626 µs against 9801 with 128-row tiles from 64 rows, T = 4096 14269
    /// against 14814, T = 16384 even). Cards without wgmma run bf16 by this rule too (not
    /// measured there; on the H200's mma.sync, 32-row tiles had won at 12-31 rows, run G17).
    pub fn for_rows(rows: usize, groups: usize) -> Tile {
        Tile::by_average(rows, groups, 6, 6, 256)
    }

    /// The tile of an FP8 GEMM that sums as `sum` says. On the tensor cores' sums, as bf16. In
    /// fp32 (mma.sync everywhere): 16-row tiles below 12 rows a group, 32-row up to 48, since an
    /// e4m3 MMA does twice the K of a bf16 one per fragment load and the GEMM stays bound by bytes
    /// longer (run G18 at T = 1024: 32-row tiles 6384 µs, 64-row 7032), and 128-row tiles from
    /// 256 (run G26: from 64 rows T = 2048 took 12909 µs against 10526).
    pub fn for_fp8_rows(rows: usize, groups: usize, sum: Fp8Sum) -> Tile {
        match sum {
            Fp8Sum::Fp32 => Tile::by_average(rows, groups, 12, 48, 256),
            Fp8Sum::TensorCore => Tile::for_rows(rows, groups),
        }
    }

    /// 16-row tiles below `m32_from` rows a group, 32-row below `m64_from`, 64-row below
    /// `m128_from`, else 128-row.
    fn by_average(
        rows: usize,
        groups: usize,
        m32_from: usize,
        m64_from: usize,
        m128_from: usize,
    ) -> Tile {
        let groups = groups.max(1);
        if rows < m32_from * groups {
            Tile::M16
        } else if rows < m64_from * groups {
            Tile::M32
        } else if rows < m128_from * groups {
            Tile::M64
        } else {
            Tile::M128
        }
    }

    /// Whether this tile runs on Hopper's wgmma on a card of `arch` (Gpu::arch): the 64- and
    /// 128-row tiles where the kernels compile for sm_90a (bf16, and FP8 with
    /// `Fp8Sum::TensorCore`).
    pub fn on_wgmma(self, arch: &str) -> bool {
        arch == "sm_90a" && matches!(self, Tile::M64 | Tile::M128)
    }

    /// An upper bound of the tiles over `rows` rows in `groups` groups: every tile holds at
    /// least one row, so at decode sizes the bound is the rows (a grid of blocks that exit at
    /// once costs launch time), else rows / bm + one partial tile per group.
    pub fn max_tiles(self, rows: usize, groups: usize) -> usize {
        rows.min(rows.div_ceil(self.rows()) + groups)
    }

    /// Dynamic shared memory of one block.
    pub fn shared_bytes(self) -> u32 {
        gemm_shared_bytes(self.rows())
    }

    pub fn bf16_function(self) -> KernelId {
        match self {
            Tile::M16 => KernelId::GroupedGemmBf16M16,
            Tile::M32 => KernelId::GroupedGemmBf16M32,
            Tile::M64 => KernelId::GroupedGemmBf16M64,
            Tile::M128 => KernelId::GroupedGemmBf16M128,
        }
    }

    pub fn fp8_function(self, sum: Fp8Sum) -> KernelId {
        match (self, sum) {
            (Tile::M16, _) => KernelId::GroupedGemmFp8M16,
            (Tile::M32, _) => KernelId::GroupedGemmFp8M32,
            (Tile::M64, Fp8Sum::Fp32) => KernelId::GroupedGemmFp8M64,
            (Tile::M64, Fp8Sum::TensorCore) => KernelId::GroupedGemmFp8TcM64,
            (Tile::M128, Fp8Sum::Fp32) => KernelId::GroupedGemmFp8M128,
            (Tile::M128, Fp8Sum::TensorCore) => KernelId::GroupedGemmFp8TcM128,
        }
    }

    /// The kernels of more than the default 48 KiB of dynamic shared memory, and how much they
    /// take (`Gpu::open` raises their limits).
    pub fn large_shared() -> impl Iterator<Item = (KernelId, u32)> {
        Tile::ALL.into_iter().flat_map(|t| {
            [
                (t.bf16_function(), t.shared_bytes()),
                (t.fp8_function(Fp8Sum::Fp32), t.shared_bytes()),
                (t.fp8_function(Fp8Sum::TensorCore), t.shared_bytes()),
            ]
        })
    }
}

/// How an FP8 grouped GEMM sums each 128-deep K block before the block's scales apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Sum {
    /// In fp32 (mma.sync; rel-L2 6e-8 against the f64 math). The up projection takes it: its
    /// output is quantized again, and a difference of 1e-4 there moves activation codes across
    /// rounding boundaries (the tiny FP8 checkpoint's layer: 6.5e-3 off the FP8 math in f64
    /// with the up projection on the tensor cores, 5e-6 in fp32; run G35).
    Fp32,
    /// In Hopper's FP8 tensor cores, whose accumulator keeps fewer bits than fp32 (wgmma, the 64-
    /// and 128-row tiles on sm_90a; rel-L2 1.1e-4, run G32), then promoted to fp32, as DeepGEMM
    /// does; elsewhere as `Fp32`. Twice the dense rate (615 against 243 TFLOP/s on an H200, run
    /// G33). The down projection takes it: the layer sums its output as it is.
    TensorCore,
}
/// Tokens per block of the fused router (one warp each; kernels/router_fused.cu RF_WARPS).
pub const FUSED_WARPS: usize = 4;

/// How the grouped GEMM finds the A row of an output row (kernels/moe.cu `a_mode`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmRows {
    /// The output row itself.
    Direct = 0,
    /// `a_map[row] / a_div`: the token of a permuted assignment.
    Mapped = 1,
    /// `row - offsets[group]`: every group reads the same rows (the separate shared MLP).
    PerGroup = 2,
}
impl CType for GemmRows {
    const C: &'static str = "int";
}

kernels! {
    // ---- kernels/init.cu ----

    /// Fills `n` 32-bit words with `value` (zeroing, ones, NaN poison before a check).
    Init::FillArgs { out: DevPtr<u32>, n: u64, value: u32 }
    grid(a, sms) { Grid::stride(a.n as usize, 256, sms) }
    fn FillU32 = fill_u32;

    /// A tensor of `n` bf16 values, uniform in ±amp (synthetic::tensor).
    Init::InitUniformArgs { out: DevPtr<u16>, n: u64, seed: u64, tensor: u64, amp: f32 }
    grid(a, sms) { Grid::stride(a.n as usize, 256, sms) }
    fn InitUniformBf16 = init_uniform_bf16;

    /// SwiGLU weights of `n_slots` experts from tensor slot `slot0` (synthetic::mlp).
    Init::InitMlpArgs {
        w13: DevPtr<u16>, w2: DevPtr<u16>, slot0: u64, n_slots: u64, inter: u64, hidden: u64,
        seed: u64, amp_in: f32, amp_down: f32,
    }
    grid(a, sms) { Grid::stride((a.n_slots * 3 * a.inter * a.hidden) as usize, 256, sms) }
    fn InitMlpBf16 = init_mlp_bf16;

    /// Hidden states [tokens × hidden] of one step (synthetic::hidden_row).
    Init::InitHiddenArgs { out: DevPtr<u16>, n: u64, seed: u64, tensor: u64 }
    grid(a, sms) { Grid::stride(a.n as usize, 256, sms) }
    fn InitHiddenBf16 = init_hidden_bf16;

    /// f32 → bf16, round to nearest even (captured hidden states).
    Init::ToBf16Args { input: DevPtr<f32>, out: DevPtr<u16>, n: u64 }
    grid(a, sms) { Grid::stride(a.n as usize, 256, sms) }
    fn F32ToBf16 = f32_to_bf16_kernel;

    // ---- kernels/router_fused.cu ----

    /// The fused router, one warp per token: ids/weights [T × spt] (k routed slots, then S
    /// shared), probs (nullable) [T × k] the renormalized probabilities in double without rsf.
    RouterFused::RouterFusedArgs {
        /// [T × E], f32 or bf16 (`logits_bf16`).
        logits: AnyPtr, logits_bf16: bool,
        /// [E] correction bias, or NULL.
        bias: DevPtr<f32>,
        /// Group score = top-2 sum (models with a bias), else the max.
        group_top2: bool,
        t: i32, e: i32, n_group: i32, topk_group: i32, k: i32,
        /// Experts the router can pick (k, or fewer when the kept groups hold fewer).
        k_eff: i32,
        softmax: bool, norm: bool, routed_scale: f64,
        /// Shared slots appended per token, and their weight (times `gate`).
        s: i32, shared_w: f64,
        /// [T] shared gate, or NULL for 1.
        gate: DevPtr<f32>,
        ids: DevPtr<u32>, weights: DevPtr<f32>, probs: DevPtr<f64>,
        /// Slots per token, k + s.
        spt: i32,
    }
    grid(a, sms) { Grid::x((a.t as usize).div_ceil(FUSED_WARPS) as u32, (FUSED_WARPS * 32) as u32) }
    fn RouterFusedE256 = router_fused_e256, RouterFusedE512 = router_fused_e512,
       RouterLanes8 = router_lanes_8, RouterLanes12 = router_lanes_12,
       RouterScreen8 = router_screen_8, RouterScreen12 = router_screen_12;

    // ---- kernels/router_unfused.cu (one kernel per op of the PyTorch sequence) ----

    /// Scores: sigmoid per element, or softmax per token (one warp each).
    RouterUnfused::RouterScoresArgs {
        logits: AnyPtr, logits_bf16: bool, scores: DevPtr<f32>, t: i32, e: i32, softmax: bool,
    }
    grid(a, sms) {
        if a.softmax {
            Grid::per_warp(a.t as usize)
        } else {
            Grid::stride(a.t as usize * a.e as usize, 256, sms)
        }
    }
    fn RouterScores = router_scores;

    /// sel = scores + bias (a copy where `bias` is NULL).
    RouterUnfused::RouterAddBiasArgs {
        scores: DevPtr<f32>, bias: DevPtr<f32>, sel: DevPtr<f32>, t: i32, e: i32,
    }
    grid(a, sms) { Grid::stride(a.t as usize * a.e as usize, 256, sms) }
    fn RouterAddBias = router_add_bias;

    /// Group scores [T × G], one thread per (token, group).
    RouterUnfused::RouterGroupScoresArgs {
        sel: DevPtr<f32>, gs: DevPtr<f32>, t: i32, e: i32, g: i32, top2: bool,
    }
    grid(a, sms) { Grid::per_item(a.t as usize * a.g as usize, 256) }
    fn RouterGroupScores = router_group_scores;

    /// The kept groups as flags [T × G], one thread per token.
    RouterUnfused::RouterGroupTopkArgs {
        gs: DevPtr<f32>, kept: DevPtr<u8>, t: i32, g: i32, topk_group: i32,
    }
    grid(a, sms) { Grid::per_item(a.t as usize, 256) }
    fn RouterGroupTopk = router_group_topk;

    /// masked = sel in kept groups, else -inf.
    RouterUnfused::RouterMaskArgs {
        sel: DevPtr<f32>, kept: DevPtr<u8>, masked: DevPtr<f32>, t: i32, e: i32, g: i32,
    }
    grid(a, sms) { Grid::stride(a.t as usize * a.e as usize, 256, sms) }
    fn RouterMask = router_mask;

    /// Top-k expert ids into ids [T × spt], one warp per token.
    RouterUnfused::RouterExpertTopkArgs {
        masked: DevPtr<f32>, ids: DevPtr<u32>, t: i32, e: i32, k: i32, spt: i32,
    }
    grid(a, sms) { Grid::per_warp(a.t as usize) }
    fn RouterExpertTopk = router_expert_topk;

    /// The chosen experts' unbiased scores w [T × k] in double.
    RouterUnfused::RouterGatherArgs {
        scores: DevPtr<f32>, ids: DevPtr<u32>, w: DevPtr<f64>, t: i32, e: i32, k: i32, spt: i32,
    }
    grid(a, sms) { Grid::per_item(a.t as usize * a.k as usize, 256) }
    fn RouterGather = router_gather;

    /// Renormalizes w per token where `norm`.
    RouterUnfused::RouterRenormalizeArgs { w: DevPtr<f64>, t: i32, k: i32, norm: bool }
    grid(a, sms) { Grid::per_item(a.t as usize, 256) }
    fn RouterRenormalize = router_renormalize;

    /// Slot weights [T × spt]: routed × routed_scale, shared slots E + j × shared_w × gate.
    RouterUnfused::RouterScaleArgs {
        w: DevPtr<f64>, t: i32, e: i32, k: i32, routed_scale: f64, s: i32, shared_w: f64,
        gate: DevPtr<f32>, ids: DevPtr<u32>, weights: DevPtr<f32>, spt: i32,
    }
    grid(a, sms) { Grid::per_item(a.t as usize * a.spt as usize, 256) }
    fn RouterScale = router_scale;

    // ---- kernels/moe.cu ----

    /// Assignments per slot (`counts` zeroed first).
    Moe::AlignCountArgs { ids: DevPtr<u32>, n: u64, counts: DevPtr<i32> }
    grid(a, sms) { Grid::per_item(a.n as usize, 256) }
    fn AlignCount = align_count;

    /// Row offsets, tile offsets [slots + 1] and fill cursors [slots]: one block (slots <= 1024).
    Moe::AlignScanArgs {
        counts: DevPtr<i32>, slots: i32, bm: i32, offsets: DevPtr<i32>, tiles: DevPtr<i32>,
        cursor: DevPtr<i32>,
    }
    grid(a, sms) { Grid::x(1, 1024) }
    fn AlignScan = align_scan;

    /// order[permuted row] = assignment, position its inverse.
    Moe::AlignFillArgs {
        ids: DevPtr<u32>, n: u64, cursor: DevPtr<i32>, order: DevPtr<i32>, position: DevPtr<i32>,
    }
    grid(a, sms) { Grid::per_item(a.n as usize, 256) }
    fn AlignFill = align_fill;

    /// The grouped bf16 GEMM: per group g, rows offsets[g]..offsets[g+1] of C [rows × n] f32 =
    /// A rows (by `a_mode`) · B_g^T, B_g = g < n_first ? b0 + g·b_stride : b1 + (g−n_first)·b_stride.
    Moe::GemmArgs {
        a: DevPtr<u16>, a_mode: GemmRows, a_map: DevPtr<i32>, a_div: i32,
        b0: DevPtr<u16>, b1: DevPtr<u16>, n_first: i32, b_stride: i64,
        /// Output, or with `k_splits` > 1 the partials at c + z · c_split.
        c: DevPtr<f32>,
        /// [n] added per column (NULL: none; only without K splits).
        col_bias: DevPtr<f32>,
        offsets: DevPtr<i32>, tiles: DevPtr<i32>, groups: i32, n: i32, k: i32,
        k_splits: i32, c_split: i64,
        /// The tile height of the function launched (16, 32 or 64; checked by the kernel); the
        /// tile offsets are of `bm`-row tiles.
        bm: i32,
        /// Grid x: an upper bound of the M tiles (`Tile::max_tiles`); blocks past
        /// tiles[groups] exit.
        max_tiles: i32,
    }
    grid(a, sms) {
        Grid::xyz(
            a.max_tiles as u32,
            (a.n as usize).div_ceil(GEMM_BN) as u32,
            a.k_splits as u32,
            256,
        )
        .with_shared(gemm_shared_bytes(a.bm as usize))
    }
    fn GroupedGemmBf16M16 = grouped_gemm_bf16_m16, GroupedGemmBf16M32 = grouped_gemm_bf16_m32,
        GroupedGemmBf16M64 = grouped_gemm_bf16_m64, GroupedGemmBf16M128 = grouped_gemm_bf16_m128;

    /// out [n] = the sum of `splits` partials (in order) + bias per column of `cols`.
    Moe::SplitkReduceArgs {
        part: DevPtr<f32>, splits: i32, n: u64, cols: i32, bias: DevPtr<f32>, out: DevPtr<f32>,
    }
    grid(a, sms) { Grid::stride(a.n as usize, 256, sms) }
    fn SplitkReduce = splitk_reduce;

    /// act [rows × inter] = bf16(silu(gate) · up) of h [rows × 2·inter].
    Moe::SiluMulArgs { h: DevPtr<f32>, act: DevPtr<u16>, rows: u64, inter: i32 }
    grid(a, sms) { Grid::stride(a.rows as usize * a.inter as usize, 256, sms) }
    fn SiluMul = silu_mul;

    /// y [T × H] = out_scale · Σ w·eo[position] + sep · Σ so (so, sep nullable).
    Moe::CombineArgs {
        eo: DevPtr<f32>, position: DevPtr<i32>, w: DevPtr<f32>, spt: i32, out_scale: f32,
        so: DevPtr<f32>, sep: DevPtr<f32>, s: i32, t: i32, h: i32, y: DevPtr<f32>,
    }
    grid(a, sms) { Grid::xy(a.t as u32, (a.h as usize).div_ceil(256) as u32, 256) }
    fn Combine = combine;

    /// Qwen3-Next shared gate g [T] = sigmoid(x · wg), one warp per token.
    Moe::SharedGateArgs { x: DevPtr<u16>, wg: DevPtr<f32>, g: DevPtr<f32>, t: i32, h: i32 }
    grid(a, sms) { Grid::per_warp(a.t as usize) }
    fn SharedGate = shared_gate;

    /// Per block: Σ y² (double), max |y|, non-finite count, over y [n].
    Moe::OutputStatsArgs {
        y: DevPtr<f32>, n: u64, sumsq: DevPtr<f64>, maxabs: DevPtr<f32>, nonfinite: DevPtr<u64>,
    }
    grid(a, sms) { Grid::x(STATS_BLOCKS as u32, 256) }
    fn OutputStats = output_stats;

    /// Counts NaN and ±Inf among `n` values (f32, or bf16 where `bf16`) into counts[slot].
    Moe::CountNonfiniteArgs { data: AnyPtr, bf16: bool, n: u64, counts: DevPtr<u64>, slot: u32 }
    grid(a, sms) { Grid::stride(a.n as usize, 256, sms) }
    fn CountNonfinite = count_nonfinite;

    /// A plain device copy of `n` 16-byte words (bench's bandwidth ceiling).
    Moe::CopyArgs { src: DevPtr<[u32; 4]>, dst: DevPtr<[u32; 4]>, n: u64 }
    grid(a, sms) { Grid::x(sms * 8, 512) }
    fn CopyU4 = copy_u4;

    // ---- kernels/reference.cu (cuda/reference.rs) ----

    /// Reference routing of every token, with margins (REF_ROUTE_WARPS tokens a block).
    Reference::RefRouteArgs {
        logits: DevPtr<f32>, bias: DevPtr<f32>, sel: DevPtr<f32>, gscore: DevPtr<f32>,
        kept: DevPtr<u32>, ids: DevPtr<u32>, probs: DevPtr<f64>, margin_e: DevPtr<f64>,
        margin_g: DevPtr<f64>, tokens: u64, e: i32, n_group: i32, topk_group: i32, k: i32,
        softmax: i32, top2: i32, norm: i32,
    }
    grid(a, sms) { Grid::x((a.tokens as usize).div_ceil(REF_ROUTE_WARPS) as u32, 32 * REF_ROUTE_WARPS as u32) }
    fn RefRoute = ref_route;

    /// The shared gate in f64 for the compared tokens (one warp each).
    Reference::RefGateArgs {
        x: DevPtr<u16>, gate_w: DevPtr<f32>, tok: DevPtr<u32>, out: DevPtr<f64>, n: u64, h: i32,
    }
    grid(a, sms) { Grid::per_warp(a.n as usize) }
    fn RefGate = ref_gate;

    /// Rows per slot of the reference's grouped MLP.
    Reference::RefCountArgs {
        ids: DevPtr<u32>, tok: DevPtr<u32>, counts: DevPtr<i32>, n: u64, kps: i32, k: i32,
        e: i32, slots: i32,
    }
    grid(a, sms) { Grid::stride(a.n as usize * a.kps as usize, 256, sms) }
    fn RefCount = ref_count;

    /// Slot offsets, tile offsets and cursors (one thread).
    Reference::RefScanArgs {
        counts: DevPtr<i32>, offsets: DevPtr<i32>, tiles: DevPtr<i32>, cursor: DevPtr<i32>,
        slots: i32, bm: i32,
    }
    grid(a, sms) { Grid::x(1, 32) }
    fn RefScan = ref_scan;

    /// Each reference row's position in slot order, and back.
    Reference::RefFillArgs {
        ids: DevPtr<u32>, tok: DevPtr<u32>, cursor: DevPtr<i32>, row_of: DevPtr<i32>,
        pos_of: DevPtr<i32>, n: u64, kps: i32, k: i32, e: i32, slots: i32,
    }
    grid(a, sms) { Grid::stride(a.n as usize * a.kps as usize, 256, sms) }
    fn RefFill = ref_fill;

    /// Grouped GEMM in f64 (FP64 tensor cores) over bf16 or block-scaled e4m3 weights;
    /// `max_tiles` bounds the row tiles of all slots.
    Reference::RefGemmArgs {
        x: DevPtr<u16>, act: DevPtr<f64>, tok: DevPtr<u32>, row_of: DevPtr<i32>,
        offsets: DevPtr<i32>, tiles: DevPtr<i32>, b_routed: DevPtr<u16>, b_shared: DevPtr<u16>,
        bq_routed: DevPtr<u8>, bs_routed: DevPtr<f32>, bq_shared: DevPtr<u8>,
        bs_shared: DevPtr<f32>, out: DevPtr<f64>, lda: u64, ldo: u64, mode: i32, kps: i32,
        slots: i32, e: i32, n_routed: i32, n_shared: i32, k_routed: i32, k_shared: i32,
        max_tiles: i32, fp8_routed: i32, fp8_shared: i32,
    }
    grid(a, sms) {
        let cols = a.n_routed.max(a.n_shared) as usize;
        Grid::xy(a.max_tiles as u32, cols.div_ceil(REF_GEMM_BN) as u32, 128)
    }
    fn RefGemm = ref_gemm;

    /// silu(gate) · up in f64; `rows` bounds the positions.
    Reference::RefSiluArgs {
        h1: DevPtr<f64>, act: DevPtr<f64>, offsets: DevPtr<i32>, ld: u64, rows: u64, slots: i32,
        e: i32, inter_routed: i32, inter_shared: i32,
    }
    grid(a, sms) { Grid::stride((a.rows * a.ld) as usize, 256, sms) }
    fn RefSilu = ref_silu;

    /// The reference output rows of the compared tokens.
    Reference::RefCombineArgs {
        o: DevPtr<f64>, pos_of: DevPtr<i32>, probs: DevPtr<f64>, tok: DevPtr<u32>,
        gate: DevPtr<f64>, y: DevPtr<f64>, rsf: f64, n: u64, h: u64, kps: i32, k: i32,
    }
    grid(a, sms) { Grid::stride((a.n * a.h) as usize, 256, sms) }
    fn RefCombine = ref_combine;

    /// Per-token routing comparison of a path against the reference (one thread a token).
    Reference::RefCompareArgs {
        p_ids: DevPtr<u32>, p_w: DevPtr<f32>, sep: DevPtr<f32>, gate: DevPtr<f32>,
        r_ids: DevPtr<u32>, r_probs: DevPtr<f64>, sel: DevPtr<f32>, gscore: DevPtr<f32>,
        kept: DevPtr<u32>, load: DevPtr<u32>, cols: DevPtr<f64>, classes: DevPtr<u8>,
        out_scale: f64, rsf: f64, tokens: u64, spt: i32, k: i32, e: i32, s: i32, n_group: i32,
        topk_group: i32, near_ulps: i32,
    }
    grid(a, sms) { Grid::per_item(a.tokens as usize, 128) }
    fn RefCompareRoutes = ref_compare_routes;

    /// Per token: whether two paths' routed sets are equal.
    Reference::RefSetsArgs {
        a_ids: DevPtr<u32>, b_ids: DevPtr<u32>, out: DevPtr<f64>, tokens: u64, a_spt: i32,
        b_spt: i32, e: i32,
    }
    grid(a, sms) { Grid::per_item(a.tokens as usize, 128) }
    fn RefCompareSets = ref_compare_sets;

    /// Copies 32-bit words (a path's slot ids and weights, for the drill-down).
    Reference::RefCopyArgs { src: DevPtr<u32>, dst: DevPtr<u32>, n: u64 }
    grid(a, sms) { Grid::stride(a.n as usize, 256, sms) }
    fn RefCopyU32 = ref_copy_u32;

    /// A path's output rows of the compared tokens, kept for the path-against-path errors.
    Reference::RefCopyRowsArgs { y: DevPtr<f32>, tok: DevPtr<u32>, out: DevPtr<f32>, n: u64, h: u64 }
    grid(a, sms) { Grid::stride((a.n * a.h) as usize, 256, sms) }
    fn RefCopyRows = ref_copy_rows;

    /// Per-token output errors of a path (against the reference or another path; a warp each).
    Reference::RefRowsArgs {
        y: DevPtr<f32>, tok: DevPtr<u32>, ref64: DevPtr<f64>, ref32: DevPtr<f32>,
        cols: DevPtr<f64>, n: u64, h: i32, mode: i32,
    }
    grid(a, sms) { Grid::per_warp(a.n as usize) }
    fn RefCompareRows = ref_compare_rows;

    /// Column summaries (one block a column): sum, min, max, p50, p99, NaN and zero counts,
    /// worst entries.
    Reference::RefSummaryArgs { cols: DevPtr<f64>, out: DevPtr<f64>, stride: u64, n: u64, columns: u64 }
    grid(a, sms) { Grid::x(a.columns as u32, 256) }
    fn RefSummarize = ref_summarize;
    // ---- kernels/fp8.cu ----

    /// bf16 [rows × cols] → e4m3 [rows × cols] and f32 scales [rows × cols/128], per row and
    /// group of 128 (weights::fp8), one warp per group.
    Fp8::Fp8QuantArgs {
        input: DevPtr<u16>, out: DevPtr<u8>, scales: DevPtr<f32>, rows: u64, cols: u64,
    }
    grid(a, sms) { Grid::per_warp((a.rows * a.cols / 128) as usize) }
    fn Fp8QuantRows = fp8_quant_rows;

    /// bf16 matrices [mats × rows × cols] → e4m3 in the same layout and f32 scales
    /// [mats × rows/128 × cols/128], per 128×128 block (weights::fp8), a block of 256 each.
    Fp8::Fp8BlocksArgs {
        input: DevPtr<u16>, out: DevPtr<u8>, scales: DevPtr<f32>, mats: u64, rows: u64, cols: u64,
    }
    grid(a, sms) { Grid::x((a.mats * (a.rows / 128) * (a.cols / 128)) as u32, 256) }
    fn Fp8QuantBlocks = fp8_quant_blocks;

    /// SiLU·mul of h f32 [rows × 2·inter], rounded to bf16, quantized as `Fp8QuantArgs`.
    Fp8::Fp8SiluArgs {
        h: DevPtr<f32>, out: DevPtr<u8>, scales: DevPtr<f32>, rows: u64, inter: u64,
    }
    grid(a, sms) { Grid::per_warp((a.rows * a.inter / 128) as usize) }
    fn Fp8SiluMulQuant = fp8_silu_mul_quant;

    /// Tile offsets [groups + 1] of `bm`-row tiles from row offsets [groups + 1]: one block
    /// (groups <= 1024).
    Fp8::Fp8TilesArgs { offsets: DevPtr<i32>, tiles: DevPtr<i32>, groups: i32, bm: i32 }
    grid(a, sms) { Grid::x(1, 1024) }
    fn Fp8TileScan = fp8_tile_scan;

    /// The FP8 grouped GEMM: per group g, rows offsets[g]..offsets[g+1] of C [rows × n] f32 =
    /// Σ over K blocks of (A rows by `a_mode`, e4m3, scales [* × k/128]) · (B_g e4m3 [n × k],
    /// block scales [n/128 × k/128])ᵀ, each block's product times its two scales. Group
    /// g < n_first reads b0/bs0 + g·stride, else b1/bs1 + (g − n_first)·stride.
    Fp8::Fp8GemmArgs {
        a: DevPtr<u8>, a_scales: DevPtr<f32>, a_mode: GemmRows, a_map: DevPtr<i32>, a_div: i32,
        b0: DevPtr<u8>, b1: DevPtr<u8>, bs0: DevPtr<f32>, bs1: DevPtr<f32>, n_first: i32,
        /// Elements between consecutive groups' weights, and their scales.
        b_stride: i64, bs_stride: i64,
        /// Output, or with `k_splits` > 1 the partials at c + z · c_split.
        c: DevPtr<f32>,
        /// Row offsets [groups + 1]; tile offsets of `bm`-row tiles (fp8_tile_scan).
        offsets: DevPtr<i32>, tiles: DevPtr<i32>, groups: i32, n: i32, k: i32,
        k_splits: i32, c_split: i64,
        /// The tile height of the function launched (16, 32 or 64; checked by the kernel).
        bm: i32,
        /// Grid x: an upper bound of the M tiles (rows / bm + groups).
        max_tiles: i32,
    }
    grid(a, sms) {
        Grid::xyz(a.max_tiles as u32, (a.n as usize / 128) as u32, a.k_splits as u32, 256)
            .with_shared(gemm_shared_bytes(a.bm as usize))
    }
    fn GroupedGemmFp8M16 = grouped_gemm_fp8_m16, GroupedGemmFp8M32 = grouped_gemm_fp8_m32,
        GroupedGemmFp8M64 = grouped_gemm_fp8_m64, GroupedGemmFp8M128 = grouped_gemm_fp8_m128,
        GroupedGemmFp8TcM64 = grouped_gemm_fp8_tc_m64, GroupedGemmFp8TcM128 = grouped_gemm_fp8_tc_m128;
}

/// Tokens per block of the reference router (kernels/reference.cu REF_ROUTE_WARPS).
pub const REF_ROUTE_WARPS: usize = 2;
/// Rows per tile of the reference GEMM (REF_BM) and columns (REF_BN).
pub const REF_GEMM_BM: usize = 32;
pub const REF_GEMM_BN: usize = 128;
