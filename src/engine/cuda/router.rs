//! Router launches (fused and unfused) for the backend, `route`, `check` and `bench`.

use super::gpu::{ptr, Arg, Gpu, Timer};
use crate::engine::config::{MoeConfig, ScoringFunc};
use crate::engine::step::Stage;
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;

/// Largest E the router kernels hold (16 experts per lane of one warp).
pub const MAX_EXPERTS: usize = 512;
/// Largest top-k of a model (the shared-dropped variant routes top_k + S more).
pub const MAX_TOP_K: usize = 16;
/// Largest number of shared slots.
pub const MAX_SHARED: usize = 4;
/// Tokens per block of the fused router (one warp each).
const FUSED_WARPS: usize = 4;

/// What one router launch computes.
#[derive(Clone, Copy, Debug)]
pub struct RouterShape {
    pub e: usize,
    pub n_group: usize,
    pub topk_group: usize,
    /// Routed experts per token.
    pub k: usize,
    /// Experts the router can pick (k, or fewer when the kept groups hold fewer).
    pub k_eff: usize,
    pub softmax: bool,
    pub norm: bool,
    /// Group score = top-2 sum (models with a correction bias), else the max.
    pub top2: bool,
    /// Shared slots appended per token.
    pub s: usize,
    pub routed_scale: f64,
    pub shared_w: f64,
}

impl RouterShape {
    /// Checks the kernels' limits and names the one a config breaks.
    pub fn new(
        cfg: &MoeConfig,
        k: usize,
        s: usize,
        routed_scale: f64,
        shared_w: f64,
    ) -> Result<RouterShape> {
        let e = cfg.n_routed_experts;
        if e > MAX_EXPERTS {
            bail!(
                "the CUDA router supports at most {MAX_EXPERTS} routed experts; {} has {e}",
                cfg.name
            );
        }
        if cfg.num_experts_per_tok > MAX_TOP_K {
            bail!(
                "the CUDA router supports top_k <= {MAX_TOP_K}; {} has num_experts_per_tok {}",
                cfg.name,
                cfg.num_experts_per_tok
            );
        }
        if cfg.n_shared_experts > MAX_SHARED {
            bail!(
                "the CUDA kernels support at most {MAX_SHARED} shared experts; {} has {}",
                cfg.name,
                cfg.n_shared_experts
            );
        }
        if cfg.n_group == 0 || !e.is_multiple_of(cfg.n_group) {
            bail!(
                "n_group ({}) must divide n_routed_experts ({e})",
                cfg.n_group
            );
        }
        if k > e {
            bail!("{} routes {k} experts per token but has only {e}", cfg.name);
        }
        let in_kept = if cfg.n_group > 1 {
            cfg.topk_group * cfg.experts_per_group()
        } else {
            e
        };
        Ok(RouterShape {
            e,
            n_group: cfg.n_group,
            topk_group: cfg.topk_group,
            k,
            k_eff: k.min(in_kept),
            softmax: cfg.scoring_func == ScoringFunc::Softmax,
            norm: cfg.norm_topk_prob,
            top2: cfg.has_bias,
            s,
            routed_scale,
            shared_w,
        })
    }
    pub fn spt(&self) -> usize {
        self.k + self.s
    }
}

/// Device pointers a router reads and writes (0 = none).
#[derive(Clone, Copy, Debug)]
pub struct RouterIo {
    pub logits: u64,
    pub logits_bf16: bool,
    pub bias: u64,
    /// [T] shared gate, or 0 for 1.
    pub gate: u64,
    /// [T × spt]
    pub ids: u64,
    pub weights: u64,
    /// [T × k] double probabilities (fused only), or 0.
    pub probs: u64,
}

/// The fused router kernels: v5 (`router_lanes_*`, lane-contiguous experts, see
/// kernels/router_fused.cu) where the shape and pointers allow it, else v4 (`router_fused_e*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedKernel {
    /// The best kernel for the shape (what every caller uses).
    Auto,
    /// The warp-per-token v4 kernel, kept for shapes v5 does not cover (and as `bench`'s baseline).
    V4,
    /// Bench only, NOT exact: v5 for E = 256 with an f32 sigmoid, to measure what the exact
    /// double-precision scores cost.
    InexactScores,
}

