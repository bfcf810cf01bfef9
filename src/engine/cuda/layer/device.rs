//! The layer's weights on the device: generated there for synthetic sources (bit for bit the
//! host's), uploaded otherwise; and the weight source the f64 reference reads back.

use super::super::gpu::Gpu;
use super::super::kernels::{DevPtr, InitMlpArgs, InitUniformArgs};
use super::super::router;
use super::finite::{FiniteCounters, Values};
use crate::engine::config::MoeConfig;
use crate::engine::finite::FiniteStage;
use crate::engine::weights::synthetic::{amplitude, tensor_id};
use crate::engine::weights::{ExpertWeights, WeightSource};
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// Hidden and intermediate sizes must be multiples of this (GEMM K tiles, 16-byte loads).
pub const SIZE_MULTIPLE: usize = 64;

pub(super) fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
pub(super) fn bf16_value(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

/// The layer's weights in device memory, bf16 (router bias, logit offset, shared gate f32).
pub struct DeviceLayer {
    pub cfg: MoeConfig,
    /// [E × H]
    pub gate_w: CudaSlice<u16>,
    pub bias: Option<CudaSlice<f32>>,
    /// [E]
    pub offset: CudaSlice<f32>,
    /// [H] Qwen3-Next shared expert gate.
    pub shared_gate_w: Option<CudaSlice<f32>>,
    /// [E × 2I × H]: per expert the gate rows then the up rows.
    pub w13: CudaSlice<u16>,
    /// [E × H × I]
    pub w2: CudaSlice<u16>,
    /// Shared slots, [S × 2Is × H] and [S × H × Is] (Is = shared slot intermediate).
    pub sw13: Option<CudaSlice<u16>>,
    pub sw2: Option<CudaSlice<u16>>,
    /// Whether the weights were generated on the device from a synthetic source.
    pub generated: bool,
    /// NaN and ±Inf in all of the above, counted on the device once they are there.
    pub weights_nonfinite: u64,
}

/// Checks the shapes the expert kernels support.
pub fn check_shape(cfg: &MoeConfig) -> Result<()> {
    let sizes = [
        ("hidden_size", cfg.hidden_size),
        ("moe_intermediate_size", cfg.moe_intermediate_size),
        (
            "shared slot intermediate size",
            if cfg.n_shared_experts > 0 {
                cfg.shared_slot_intermediate()
            } else {
                SIZE_MULTIPLE
            },
        ),
    ];
    for (what, v) in sizes {
        if !v.is_multiple_of(SIZE_MULTIPLE) {
            bail!("the CUDA expert kernels need {what} to be a multiple of {SIZE_MULTIPLE}; {} has {v}", cfg.name);
        }
    }
    if cfg.n_shared_experts > 0
        && !cfg
            .shared_intermediate_size
            .is_multiple_of(cfg.n_shared_experts)
    {
        bail!(
            "shared_intermediate_size {} of {} does not split into {} shared slots",
            cfg.shared_intermediate_size,
            cfg.name,
            cfg.n_shared_experts
        );
    }
    router::RouterShape::new(cfg, cfg.num_experts_per_tok, 0, 1.0, 0.0).map(|_| ())
}

impl DeviceLayer {
    pub fn new(gpu: &Gpu, source: &dyn WeightSource) -> Result<DeviceLayer> {
        let cfg = source.config().clone();
        cfg.validate()?;
        check_shape(&cfg)?;
        let mut layer = DeviceLayer::alloc(gpu, source, cfg)?;
        match source.synthetic() {
            Some(syn) => layer.generate(gpu, syn.seed)?,
            None => layer.upload(gpu, source)?,
        }
        layer.weights_nonfinite = layer.count_nonfinite(gpu)?;
        Ok(layer)
    }

    /// Non-finite values in every weight tensor (what the CPU backend counts at load).
    fn count_nonfinite(&self, gpu: &Gpu) -> Result<u64> {
        let counters = FiniteCounters::new(gpu, 1)?;
        let f32s = [
            Some(&self.offset),
            self.bias.as_ref(),
            self.shared_gate_w.as_ref(),
        ];
        for buf in f32s.into_iter().flatten() {
            let values = Values::F32(gpu.ptr(buf), buf.len());
            counters.count(gpu, 0, FiniteStage::Weights, values)?;
        }
        let bf16s = [Some(&self.gate_w), Some(&self.w13), Some(&self.w2)];
        let shared = [self.sw13.as_ref(), self.sw2.as_ref()];
        for buf in bf16s.into_iter().chain(shared).flatten() {
            let values = Values::Bf16(gpu.ptr(buf), buf.len());
            counters.count(gpu, 0, FiniteStage::Weights, values)?;
        }
        let counts = counters.read(gpu, 1)?;
        Ok(counts.first().map_or(0, |c| c.get(FiniteStage::Weights)))
    }

    /// The small f32 tensors uploaded, the bf16 matrices allocated (filled by `generate` or
    /// `upload`).
    fn alloc(gpu: &Gpu, source: &dyn WeightSource, cfg: MoeConfig) -> Result<DeviceLayer> {
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        let (s, is) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        let bias = match source.router_bias()? {
            Some(b) => Some(gpu.upload(&b, "router bias")?),
            None => None,
        };
        let shared_gate_w = match source.shared_gate()? {
            Some(g) => Some(gpu.upload(&g, "shared expert gate")?),
            None => None,
        };
        let (sw13, sw2) = if s > 0 {
            (
                Some(gpu.alloc::<u16>(s * 2 * is * h, "shared gate/up weights")?),
                Some(gpu.alloc::<u16>(s * h * is, "shared down weights")?),
            )
        } else {
            (None, None)
        };
        Ok(DeviceLayer {
            gate_w: gpu.alloc::<u16>(e * h, "router gate")?,
            bias,
            offset: gpu.upload(&source.logit_offset()?, "logit offset")?,
            shared_gate_w,
            w13: gpu.alloc::<u16>(e * 2 * i * h, "expert gate/up weights")?,
            w2: gpu.alloc::<u16>(e * h * i, "expert down weights")?,
            sw13,
            sw2,
            generated: source.synthetic().is_some(),
            weights_nonfinite: 0,
            cfg,
        })
    }

    /// Synthetic weights generated on the device, bit for bit the host's.
    fn generate(&mut self, gpu: &Gpu, seed: u64) -> Result<()> {
        let cfg = &self.cfg;
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        let (s, is) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        gpu.launch(InitUniformArgs {
            out: gpu.ptr(&self.gate_w),
            n: (e * h) as u64,
            seed,
            tensor: tensor_id::ROUTER_GATE,
            amp: amplitude(h),
        })?;
        init_mlps(gpu, gpu.ptr(&self.w13), gpu.ptr(&self.w2), 0, e, i, h, seed)?;
        if let (Some(a), Some(b)) = (&self.sw13, &self.sw2) {
            init_mlps(gpu, gpu.ptr(a), gpu.ptr(b), e, s, is, h, seed)?;
        }
        gpu.sync("initializing the weights on the device")
    }

    /// Weights read from the source (a checkpoint), rounded to bf16 and uploaded.
    fn upload(&mut self, gpu: &Gpu, source: &dyn WeightSource) -> Result<()> {
        let cfg = &self.cfg;
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        let (s, is) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        let gate: Vec<u16> = source
            .router_gate()?
            .iter()
            .map(|&v| bf16_bits(v))
            .collect();
        ensure!(
            gate.len() == e * h,
            "router gate has {} values, expected {}",
            gate.len(),
            e * h
        );
        copy_into(gpu, &gate, &mut self.gate_w, 0, "router gate")?;
        for x in 0..e {
            let w = source.expert(x)?;
            upload_mlp(gpu, &w, &mut self.w13, &mut self.w2, x, i, h)
                .with_context(|| format!("expert {x}"))?;
        }
        if let (Some(a), Some(b)) = (self.sw13.as_mut(), self.sw2.as_mut()) {
            for j in 0..s {
                let w = source.shared_slot(j)?;
                upload_mlp(gpu, &w, a, b, j, is, h).with_context(|| format!("shared slot {j}"))?;
            }
        }
        Ok(())
    }

    /// Slot `slot`'s MLP (routed expert or shared slot) copied back from the device, as f32.
    pub fn mlp_from_device(&self, gpu: &Gpu, slot: usize) -> Result<ExpertWeights> {
        let (e, h) = (self.cfg.n_routed_experts, self.cfg.hidden_size);
        let (w13, w2, idx, inter) = if slot < e {
            (&self.w13, &self.w2, slot, self.cfg.moe_intermediate_size)
        } else {
            match (&self.sw13, &self.sw2) {
                (Some(a), Some(b)) => (a, b, slot - e, self.cfg.shared_slot_intermediate()),
                _ => bail!("slot {slot} out of range: the layer has no shared experts"),
            }
        };
        let per = inter * h;
        let up = gpu.download_at(w13, idx * 2 * per, 2 * per, "expert weights")?;
        let down = gpu.download_at(w2, idx * per, per, "expert weights")?;
        // Tens of millions of values per full-size expert: convert on every core.
        use rayon::prelude::*;
        let widen =
            |bits: &[u16]| -> Vec<f32> { bits.par_iter().map(|&b| bf16_value(b)).collect() };
        Ok(ExpertWeights {
            hidden: h,
            intermediate: inter,
            gate: widen(&up[..per]),
            up: widen(&up[per..]),
            down: widen(&down),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn init_mlps(
    gpu: &Gpu,
    w13: DevPtr<u16>,
    w2: DevPtr<u16>,
    slot0: usize,
    n: usize,
    inter: usize,
    h: usize,
    seed: u64,
) -> Result<()> {
    gpu.launch(InitMlpArgs {
        w13,
        w2,
        slot0: slot0 as u64,
        n_slots: n as u64,
        inter: inter as u64,
        hidden: h as u64,
        seed,
        amp_in: amplitude(h),
        amp_down: amplitude(inter),
    })
}

fn copy_into(
    gpu: &Gpu,
    host: &[u16],
    dst: &mut CudaSlice<u16>,
    at: usize,
    what: &str,
) -> Result<()> {
    let mut view = dst.slice_mut(at..at + host.len());
    gpu.stream
        .memcpy_htod(host, &mut view)
        .map_err(super::super::gpu::cuda_err(&format!("uploading {what}")))
}

fn upload_mlp(
    gpu: &Gpu,
    w: &ExpertWeights,
    w13: &mut CudaSlice<u16>,
    w2: &mut CudaSlice<u16>,
    idx: usize,
    inter: usize,
    h: usize,
) -> Result<()> {
    let per = inter * h;
    ensure!(
        w.gate.len() == per && w.up.len() == per && w.down.len() == per,
        "expert matrices are not {inter} × {h}"
    );
    let up: Vec<u16> = w.gate.iter().chain(&w.up).map(|&v| bf16_bits(v)).collect();
    let down: Vec<u16> = w.down.iter().map(|&v| bf16_bits(v)).collect();
    copy_into(gpu, &up, w13, idx * 2 * per, "expert weights")?;
    copy_into(gpu, &down, w2, idx * per, "expert weights")?;
    gpu.sync("uploading expert weights")
}

/// The weight source the engine's f64 reference reads: experts come back from the device (fast
/// and exactly what the kernels used) where the device generated them.
pub struct DeviceWeights {
    pub(super) source: Box<dyn WeightSource>,
    pub(super) gpu: Arc<Gpu>,
    pub(super) layer: Arc<DeviceLayer>,
}

impl WeightSource for DeviceWeights {
    fn config(&self) -> &MoeConfig {
        self.source.config()
    }
    fn router_gate(&self) -> Result<Vec<f32>> {
        self.source.router_gate()
    }
    fn router_bias(&self) -> Result<Option<Vec<f32>>> {
        self.source.router_bias()
    }
    fn logit_offset(&self) -> Result<Vec<f32>> {
        self.source.logit_offset()
    }
    fn expert(&self, e: usize) -> Result<ExpertWeights> {
        ensure!(
            e < self.config().n_routed_experts,
            "expert {e} out of range"
        );
        if self.layer.generated {
            self.layer.mlp_from_device(&self.gpu, e)
        } else {
            self.source.expert(e)
        }
    }
    fn shared_slot(&self, j: usize) -> Result<ExpertWeights> {
        ensure!(
            j < self.config().n_shared_experts,
            "shared slot {j} out of range"
        );
        if self.layer.generated {
            self.layer
                .mlp_from_device(&self.gpu, self.config().n_routed_experts + j)
        } else {
            self.source.shared_slot(j)
        }
    }
    fn shared_gate(&self) -> Result<Option<Vec<f32>>> {
        self.source.shared_gate()
    }
    fn expert_fp8(&self, e: usize) -> Result<Option<crate::engine::weights::fp8::Fp8Mlp>> {
        self.source.expert_fp8(e)
    }
    fn shared_slot_fp8(&self, j: usize) -> Result<Option<crate::engine::weights::fp8::Fp8Mlp>> {
        self.source.shared_slot_fp8(j)
    }
    fn describe(&self) -> String {
        self.source.describe()
    }
    fn synthetic(&self) -> Option<&crate::engine::weights::synthetic::SyntheticWeights> {
        self.source.synthetic()
    }
}
