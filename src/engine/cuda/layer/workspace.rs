//! The device buffers of one step, grouped by the stage that writes them, and the K splits of
//! the GEMMs (chosen once per workspace: they depend on the token count and the device only).

use super::super::gpu::Gpu;
use super::super::kernels::{wave_splits, Tile, GEMM_BN, GEMM_ROW_BYTES, STATS_BLOCKS};
use super::super::router::UnfusedBufs;
use super::finite::FiniteCounters;
use crate::engine::config::MoeConfig;
use anyhow::Result;
use cudarc::driver::CudaSlice;

/// Device buffers of one step, sized for `t` tokens and `spt` slots per token at most.
pub struct Workspace {
    pub t: usize,
    pub spt: usize,
    pub k: usize,
    pub inputs: InputBufs,
    pub gate: GateBufs,
    pub router: RouterBufs,
    pub align: AlignBufs,
    pub experts: ExpertBufs,
    pub shared: SharedBufs,
    pub out: OutputBufs,
    /// Non-finite counters: row 0 the step's inputs, row 1 + i path i.
    pub finite: FiniteCounters,
}

/// What a step starts from: hidden states and the shared gates.
pub struct InputBufs {
    /// [T × H] bf16 hidden states.
    pub x: CudaSlice<u16>,
    /// [T × H] captured f32 hidden states before rounding (allocated on first use).
    pub x_f32: Option<CudaSlice<f32>>,
    /// [T] shared expert gates (1 where the model has none).
    pub gates: CudaSlice<f32>,
    /// [T] weight of the separate shared MLP's output per token, uploaded per path.
    pub sep: CudaSlice<f32>,
}

/// The gate GEMM: logits and its K-split partials.
pub struct GateBufs {
    /// [T × E] router logits (+ logit offset).
    pub logits: CudaSlice<f32>,
    /// [T × E] the same rounded to bf16, for a path whose router reads bf16 logits.
    pub logits_bf16: CudaSlice<u16>,
    /// K-split partials [splits × T × E] (empty without splits).
    pub parts: CudaSlice<f32>,
    pub splits: usize,
    /// Dense row offsets [0, T] and tile offsets [0, tiles] (one group of `tile`-row tiles).
    pub offsets: CudaSlice<i32>,
    pub tiles: CudaSlice<i32>,
    pub tile: Tile,
}

/// The router's outputs (and the unfused router's intermediates).
pub struct RouterBufs {
    pub unfused: UnfusedBufs,
    /// [T × spt] slot ids and weights.
    pub ids: CudaSlice<u32>,
    pub weights: CudaSlice<f32>,
}

/// moe_align: assignments grouped by slot.
pub struct AlignBufs {
    /// [slots] assignments per slot, fill cursors.
    pub counts: CudaSlice<i32>,
    pub cursor: CudaSlice<i32>,
    /// [slots + 1] row and GEMM tile offsets per slot.
    pub offsets: CudaSlice<i32>,
    pub tiles: CudaSlice<i32>,
    /// [T × spt] permuted row → assignment, and its inverse.
    pub order: CudaSlice<i32>,
    pub position: CudaSlice<i32>,
}

/// The grouped expert MLP over all slots.
pub struct ExpertBufs {
    /// [A × 2I] gate/up outputs, [A × I] activations, [A × H] expert outputs (A = T × spt).
    pub h1: CudaSlice<f32>,
    pub act: CudaSlice<u16>,
    pub eo: CudaSlice<f32>,
    /// K-split partials, shared by every expert GEMM (and the separate shared MLP's).
    pub parts: CudaSlice<f32>,
    /// K splits of the up and down GEMMs, indexed by slots per token.
    pub up_splits: Vec<usize>,
    pub down_splits: Vec<usize>,
}

/// The separate shared MLP (paths that do not fuse the shared experts as slots).
pub struct SharedBufs {
    /// [S × T × 2Is], [S × T × Is], [S × T × H].
    pub h1: CudaSlice<f32>,
    pub act: CudaSlice<u16>,
    pub out: CudaSlice<f32>,
    /// Row offsets [j · T] and tile offsets of the S dense groups (`tile`-row tiles).
    pub offsets: CudaSlice<i32>,
    pub tiles: CudaSlice<i32>,
    pub tile: Tile,
    /// K splits of the up and down GEMMs.
    pub splits: (usize, usize),
}