/// The v5 kernel for a shape, if it covers it: sigmoid scoring, E = 256 or 384, n_group
/// a power of two (each group whole lanes), loads aligned for 16-byte (f32) or 8-byte (bf16).
fn lanes_kernel(sh: &RouterShape, io: &RouterIo) -> Option<&'static str> {
    let name = match sh.e {
        256 => "router_lanes_8",
        384 => "router_lanes_12",
        _ => return None,
    };
    let align = if io.logits_bf16 { 8 } else { 16 };
    let ok = !sh.softmax
        && sh.n_group.is_power_of_two()
        && sh.n_group <= 32
        && io.logits.is_multiple_of(align)
        && io.bias.is_multiple_of(16);
    ok.then_some(name)
}

/// Whether `FusedKernel::InexactScores` has a kernel for this shape (f32 logits).
pub fn inexact_covered(sh: &RouterShape) -> bool {
    let io = RouterIo {
        logits: 0,
        logits_bf16: false,
        bias: 0,
        gate: 0,
        ids: 0,
        weights: 0,
        probs: 0,
    };
    lanes_kernel(sh, &io) == Some("router_lanes_8")
}

/// The fused router: one launch.
pub fn fused(gpu: &Gpu, sh: &RouterShape, io: &RouterIo, t: usize) -> Result<()> {
    fused_with(gpu, sh, io, t, FusedKernel::Auto)
}

/// The fused router through a chosen kernel.
pub fn fused_with(
    gpu: &Gpu,
    sh: &RouterShape,
    io: &RouterIo,
    t: usize,
    which: FusedKernel,
) -> Result<()> {
    let blocks = t.div_ceil(FUSED_WARPS) as u32;
    let lanes = match which {
        FusedKernel::Auto => lanes_kernel(sh, io),
        FusedKernel::V4 => None,
        FusedKernel::InexactScores => {
            if lanes_kernel(sh, io) != Some("router_lanes_8") {
                bail!("the inexact-score router kernel covers only the v5 E = 256 shapes");
            }
            Some("router_lanes_8_inexact")
        }
    };
    // v4: experts per lane 8 covers E <= 256 at half the registers and loop trips of 16.
    let kernel = match lanes {
        Some(name) => name,
        None if sh.e <= 256 => "router_fused_e256",
        None => "router_fused_e512",
    };
    gpu.launch_raw(
        kernel,
        (blocks, 1),
        (FUSED_WARPS * 32) as u32,
        0,
        &[
            Arg::Ptr(io.logits),
            Arg::I32(io.logits_bf16 as i32),
            Arg::Ptr(io.bias),
            Arg::I32(sh.top2 as i32),
            Arg::I32(t as i32),
            Arg::I32(sh.e as i32),
            Arg::I32(sh.n_group as i32),
            Arg::I32(sh.topk_group as i32),
            Arg::I32(sh.k as i32),
            Arg::I32(sh.k_eff as i32),
            Arg::I32(sh.softmax as i32),
            Arg::I32(sh.norm as i32),
            Arg::F64(sh.routed_scale),
            Arg::I32(sh.s as i32),
            Arg::F64(sh.shared_w),
            Arg::Ptr(io.gate),
            Arg::Ptr(io.ids),
            Arg::Ptr(io.weights),
            Arg::Ptr(io.probs),
            Arg::I32(sh.spt() as i32),
        ],
    )
}

/// Intermediates of the unfused router, as the op-by-op router keeps them in memory.
pub struct UnfusedBufs {
    pub scores: CudaSlice<f32>,
    pub sel: CudaSlice<f32>,
    pub masked: CudaSlice<f32>,
    pub group_scores: CudaSlice<f32>,
    pub kept: CudaSlice<u8>,
    pub weights: CudaSlice<f64>,
}

impl UnfusedBufs {
    pub fn new(gpu: &Gpu, t: usize, e: usize, groups: usize, k: usize) -> Result<UnfusedBufs> {
        Ok(UnfusedBufs {
            scores: gpu.alloc(t * e, "router scores")?,
            sel: gpu.alloc(t * e, "router sel")?,
            masked: gpu.alloc(t * e, "router masked sel")?,
            group_scores: gpu.alloc(t * groups, "group scores")?,
            kept: gpu.alloc(t * groups, "kept groups")?,
            weights: gpu.alloc(t * k, "router weights")?,
        })
    }
}

