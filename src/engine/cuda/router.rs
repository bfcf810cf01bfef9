//! Router launches (fused and unfused) for the backend, `route`, `check` and `bench`.

use super::gpu::{Gpu, Timer};
use super::kernels::{
    AnyPtr, DevPtr, KernelId, RouterAddBiasArgs, RouterExpertTopkArgs, RouterFusedArgs,
    RouterGatherArgs, RouterGroupScoresArgs, RouterGroupTopkArgs, RouterMaskArgs,
    RouterRenormalizeArgs, RouterScaleArgs, RouterScoresArgs,
};
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

/// Device buffers a router reads and writes (NULL = none).
#[derive(Clone, Copy, Debug)]
pub struct RouterIo {
    /// [T × E], f32 or bf16.
    pub logits: AnyPtr,
    pub logits_bf16: bool,
    /// [E] correction bias.
    pub bias: DevPtr<f32>,
    /// [T] shared gate, or NULL for 1.
    pub gate: DevPtr<f32>,
    /// [T × spt]
    pub ids: DevPtr<u32>,
    pub weights: DevPtr<f32>,
    /// [T × k] double probabilities (fused only), or NULL.
    pub probs: DevPtr<f64>,
}

/// Which fused router kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedKernel {
    /// The fastest kernel that covers the shape at this token count (what every caller but
    /// `check` and `bench` uses): the lane-contiguous kernel where it applies, screened where
    /// that pays ([`screen_pays`]), else the general kernel.
    Auto,
    /// The general warp-per-token kernel (`router_fused_e256/e512`): the only one for softmax
    /// scoring, E other than 256 or 384, group counts that are not a power of two and unaligned
    /// logits. `check` runs it on every shape, so it stays verified where Auto would not pick it.
    General,
    /// The lane-contiguous kernel with or without its f32 screen, where it covers the shape (else
    /// the general kernel): `check` and `bench` run both at every token count.
    Lanes { screen: bool },
}

/// Whether the lanes kernel's f32 screen pays at `t` tokens. Every warp routes one token, and a
/// token whose decisions are too close for the screen is routed again exactly, so a launch takes
/// as long as its slowest warp: with a few tokens (or many more than the card runs at once) the
/// screen's shorter chain wins, in between some warp almost always falls back and pays both
/// (H200, run G21: the screen is faster up to T = 8 and from T = 8192 on).
pub fn screen_pays(t: usize) -> bool {
    t <= 8 || t >= 8192
}

/// The lane-contiguous kernel for a shape, if it covers it: sigmoid scoring, E = 256 or 384,
/// n_group a power of two (each group whole lanes), loads aligned for 16-byte (f32) or 8-byte
/// (bf16).
fn lanes_kernel(sh: &RouterShape, io: &RouterIo, screen: bool) -> Option<KernelId> {
    let id = match (sh.e, screen) {
        (256, false) => KernelId::RouterLanes8,
        (384, false) => KernelId::RouterLanes12,
        (256, true) => KernelId::RouterScreen8,
        (384, true) => KernelId::RouterScreen12,
        _ => return None,
    };
    let align = if io.logits_bf16 { 8 } else { 16 };
    let ok = !sh.softmax
        && sh.n_group.is_power_of_two()
        && sh.n_group <= 32
        && io.logits.addr().is_multiple_of(align)
        && io.bias.addr().is_multiple_of(16);
    ok.then_some(id)
}

/// The kernel `which` runs for this shape, these buffers and `t` tokens.
pub fn fused_kernel(sh: &RouterShape, io: &RouterIo, t: usize, which: FusedKernel) -> KernelId {
    let lanes = match which {
        FusedKernel::Auto => lanes_kernel(sh, io, screen_pays(t)),
        FusedKernel::General => None,
        FusedKernel::Lanes { screen } => lanes_kernel(sh, io, screen),
    };
    // General: 8 experts per lane cover E <= 256 at half the registers and loop trips of 16.
    lanes.unwrap_or(if sh.e <= 256 {
        KernelId::RouterFusedE256
    } else {
        KernelId::RouterFusedE512
    })
}