/// The layer output and its on-device statistics.
pub struct OutputBufs {
    /// [T × H]
    pub y: CudaSlice<f32>,
    /// [STATS_BLOCKS] partial sums of squares, maxima, non-finite counts.
    pub stats_sq: CudaSlice<f64>,
    pub stats_max: CudaSlice<f32>,
    pub stats_bad: CudaSlice<u64>,
}

impl Workspace {
    pub fn new(gpu: &Gpu, cfg: &MoeConfig, t: usize, spt: usize, k: usize) -> Result<Workspace> {
        Ok(Workspace {
            t,
            spt,
            k,
            inputs: InputBufs {
                x: gpu.alloc(t * cfg.hidden_size, "hidden states")?,
                x_f32: None,
                gates: gpu.alloc(t, "shared gates")?,
                sep: gpu.alloc(t, "separate shared weights")?,
            },
            gate: GateBufs::new(gpu, cfg, t)?,
            router: RouterBufs {
                unfused: UnfusedBufs::new(gpu, t, cfg.n_routed_experts, cfg.n_group, k)?,
                ids: gpu.alloc(t * spt, "slot ids")?,
                weights: gpu.alloc(t * spt, "slot weights")?,
            },
            align: AlignBufs::new(gpu, cfg.total_slots(), t * spt)?,
            experts: ExpertBufs::new(gpu, cfg, t, spt)?,
            shared: SharedBufs::new(gpu, cfg, t)?,
            out: OutputBufs {
                y: gpu.alloc(t * cfg.hidden_size, "layer output")?,
                stats_sq: gpu.alloc(STATS_BLOCKS, "output statistics")?,
                stats_max: gpu.alloc(STATS_BLOCKS, "output statistics")?,
                stats_bad: gpu.alloc(STATS_BLOCKS, "output statistics")?,
            },
            finite: FiniteCounters::new(gpu, 3)?,
        })
    }

    /// Whether this workspace serves a step of `t` tokens, `spt` slots and top-`k`.
    pub fn fits(&self, t: usize, spt: usize, k: usize) -> bool {
        self.t == t && self.spt >= spt && self.k >= k
    }
}

impl GateBufs {
    fn new(gpu: &Gpu, cfg: &MoeConfig, t: usize) -> Result<GateBufs> {
        let e = cfg.n_routed_experts;
        let splits = gate_splits(gpu.sms, t, e, cfg.hidden_size);
        let tile = Tile::for_rows(t, 1);
        let tiles = t.div_ceil(tile.rows()) as i32;
        let parts = if splits > 1 { splits * t * e } else { 0 };
        Ok(GateBufs {
            logits: gpu.alloc(t * e, "router logits")?,
            logits_bf16: gpu.alloc(t * e, "router logits (bf16)")?,
            parts: gpu.alloc(parts, "gate GEMM partials")?,
            splits,
            offsets: gpu.upload(&[0, t as i32], "gate GEMM offsets")?,
            tiles: gpu.upload(&[0, tiles], "gate GEMM tiles")?,
            tile,
        })
    }
}

impl AlignBufs {
    fn new(gpu: &Gpu, slots: usize, a: usize) -> Result<AlignBufs> {
        Ok(AlignBufs {
            counts: gpu.alloc(slots, "slot counts")?,
            cursor: gpu.alloc(slots, "slot cursors")?,
            offsets: gpu.alloc(slots + 1, "slot offsets")?,
            tiles: gpu.alloc(slots + 1, "tile offsets")?,
            order: gpu.alloc(a, "slot order")?,
            position: gpu.alloc(a, "slot positions")?,
        })
    }
}