/// The unfused router: one launch per step, each timed by `timer`.
pub fn unfused(
    gpu: &Gpu,
    sh: &RouterShape,
    io: &RouterIo,
    t: usize,
    b: &UnfusedBufs,
    timer: &mut Timer,
) -> Result<()> {
    let (e, g, k, spt) = (sh.e, sh.n_group, sh.k, sh.spt());
    let te = t * e;
    let (scores, sel, masked) = (ptr(gpu, &b.scores), ptr(gpu, &b.sel), ptr(gpu, &b.masked));
    let (gs, kept, w) = (
        ptr(gpu, &b.group_scores),
        ptr(gpu, &b.kept),
        ptr(gpu, &b.weights),
    );
    let f32b = |n: usize| Some(4 * n as u64);
    let per_token = |n: usize| (n.div_ceil(256) as u32, 1);
    let logit_bytes = if io.logits_bf16 { 2 } else { 4 } * te as u64;

    // Softmax needs a warp per token (max and sum); sigmoid is elementwise.
    let grid = if sh.softmax {
        ((t * 32).div_ceil(256) as u32, 1)
    } else {
        gpu.stride_grid(te, 256)
    };
    timer.launch(
        gpu,
        Stage::RouterScores,
        grid,
        &[
            Arg::Ptr(io.logits),
            Arg::I32(io.logits_bf16 as i32),
            Arg::Ptr(scores),
            Arg::I32(t as i32),
            Arg::I32(e as i32),
            Arg::I32(sh.softmax as i32),
        ],
        Some(logit_bytes + 4 * te as u64),
    )?;

    timer.launch(
        gpu,
        Stage::RouterAddBias,
        gpu.stride_grid(te, 256),
        &[
            Arg::Ptr(scores),
            Arg::Ptr(io.bias),
            Arg::Ptr(sel),
            Arg::I32(t as i32),
            Arg::I32(e as i32),
        ],
        f32b(2 * te),
    )?;

    let topk_input = if g > 1 {
        timer.launch(
            gpu,
            Stage::RouterGroupScores,
            per_token(t * g),
            &[
                Arg::Ptr(sel),
                Arg::Ptr(gs),
                Arg::I32(t as i32),
                Arg::I32(e as i32),
                Arg::I32(g as i32),
                Arg::I32(sh.top2 as i32),
            ],
            f32b(te + t * g),
        )?;

        timer.launch(
            gpu,
            Stage::RouterGroupTopk,
            per_token(t),
            &[
                Arg::Ptr(gs),
                Arg::Ptr(kept),
                Arg::I32(t as i32),
                Arg::I32(g as i32),
                Arg::I32(sh.topk_group as i32),
            ],
            Some((4 * t * g + t * g) as u64),
        )?;

        timer.launch(
            gpu,
            Stage::RouterMask,
            gpu.stride_grid(te, 256),
            &[
                Arg::Ptr(sel),
                Arg::Ptr(kept),
                Arg::Ptr(masked),
                Arg::I32(t as i32),
                Arg::I32(e as i32),
                Arg::I32(g as i32),
            ],
            Some((8 * te + t * g) as u64),
        )?;
        masked
    } else {
        sel
    };

    timer.launch(
        gpu,
        Stage::RouterExpertTopk,
        ((t * 32).div_ceil(256) as u32, 1),
        &[
            Arg::Ptr(topk_input),
            Arg::Ptr(io.ids),
            Arg::I32(t as i32),
            Arg::I32(e as i32),
            Arg::I32(k as i32),
            Arg::I32(spt as i32),
        ],
        Some((4 * te + 4 * t * k) as u64),
    )?;

    timer.launch(
        gpu,
        Stage::RouterGather,
        per_token(t * k),
        &[
            Arg::Ptr(scores),
            Arg::Ptr(io.ids),
            Arg::Ptr(w),
            Arg::I32(t as i32),
            Arg::I32(e as i32),
            Arg::I32(k as i32),
            Arg::I32(spt as i32),
        ],
        Some((16 * t * k) as u64),
    )?;

    timer.launch(
        gpu,
        Stage::RouterRenormalize,
        per_token(t),
        &[
            Arg::Ptr(w),
            Arg::I32(t as i32),
            Arg::I32(k as i32),
            Arg::I32(sh.norm as i32),
        ],
        Some((16 * t * k) as u64),
    )?;

    timer.launch(
        gpu,
        Stage::RouterScale,
        per_token(t * spt),
        &[
            Arg::Ptr(w),
            Arg::I32(t as i32),
            Arg::I32(e as i32),
            Arg::I32(k as i32),
            Arg::F64(sh.routed_scale),
            Arg::I32(sh.s as i32),
            Arg::F64(sh.shared_w),
            Arg::Ptr(io.gate),
            Arg::Ptr(io.ids),
            Arg::Ptr(io.weights),
            Arg::I32(spt as i32),
        ],
        Some((8 * t * k + 8 * t * spt) as u64),
    )?;
    Ok(())
}
