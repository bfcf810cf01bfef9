//! FP8 experts in the layer (`--experts fp8`): the layer's FP8 weights on the device — an FP8
//! checkpoint's uploaded as it stores them (no re-quantization), else block-quantized on the
//! device from the bf16 weights already there (the bits `weights::fp8` computes) — made at the
//! first step of a path that runs them; the buffers of the FP8 expert stage; and its launches
//! (the grouped expert MLP, and the separate shared MLP as S dense groups).

use super::super::fp8::{self as dfp8, DeviceStack, ExpertBuffers, ExpertInputs, Fp8Slots};
use super::super::gpu::{Gpu, Timer};
use super::super::kernels::{DevPtr, GemmRows};
use super::super::reference::{DeviceReference, PathOutputs, RefWeights};
use super::device::DeviceLayer;
use super::workspace::Workspace;
use crate::engine::config::MoeConfig;
use crate::engine::step::{FormatErrors, Stage};
use crate::engine::weights::fp8::{check_sizes, Fp8Mlp};
use crate::engine::weights::{ExpertWeights, WeightSource};
use anyhow::{Context, Result};

/// The layer's FP8 weights: routed experts and shared slots, each where some path runs them.
pub struct Fp8Layer {
    pub routed: Option<Fp8Slots>,
    pub shared: Option<Fp8Slots>,
    /// The checkpoint's stored FP8 (else quantized on the device from bf16).
    pub stored: bool,
}

impl Fp8Layer {
    /// The FP8 weights of the routed experts (`routed`) and the shared slots (`shared`).
    pub fn new(
        gpu: &Gpu,
        layer: &DeviceLayer,
        source: &dyn WeightSource,
        routed: bool,
        shared: bool,
    ) -> Result<Fp8Layer> {
        let cfg = &layer.cfg;
        check_sizes(cfg, routed, shared)?;
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        let (s, is) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        let mut stored = false;
        let routed = match routed {
            false => None,
            true => Some(match read_stored(e, |x| source.expert_fp8(x))? {
                Some(mlps) => {
                    stored = true;
                    Fp8Slots::upload(gpu, &mlps, "FP8 routed experts")?
                }
                None => Fp8Slots {
                    w13: DeviceStack::quantize(
                        gpu,
                        gpu.ptr(&layer.w13),
                        e,
                        2 * i,
                        h,
                        "FP8 expert gate/up",
                    )?,
                    w2: DeviceStack::quantize(gpu, gpu.ptr(&layer.w2), e, h, i, "FP8 expert down")?,
                },
            }),
        };
        let shared = match (&layer.sw13, &layer.sw2) {
            (Some(a), Some(b)) if shared && s > 0 => {
                Some(match read_stored(s, |j| source.shared_slot_fp8(j))? {
                    Some(mlps) => {
                        stored = true;
                        Fp8Slots::upload(gpu, &mlps, "FP8 shared experts")?
                    }
                    None => Fp8Slots {
                        w13: DeviceStack::quantize(
                            gpu,
                            gpu.ptr(a),
                            s,
                            2 * is,
                            h,
                            "FP8 shared gate/up",
                        )?,
                        w2: DeviceStack::quantize(gpu, gpu.ptr(b), s, h, is, "FP8 shared down")?,
                    },
                })
            }
            _ => None,
        };
        gpu.sync("making the FP8 expert weights")?;
        Ok(Fp8Layer {
            routed,
            shared,
            stored,
        })
    }

    /// Whether these weights serve paths needing FP8 routed experts and/or shared slots.
    pub fn covers(&self, routed: bool, shared: bool) -> bool {
        (!routed || self.routed.is_some()) && (!shared || self.shared.is_some())
    }

    /// Slot `slot` (routed below E, then shared) as the FP8 GEMMs multiply it, dequantized.
    pub fn slot_from_device(
        &self,
        gpu: &Gpu,
        cfg: &MoeConfig,
        slot: usize,
    ) -> Result<ExpertWeights> {
        let e = cfg.n_routed_experts;
        let (slots, idx) = if slot < e {
            (self.routed.as_ref(), slot)
        } else {
            (self.shared.as_ref(), slot - e)
        };
        let slots =
            slots.with_context(|| format!("slot {slot} has no FP8 weights on the device"))?;
        Ok(slots.download(gpu, idx)?.dequantize())
    }
}

/// Every MLP `0..n` as a checkpoint stores it in FP8; None where the first is not FP8.
fn read_stored(
    n: usize,
    get: impl Fn(usize) -> Result<Option<Fp8Mlp>>,
) -> Result<Option<Vec<Fp8Mlp>>> {
    let Some(first) = get(0)? else {
        return Ok(None);
    };
    let mut all = Vec::with_capacity(n);
    all.push(first);
    for x in 1..n {
        all.push(get(x)?.with_context(|| format!("MLP {x} is not stored in FP8 while MLP 0 is"))?);
    }
    Ok(Some(all))
}

/// The FP8 expert stage's buffers for `t` tokens of up to `spt` slots.
pub struct Fp8Buffers {
    pub t: usize,
    pub spt: usize,
    routed: Option<ExpertBuffers>,
    /// The separate shared MLP: S groups of T rows.
    shared: Option<ExpertBuffers>,
}