impl ExpertBufs {
    fn new(gpu: &Gpu, cfg: &MoeConfig, t: usize, spt: usize) -> Result<ExpertBufs> {
        let (h, i, slots) = (
            cfg.hidden_size,
            cfg.moe_intermediate_size,
            cfg.total_slots(),
        );
        let up_splits: Vec<usize> = (0..=spt)
            .map(|p| expert_splits(gpu.sms, t * p, slots, 2 * i, h))
            .collect();
        let down_splits: Vec<usize> = (0..=spt)
            .map(|p| expert_splits(gpu.sms, t * p, slots, h, i))
            .collect();
        let partials = |splits: usize, rows: usize, n: usize| {
            if splits > 1 {
                splits * rows * n
            } else {
                0
            }
        };
        let routed = (0..=spt)
            .map(|p| partials(up_splits[p], t * p, 2 * i).max(partials(down_splits[p], t * p, h)))
            .max()
            .unwrap_or(0);
        let (s, is) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        let (su, sd) = shared_splits(gpu.sms, cfg, t);
        let shared = partials(su, s * t, 2 * is).max(partials(sd, s * t, h));
        let a = t * spt;
        Ok(ExpertBufs {
            h1: gpu.alloc(a * 2 * i, "expert gate/up outputs")?,
            act: gpu.alloc(a * i, "expert activations")?,
            eo: gpu.alloc(a * h, "expert outputs")?,
            parts: gpu.alloc(routed.max(shared), "expert GEMM partials")?,
            up_splits,
            down_splits,
        })
    }
}

impl SharedBufs {
    fn new(gpu: &Gpu, cfg: &MoeConfig, t: usize) -> Result<SharedBufs> {
        let (h, s, is) = (
            cfg.hidden_size,
            cfg.n_shared_experts,
            cfg.shared_slot_intermediate(),
        );
        let tile = Tile::for_rows(s * t, s);
        let tiles = t.div_ceil(tile.rows()) as i32;
        let offsets: Vec<i32> = (0..=s).map(|j| (j * t) as i32).collect();
        let tile_offsets: Vec<i32> = (0..=s).map(|j| j as i32 * tiles).collect();
        Ok(SharedBufs {
            h1: gpu.alloc(s * t * 2 * is, "shared gate/up outputs")?,
            act: gpu.alloc(s * t * is, "shared activations")?,
            out: gpu.alloc(s * t * h, "shared outputs")?,
            offsets: gpu.upload(&offsets, "shared MLP offsets")?,
            tiles: gpu.upload(&tile_offsets, "shared MLP tiles")?,
            tile,
            splits: shared_splits(gpu.sms, cfg, t),
        })
    }
}

/// K splits of the gate GEMM ([T × E] has few tiles at small T): enough for one wave of the
/// device (two blocks per SM), each split a whole number of pipeline stages (64 values of K).
pub(super) fn gate_splits(sms: u32, t: usize, e: usize, h: usize) -> usize {
    let blocks = Tile::for_rows(t, 1).max_tiles(t, 1) * e.div_ceil(GEMM_BN);
    let want = (2 * sms as usize).div_ceil(blocks.max(1)).max(1);
    let stages = h * 2 / GEMM_ROW_BYTES;
    (1..=want.min(stages).min(64))
        .rev()
        .find(|d| stages.is_multiple_of(*d))
        .unwrap_or(1)
}

/// K splits of the expert GEMMs (up: N = 2I, K = H; down: N = H, K = I) for `a` assignments:
/// at small batches each active expert is one M tile, and an uneven last wave idles most of the
/// device while the weights stream.
pub(super) fn expert_splits(sms: u32, a: usize, slots: usize, n: usize, k: usize) -> usize {
    let tile = Tile::for_rows(a, slots);
    let tiles = tile.max_tiles(a, slots);
    wave_splits(
        sms,
        tile,
        tiles * n.div_ceil(GEMM_BN),
        k * 2 / GEMM_ROW_BYTES,
        1,
    )
}

/// K splits of the separate shared MLP's GEMMs (up, down): S dense groups of T rows.
fn shared_splits(sms: u32, cfg: &MoeConfig, t: usize) -> (usize, usize) {
    let (h, s, is) = (
        cfg.hidden_size,
        cfg.n_shared_experts,
        cfg.shared_slot_intermediate(),
    );
    (
        expert_splits(sms, s * t, s, 2 * is, h),
        expert_splits(sms, s * t, s, h, is),
    )
}