/// The fused router's arguments for `t` tokens.
pub fn fused_args(sh: &RouterShape, io: &RouterIo, t: usize) -> RouterFusedArgs {
    RouterFusedArgs {
        logits: io.logits,
        logits_bf16: io.logits_bf16,
        bias: io.bias,
        group_top2: sh.top2,
        t: t as i32,
        e: sh.e as i32,
        n_group: sh.n_group as i32,
        topk_group: sh.topk_group as i32,
        k: sh.k as i32,
        k_eff: sh.k_eff as i32,
        softmax: sh.softmax,
        norm: sh.norm,
        routed_scale: sh.routed_scale,
        s: sh.s as i32,
        shared_w: sh.shared_w,
        gate: io.gate,
        ids: io.ids,
        weights: io.weights,
        probs: io.probs,
        spt: sh.spt() as i32,
    }
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
    gpu.launch_fn(fused_kernel(sh, io, t, which), fused_args(sh, io, t))
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

/// The unfused router: one launch per op, each a timed stage of `timer`.
pub fn unfused(
    gpu: &Gpu,
    sh: &RouterShape,
    io: &RouterIo,
    t: usize,
    b: &UnfusedBufs,
    timer: &mut Timer,
) -> Result<()> {
    let (e, te) = (sh.e as i32, t * sh.e);
    let (scores, sel) = (gpu.ptr(&b.scores), gpu.ptr(&b.sel));
    let logit_bytes = if io.logits_bf16 { 2 } else { 4 } * te as u64;
    let scores_args = RouterScoresArgs {
        logits: io.logits,
        logits_bf16: io.logits_bf16,
        scores,
        t: t as i32,
        e,
        softmax: sh.softmax,
    };
    let bytes = Some(logit_bytes + 4 * te as u64);
    timer.launch(gpu, Stage::RouterScores, scores_args, bytes)?;
    let add_bias = RouterAddBiasArgs {
        scores,
        bias: io.bias,
        sel,
        t: t as i32,
        e,
    };
    timer.launch(gpu, Stage::RouterAddBias, add_bias, Some(8 * te as u64))?;
    let topk_input = if sh.n_group > 1 {
        unfused_groups(gpu, sh, t, b, timer)?
    } else {
        sel
    };
    unfused_select(gpu, sh, io, t, topk_input, b, timer)
}

/// Group scores, the kept groups and the mask; returns the masked selection values.
fn unfused_groups(
    gpu: &Gpu,
    sh: &RouterShape,
    t: usize,
    b: &UnfusedBufs,
    timer: &mut Timer,
) -> Result<DevPtr<f32>> {
    let (e, g, te) = (sh.e as i32, sh.n_group as i32, t * sh.e);
    let (sel, gs, kept, masked) = (
        gpu.ptr(&b.sel),
        gpu.ptr(&b.group_scores),
        gpu.ptr(&b.kept),
        gpu.ptr(&b.masked),
    );
    let tg = t * sh.n_group;
    let group_scores = RouterGroupScoresArgs {
        sel,
        gs,
        t: t as i32,
        e,
        g,
        top2: sh.top2,
    };
    let bytes = Some(4 * (te + tg) as u64);
    timer.launch(gpu, Stage::RouterGroupScores, group_scores, bytes)?;
    let group_topk = RouterGroupTopkArgs {
        gs,
        kept,
        t: t as i32,
        g,
        topk_group: sh.topk_group as i32,
    };
    let bytes = Some((4 * tg + tg) as u64);
    timer.launch(gpu, Stage::RouterGroupTopk, group_topk, bytes)?;
    let mask = RouterMaskArgs {
        sel,
        kept,
        masked,
        t: t as i32,
        e,
        g,
    };
    timer.launch(gpu, Stage::RouterMask, mask, Some((8 * te + tg) as u64))?;
    Ok(masked)
}

/// Expert top-k, gather, renormalize and scale into the slots.
fn unfused_select(
    gpu: &Gpu,
    sh: &RouterShape,
    io: &RouterIo,
    t: usize,
    topk_input: DevPtr<f32>,
    b: &UnfusedBufs,
    timer: &mut Timer,
) -> Result<()> {
    let (e, k, spt) = (sh.e as i32, sh.k as i32, sh.spt() as i32);
    let (tk, te, tspt) = (t * sh.k, t * sh.e, t * sh.spt());
    let (scores, w) = (gpu.ptr(&b.scores), gpu.ptr(&b.weights));
    let t32 = t as i32;
    let topk = RouterExpertTopkArgs {
        masked: topk_input,
        ids: io.ids,
        t: t32,
        e,
        k,
        spt,
    };
    let bytes = Some((4 * te + 4 * tk) as u64);
    timer.launch(gpu, Stage::RouterExpertTopk, topk, bytes)?;
    let gather = RouterGatherArgs {
        scores,
        ids: io.ids,
        w,
        t: t32,
        e,
        k,
        spt,
    };
    timer.launch(gpu, Stage::RouterGather, gather, Some(16 * tk as u64))?;
    let renormalize = RouterRenormalizeArgs {
        w,
        t: t32,
        k,
        norm: sh.norm,
    };
    timer.launch(
        gpu,
        Stage::RouterRenormalize,
        renormalize,
        Some(16 * tk as u64),
    )?;
    let scale = RouterScaleArgs {
        w,
        t: t32,
        e,
        k,
        routed_scale: sh.routed_scale,
        s: sh.s as i32,
        shared_w: sh.shared_w,
        gate: io.gate,
        ids: io.ids,
        weights: io.weights,
        spt,
    };
    let bytes = Some((8 * tk + 8 * tspt) as u64);
    timer.launch(gpu, Stage::RouterScale, scale, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(logits: u64, bf16: bool) -> RouterIo {
        RouterIo {
            logits: DevPtr::from_addr(logits),
            logits_bf16: bf16,
            bias: DevPtr::from_addr(0x1000),
            gate: DevPtr::NULL,
            ids: DevPtr::NULL,
            weights: DevPtr::NULL,
            probs: DevPtr::NULL,
        }
    }

    fn kernel(preset: &str, logits: u64, bf16: bool, t: usize, which: FusedKernel) -> KernelId {
        let cfg = MoeConfig::preset(preset).unwrap();
        let sh = RouterShape::new(&cfg, cfg.num_experts_per_tok, 1, 1.0, 1.0).unwrap();
        fused_kernel(&sh, &io(logits, bf16), t, which)
    }

    #[test]
    fn auto_takes_the_lane_kernels_where_they_apply_and_the_general_one_elsewhere() {
        use FusedKernel::{Auto, General, Lanes};
        let t = 1000; // where the screen does not pay
        assert_eq!(
            kernel("deepseek-v3", 0x2000, false, t, Auto),
            KernelId::RouterLanes8
        );
        assert_eq!(
            kernel("kimi-k2", 0x2000, false, t, Auto),
            KernelId::RouterLanes12
        );
        // 8-byte aligned is enough for bf16, not for f32.
        assert_eq!(
            kernel("deepseek-v3", 0x2008, true, t, Auto),
            KernelId::RouterLanes8
        );
        assert_eq!(
            kernel("deepseek-v3", 0x2008, false, t, Auto),
            KernelId::RouterFusedE256
        );
        // Softmax scoring and E = 512 have only the general kernel, screened or not.
        assert_eq!(
            kernel("mixtral-8x7b", 0x2000, false, t, Auto),
            KernelId::RouterFusedE256
        );
        assert_eq!(
            kernel("mixtral-8x7b", 0x2000, false, t, Lanes { screen: true }),
            KernelId::RouterFusedE256
        );
        assert_eq!(
            kernel("qwen3-next-80b-a3b", 0x2000, false, t, Auto),
            KernelId::RouterFusedE512
        );
        assert_eq!(
            kernel("deepseek-v3", 0x2000, false, t, General),
            KernelId::RouterFusedE256
        );
        assert_eq!(
            kernel("kimi-k2", 0x2000, false, t, General),
            KernelId::RouterFusedE512
        );
    }

    #[test]
    fn auto_screens_where_the_screen_pays() {
        let auto = |preset, t| kernel(preset, 0x2000, false, t, FusedKernel::Auto);
        assert_eq!(auto("deepseek-v3", 1), KernelId::RouterScreen8);
        assert_eq!(auto("deepseek-v3", 512), KernelId::RouterLanes8);
        assert_eq!(auto("deepseek-v3", 40000), KernelId::RouterScreen8);
        assert_eq!(auto("kimi-k2", 131072), KernelId::RouterScreen12);
        let forced = |screen| kernel("kimi-k2", 0x2000, false, 64, FusedKernel::Lanes { screen });
        assert_eq!(forced(true), KernelId::RouterScreen12);
        assert_eq!(forced(false), KernelId::RouterLanes12);
    }

    #[test]
    fn fused_args_carry_the_shape() {
        let cfg = MoeConfig::preset("deepseek-v3").unwrap();
        let sh = RouterShape::new(&cfg, 8, 1, 1.0, 0.4).unwrap();
        let a = fused_args(&sh, &io(0x2000, false), 77);
        assert_eq!((a.t, a.e, a.k, a.s, a.spt), (77, 256, 8, 1, 9));
        assert_eq!((a.n_group, a.topk_group), (8, 4));
        assert!(a.group_top2 && a.norm && !a.softmax);
        assert_eq!(a.shared_w, 0.4);
        use super::super::kernels::Kernel;
        assert_eq!(a.grid(132).blocks, (20, 1, 1)); // 77 tokens, 4 warps a block
    }
}