impl Fp8Buffers {
    pub fn new(
        gpu: &Gpu,
        cfg: &MoeConfig,
        w: &Fp8Layer,
        t: usize,
        spt: usize,
    ) -> Result<Fp8Buffers> {
        let s = cfg.n_shared_experts;
        Ok(Fp8Buffers {
            t,
            spt,
            routed: match &w.routed {
                Some(r) => Some(ExpertBuffers::for_slots(gpu, r, cfg.total_slots(), t, spt)?),
                None => None,
            },
            shared: match &w.shared {
                Some(sh) if s > 0 => Some(ExpertBuffers::for_slots(gpu, sh, s, t, s)?),
                _ => None,
            },
        })
    }

    /// Whether these buffers serve `t` tokens of `spt` slots with these weights.
    pub fn fits(&self, w: &Fp8Layer, t: usize, spt: usize) -> bool {
        self.t == t
            && self.spt >= spt
            && self.routed.is_some() == w.routed.is_some()
            && self.shared.is_some() == w.shared.is_some()
    }
}

/// The grouped expert MLP in FP8 over the step's alignment, into `ws.experts.eo` (what combine
/// reads): the routed experts, and the shared slots as extra groups where `fused_shared`.
pub fn experts(
    gpu: &Gpu,
    w: &Fp8Layer,
    b: &Fp8Buffers,
    ws: &Workspace,
    spt: usize,
    fused_shared: bool,
    timer: &mut Timer,
) -> Result<()> {
    let routed = w
        .routed
        .as_ref()
        .context("the FP8 routed experts are not on the device")?;
    let rb = b
        .routed
        .as_ref()
        .context("the FP8 expert buffers are missing")?;
    let shared = match fused_shared {
        true => Some(
            w.shared
                .as_ref()
                .context("the FP8 shared slots are not on the device")?,
        ),
        false => None,
    };
    let io = ExpertInputs {
        x: gpu.ptr(&ws.inputs.x),
        rows_mode: GemmRows::Mapped,
        order: gpu.ptr(&ws.align.order),
        offsets: gpu.ptr(&ws.align.offsets),
        spt,
        eo: gpu.ptr(&ws.experts.eo),
    };
    dfp8::run_slots(gpu, routed, shared, rb, &io, timer)
}

/// The separate shared MLP in FP8: S dense groups over all T tokens into `ws.shared.out`,
/// timed as one stage as the bf16 one is.
pub fn shared_mlp(
    gpu: &Gpu,
    w: &Fp8Layer,
    b: &Fp8Buffers,
    ws: &Workspace,
    cfg: &MoeConfig,
    timer: &mut Timer,
) -> Result<()> {
    let sl = w
        .shared
        .as_ref()
        .context("the FP8 shared experts are not on the device")?;
    let sb = b
        .shared
        .as_ref()
        .context("the FP8 shared buffers are missing")?;
    let (t, h, s, is) = (
        b.t,
        cfg.hidden_size,
        cfg.n_shared_experts,
        cfg.shared_slot_intermediate(),
    );
    let io = ExpertInputs {
        x: gpu.ptr(&ws.inputs.x),
        rows_mode: GemmRows::PerGroup,
        order: DevPtr::NULL,
        offsets: gpu.ptr(&ws.shared.offsets),
        spt: 1,
        eo: gpu.ptr(&ws.shared.out),
    };
    timer.start(gpu)?;
    dfp8::run_slots(gpu, sl, None, sb, &io, &mut Timer::new(false))?;
    let weights = s * (sl.w13.bytes_per_matrix() + sl.w2.bytes_per_matrix());
    let bytes = weights + t * h * 2 + 4 * s * t * h + 2 * s * t * is;
    timer.stop(gpu, Stage::SharedMlp, Some(bytes as u64))
}

/// The FP8 weights and buffers a path's FP8 stages run on.
#[derive(Clone, Copy)]
pub struct Fp8Stage<'a> {
    pub layer: &'a Fp8Layer,
    pub bufs: &'a Fp8Buffers,
}

/// An FP8 path against the device reference on the FP8 weights it multiplied (`reference`: one
/// path's reference, run for each FP8 path unless `reuse`: this step's previous FP8 path had the
/// same weights): every compared token, the reference routing and contract, the weights' codes
/// and block scales decoded exactly, the activations exact. The format's error (against a bf16
/// path) is filled in by the caller.
#[allow(clippy::too_many_arguments)]
pub fn device_errors(
    gpu: &Gpu,
    reference: &mut DeviceReference,
    layer: &DeviceLayer,
    w: &Fp8Layer,
    ws: &Workspace,
    out: PathOutputs,
    shared_fp8: bool,
    reuse: bool,
    step: u64,
) -> Result<FormatErrors> {
    let routed = w
        .routed
        .as_ref()
        .context("the FP8 routed experts are not on the device")?;
    let shared = match shared_fp8 {
        true => Some(
            w.shared
                .as_ref()
                .context("the FP8 shared slots are not on the device")?,
        ),
        false => None,
    };
    if reuse {
        reference.clear_comparisons();
    } else {
        let (x, logits) = (gpu.ptr(&ws.inputs.x), gpu.ptr(&ws.gate.logits));
        let weights = RefWeights::Fp8 { routed, shared };
        reference.run(gpu, layer, x, logits, weights, step)?;
    }
    reference.compare_path(gpu, 0, out)?;
    let n = reference.finish(gpu, step)?;
    let c = &n.comparison;
    Ok(FormatErrors {
        tokens: c.sampled_tokens,
        on_device: true,
        activations_quantized: false,
        dequant_rel_l2: c.output_rel_l2_ref.first().copied().unwrap_or(f64::NAN),
        dequant: c.token_errors_ref.first().cloned().unwrap_or_default(),
        bf16_path: None,
        bf16_rel_l2: None,
        bf16: None,
    })
}
