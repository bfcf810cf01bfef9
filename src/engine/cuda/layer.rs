//! The layer on the device: weights (generated there for synthetic sources, uploaded otherwise),
//! the per-step workspace, and `CudaBackend`, which runs each path's kernels as the CPU backend
//! runs its stages (src/engine/cpu/mod.rs is the reference).

use super::gpu::{ptr, Arg, Gpu, Timer};
use super::kernels::{DevPtr, InitHiddenArgs, InitMlpArgs, InitUniformArgs, ToBf16Args};
use super::router::{self, RouterIo, RouterShape, UnfusedBufs};
use crate::engine::config::MoeConfig;
use crate::engine::paths::{PathSpec, RouterImpl, SharedMode};
use crate::engine::step::{KernelTiming, OutputStats, Stage};
use crate::engine::weights::synthetic::{amplitude, tensor_id};
use crate::engine::weights::{ExpertWeights, WeightSource};
use crate::engine::{Backend, BackendInfo, BackendKind, BackendStep, PathRun, StepInput};
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// Rows per GEMM tile (kernels/moe.cu GM_BM) and columns (GM_BN).
const GEMM_BM: usize = 64;
const GEMM_BN: usize = 128;
/// Hidden and intermediate sizes must be multiples of this (GEMM K tiles, 16-byte loads).
pub const SIZE_MULTIPLE: usize = 64;
/// Blocks of the output-statistics reduction.
const STATS_BLOCKS: usize = 512;

fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
fn bf16_value(b: u16) -> f32 {
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
        let offset = gpu.upload(&source.logit_offset()?, "logit offset")?;
        let shared_gate_w = match source.shared_gate()? {
            Some(g) => Some(gpu.upload(&g, "shared expert gate")?),
            None => None,
        };
        let mut gate_w = gpu.alloc::<u16>(e * h, "router gate")?;
        let mut w13 = gpu.alloc::<u16>(e * 2 * i * h, "expert gate/up weights")?;
        let mut w2 = gpu.alloc::<u16>(e * h * i, "expert down weights")?;
        let (mut sw13, mut sw2) = if s > 0 {
            (
                Some(gpu.alloc::<u16>(s * 2 * is * h, "shared gate/up weights")?),
                Some(gpu.alloc::<u16>(s * h * is, "shared down weights")?),
            )
        } else {
            (None, None)
        };
        let generated = source.synthetic().is_some();
        if let Some(syn) = source.synthetic() {
            let seed = syn.seed;
            let n = (e * h) as u64;
            gpu.launch(
                gpu.stride(n as usize, 256),
                InitUniformArgs {
                    out: gpu.ptr(&gate_w),
                    n,
                    seed,
                    tensor: tensor_id::ROUTER_GATE,
                    amp: amplitude(h),
                },
            )?;
            init_mlps(gpu, gpu.ptr(&w13), gpu.ptr(&w2), 0, e, i, h, seed)?;
            if let (Some(a), Some(b)) = (&sw13, &sw2) {
                init_mlps(gpu, gpu.ptr(a), gpu.ptr(b), e, s, is, h, seed)?;
            }
            gpu.sync("initializing the weights on the device")?;
        } else {
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
            copy_into(gpu, &gate, &mut gate_w, 0, "router gate")?;
            for x in 0..e {
                let w = source.expert(x)?;
                upload_mlp(gpu, &w, &mut w13, &mut w2, x, i, h)
                    .with_context(|| format!("expert {x}"))?;
            }
            if let (Some(a), Some(b)) = (sw13.as_mut(), sw2.as_mut()) {
                for j in 0..s {
                    let w = source.shared_slot(j)?;
                    upload_mlp(gpu, &w, a, b, j, is, h)
                        .with_context(|| format!("shared slot {j}"))?;
                }
            }
        }
        Ok(DeviceLayer {
            cfg,
            gate_w,
            bias,
            offset,
            shared_gate_w,
            w13,
            w2,
            sw13,
            sw2,
            generated,
        })
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

/// Sums `splits` partial [rows × n] products into `out`, adding the per-column `bias` (0: none).
fn splitk_reduce(
    gpu: &Gpu,
    parts: u64,
    splits: usize,
    rows: usize,
    n: usize,
    bias: u64,
    out: u64,
) -> Result<()> {
    gpu.launch_raw(
        "splitk_reduce",
        gpu.stride_grid(rows * n, 256),
        256,
        0,
        &[
            Arg::Ptr(parts),
            Arg::I32(splits as i32),
            Arg::U64((rows * n) as u64),
            Arg::I32(n as i32),
            Arg::Ptr(bias),
            Arg::Ptr(out),
        ],
    )
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
    let total = n * 3 * inter * h;
    gpu.launch(
        gpu.stride(total, 256),
        InitMlpArgs {
            w13,
            w2,
            slot0: slot0 as u64,
            n_slots: n as u64,
            inter: inter as u64,
            hidden: h as u64,
            seed,
            amp_in: amplitude(h),
            amp_down: amplitude(inter),
        },
    )
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
        .map_err(super::gpu::cuda_err(&format!("uploading {what}")))
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
    source: Box<dyn WeightSource>,
    gpu: Arc<Gpu>,
    layer: Arc<DeviceLayer>,
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
    fn describe(&self) -> String {
        self.source.describe()
    }
    fn synthetic(&self) -> Option<&crate::engine::weights::synthetic::SyntheticWeights> {
        self.source.synthetic()
    }
}

/// Device buffers of one step, sized for `t` tokens and `spt` slots per token at most.
struct Workspace {
    t: usize,
    spt: usize,
    k: usize,
    x: CudaSlice<u16>,
    x_f32: Option<CudaSlice<f32>>,
    gates: CudaSlice<f32>,
    sep: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    /// K-split partials of the gate GEMM [splits × T × E].
    gate_parts: CudaSlice<f32>,
    gate_splits: usize,
    /// K splits of the expert GEMMs (up, down) per slots-per-token, and their partials.
    up_splits: Vec<usize>,
    down_splits: Vec<usize>,
    /// K splits of the separate shared MLP's GEMMs (up, down).
    shared_splits: (usize, usize),
    expert_parts: CudaSlice<f32>,
    unfused: UnfusedBufs,
    ids: CudaSlice<u32>,
    weights: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    tiles: CudaSlice<i32>,
    cursor: CudaSlice<i32>,
    order: CudaSlice<i32>,
    position: CudaSlice<i32>,
    h1: CudaSlice<f32>,
    act: CudaSlice<u16>,
    eo: CudaSlice<f32>,
    sh1: CudaSlice<f32>,
    sact: CudaSlice<u16>,
    so: CudaSlice<f32>,
    /// Dense offsets/tiles of the gate GEMM ([0, t], [0, tiles]) and of the separate shared MLP.
    dense_off: CudaSlice<i32>,
    dense_tiles: CudaSlice<i32>,
    shared_off: CudaSlice<i32>,
    shared_tiles: CudaSlice<i32>,
    y: CudaSlice<f32>,
    stats_sq: CudaSlice<f64>,
    stats_max: CudaSlice<f32>,
    stats_bad: CudaSlice<u64>,
}

impl Workspace {
    fn new(gpu: &Gpu, cfg: &MoeConfig, t: usize, spt: usize, k: usize) -> Result<Workspace> {
        let gate_splits = gate_splits(gpu.sms, t, cfg.n_routed_experts, cfg.hidden_size);
        let (h0, i0, slots0) = (
            cfg.hidden_size,
            cfg.moe_intermediate_size,
            cfg.total_slots(),
        );
        let up_splits: Vec<usize> = (0..=spt)
            .map(|p| expert_splits(gpu.sms, t * p, slots0, 2 * i0, h0))
            .collect();
        let down_splits: Vec<usize> = (0..=spt)
            .map(|p| expert_splits(gpu.sms, t * p, slots0, h0, i0))
            .collect();
        let (s0, is0) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        let shared_splits = (
            expert_splits(gpu.sms, s0 * t, s0, 2 * is0, h0),
            expert_splits(gpu.sms, s0 * t, s0, h0, is0),
        );
        let shared_parts = [(shared_splits.0, 2 * is0), (shared_splits.1, h0)]
            .iter()
            .map(|&(sp, n)| if sp > 1 { sp * s0 * t * n } else { 0 })
            .max()
            .unwrap_or(0);
        let parts = (0..=spt)
            .map(|p| {
                let up = if up_splits[p] > 1 {
                    up_splits[p] * t * p * 2 * i0
                } else {
                    0
                };
                let down = if down_splits[p] > 1 {
                    down_splits[p] * t * p * h0
                } else {
                    0
                };
                up.max(down)
            })
            .max()
            .unwrap_or(0);
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        let (s, is) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        let a = t * spt;
        let slots = cfg.total_slots();
        let tiles = t.div_ceil(GEMM_BM) as i32;
        let mut shared_off = Vec::with_capacity(s + 1);
        let mut shared_tiles = Vec::with_capacity(s + 1);
        for j in 0..=s {
            shared_off.push((j * t) as i32);
            shared_tiles.push(j as i32 * tiles);
        }
        Ok(Workspace {
            t,
            spt,
            k,
            x: gpu.alloc(t * h, "hidden states")?,
            x_f32: None,
            gates: gpu.alloc(t, "shared gates")?,
            sep: gpu.alloc(t, "separate shared weights")?,
            logits: gpu.alloc(t * e, "router logits")?,
            gate_parts: gpu.alloc(
                if gate_splits > 1 {
                    gate_splits * t * e
                } else {
                    0
                },
                "gate GEMM partials",
            )?,
            gate_splits,
            expert_parts: gpu.alloc(parts.max(shared_parts), "expert GEMM partials")?,
            shared_splits,
            up_splits,
            down_splits,
            unfused: UnfusedBufs::new(gpu, t, e, cfg.n_group, k)?,
            ids: gpu.alloc(a, "slot ids")?,
            weights: gpu.alloc(a, "slot weights")?,
            counts: gpu.alloc(slots, "slot counts")?,
            offsets: gpu.alloc(slots + 1, "slot offsets")?,
            tiles: gpu.alloc(slots + 1, "tile offsets")?,
            cursor: gpu.alloc(slots, "slot cursors")?,
            order: gpu.alloc(a, "slot order")?,
            position: gpu.alloc(a, "slot positions")?,
            h1: gpu.alloc(a * 2 * i, "expert gate/up outputs")?,
            act: gpu.alloc(a * i, "expert activations")?,
            eo: gpu.alloc(a * h, "expert outputs")?,
            sh1: gpu.alloc(s * t * 2 * is, "shared gate/up outputs")?,
            sact: gpu.alloc(s * t * is, "shared activations")?,
            so: gpu.alloc(s * t * h, "shared outputs")?,
            dense_off: gpu.upload(&[0, t as i32], "gate GEMM offsets")?,
            dense_tiles: gpu.upload(&[0, tiles], "gate GEMM tiles")?,
            shared_off: gpu.upload(&shared_off, "shared MLP offsets")?,
            shared_tiles: gpu.upload(&shared_tiles, "shared MLP tiles")?,
            y: gpu.alloc(t * h, "layer output")?,
            stats_sq: gpu.alloc(STATS_BLOCKS, "output statistics")?,
            stats_max: gpu.alloc(STATS_BLOCKS, "output statistics")?,
            stats_bad: gpu.alloc(STATS_BLOCKS, "output statistics")?,
        })
    }
}

/// One grouped-GEMM launch (kernels/moe.cu `grouped_gemm_bf16`).
struct Gemm {
    a: u64,
    a_mode: i32,
    a_map: u64,
    a_div: i32,
    b0: u64,
    b1: u64,
    n_first: i32,
    b_stride: i64,
    c: u64,
    bias: u64,
    offsets: u64,
    tiles: u64,
    groups: usize,
    n: usize,
    k: usize,
    /// Upper bound of the M tiles: rows / 64 + groups.
    max_tiles: usize,
    /// K splits (partials at c + z · c_split, summed by splitk_reduce) or 1.
    k_splits: usize,
    c_split: usize,
}

/// K splits of a GEMM with `tiles` M tiles, N columns and K depth: where the output has few
/// tiles, enough splits for `waves` full waves of the device (two blocks per SM), so an uneven
/// last wave costs little; each split a whole number of 32-wide K steps.
fn k_splits(sms: u32, tiles: usize, n: usize, k: usize, waves: usize) -> usize {
    let blocks = tiles * n.div_ceil(GEMM_BN);
    let want = (waves * 2 * sms as usize).div_ceil(blocks.max(1)).max(1);
    let steps = k / 32;
    (1..=want.min(steps).min(64))
        .rev()
        .find(|d| steps.is_multiple_of(*d))
        .unwrap_or(1)
}

/// K splits of the gate GEMM ([T × E] has few tiles at small T).
fn gate_splits(sms: u32, t: usize, e: usize, h: usize) -> usize {
    k_splits(sms, t.div_ceil(GEMM_BM), e, h, 1)
}

/// K splits of the expert GEMMs (up: N = 2I, K = H; down: N = H, K = I) for `a` assignments:
/// at small batches each active expert is one M tile, and an uneven last wave idles most of the
/// device while the weights stream.
fn expert_splits(sms: u32, a: usize, slots: usize, n: usize, k: usize) -> usize {
    let tiles = a.min(a.div_ceil(GEMM_BM) + slots);
    if tiles * n.div_ceil(GEMM_BN) >= 8 * sms as usize {
        return 1;
    }
    k_splits(sms, tiles, n, k, 4)
}

fn gemm(gpu: &Gpu, g: &Gemm) -> Result<()> {
    gpu.launch_raw3(
        "grouped_gemm_bf16",
        (
            g.max_tiles as u32,
            g.n.div_ceil(GEMM_BN) as u32,
            g.k_splits as u32,
        ),
        256,
        0,
        &[
            Arg::Ptr(g.a),
            Arg::I32(g.a_mode),
            Arg::Ptr(g.a_map),
            Arg::I32(g.a_div),
            Arg::Ptr(g.b0),
            Arg::Ptr(g.b1),
            Arg::I32(g.n_first),
            Arg::U64(g.b_stride as u64),
            Arg::Ptr(g.c),
            Arg::Ptr(g.bias),
            Arg::Ptr(g.offsets),
            Arg::Ptr(g.tiles),
            Arg::I32(g.groups as i32),
            Arg::I32(g.n as i32),
            Arg::I32(g.k as i32),
            Arg::I32(g.k_splits as i32),
            Arg::U64(g.c_split as u64),
        ],
    )
}

/// What one path does, derived from its spec and the contract.
#[derive(Clone, Copy, Debug)]
struct Plan {
    router: RouterImpl,
    shape: RouterShape,
    out_scale: f64,
    separate: bool,
    separate_weight: f64,
}

impl Plan {
    fn new(cfg: &MoeConfig, spec: &PathSpec) -> Result<Plan> {
        let has_shared = cfg.n_shared_experts > 0;
        let contract = spec.contract(cfg.routed_scaling_factor, has_shared);
        let k = spec.routed_per_token(cfg.num_experts_per_tok, cfg.n_shared_experts);
        let s = spec.shared_slots_per_token(cfg.n_shared_experts);
        if s > 0 {
            ensure!(
                cfg.shared_fusable(),
                "the shared experts of {} cannot be fused as slots: shared intermediate {} is not {} × the routed experts' {}",
                cfg.name,
                cfg.shared_intermediate_size,
                cfg.n_shared_experts,
                cfg.moe_intermediate_size
            );
        }
        let shape = RouterShape::new(
            cfg,
            k,
            s,
            contract.routed_scale,
            contract.shared_slot_weight,
        )?;
        Ok(Plan {
            router: spec.router,
            shape,
            out_scale: contract.out_scale,
            separate: spec.shared == SharedMode::Separate
                && contract.separate_shared_weight != 0.0
                && has_shared,
            separate_weight: contract.separate_shared_weight,
        })
    }
}

/// The CUDA backend.
pub struct CudaBackend {
    gpu: Arc<Gpu>,
    cfg: MoeConfig,
    layer: Arc<DeviceLayer>,
    weights: DeviceWeights,
    ws: Option<Workspace>,
    /// Fill outputs with NaN / invalid ids before each path (`check`), so unwritten ones show.
    pub poison: bool,
}

impl CudaBackend {
    pub fn new(gpu: Arc<Gpu>, source: Box<dyn WeightSource>) -> Result<CudaBackend> {
        let layer = Arc::new(DeviceLayer::new(&gpu, source.as_ref())?);
        let cfg = layer.cfg.clone();
        Ok(CudaBackend {
            weights: DeviceWeights {
                source,
                gpu: gpu.clone(),
                layer: layer.clone(),
            },
            gpu,
            cfg,
            layer,
            ws: None,
            poison: false,
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn layer(&self) -> &DeviceLayer {
        &self.layer
    }

    fn workspace(&mut self, t: usize, spt: usize, k: usize) -> Result<()> {
        let fits = self
            .ws
            .as_ref()
            .is_some_and(|w| w.t == t && w.spt >= spt && w.k >= k);
        if !fits {
            self.ws = None; // free first: the old and new buffers may not fit together
            self.ws = Some(Workspace::new(&self.gpu, &self.cfg, t, spt, k)?);
        }
        Ok(())
    }

    /// Hidden states into ws.x (bf16), shared gates into ws.gates.
    fn prepare_inputs(&mut self, input: &StepInput) -> Result<Vec<f32>> {
        let (t, h) = (input.tokens, self.cfg.hidden_size);
        let gpu = self.gpu.clone();
        let ws = self.ws.as_mut().context("workspace missing")?;
        match &input.hidden {
            Some(states) => {
                ensure!(
                    states.len() == t * h,
                    "captured hidden states hold {} values, expected {} tokens × {}",
                    states.len(),
                    t,
                    h
                );
                if ws.x_f32.as_ref().is_none_or(|b| b.len() < t * h) {
                    ws.x_f32 = Some(gpu.alloc(t * h, "captured hidden states")?);
                }
                let buf = ws.x_f32.as_mut().context("hidden buffer missing")?;
                gpu.stream
                    .memcpy_htod(states.as_slice(), buf)
                    .map_err(super::gpu::cuda_err("uploading the hidden states"))?;
                gpu.launch(
                    gpu.stride(t * h, 256),
                    ToBf16Args {
                        input: gpu.ptr(buf),
                        out: gpu.ptr(&ws.x),
                        n: (t * h) as u64,
                    },
                )?;
            }
            None => {
                gpu.launch(
                    gpu.stride(t * h, 256),
                    InitHiddenArgs {
                        out: gpu.ptr(&ws.x),
                        n: (t * h) as u64,
                        seed: input.seed,
                        tensor: tensor_id::HIDDEN_BASE + input.step,
                    },
                )?;
            }
        }
        if self.cfg.n_shared_experts == 0 {
            return Ok(Vec::new());
        }
        match &self.layer.shared_gate_w {
            Some(wg) => gpu.launch_raw(
                "shared_gate",
                ((t * 32).div_ceil(256) as u32, 1),
                256,
                0,
                &[
                    Arg::Ptr(ptr(&gpu, &ws.x)),
                    Arg::Ptr(ptr(&gpu, wg)),
                    Arg::Ptr(ptr(&gpu, &ws.gates)),
                    Arg::I32(t as i32),
                    Arg::I32(h as i32),
                ],
            )?,
            None => gpu.fill(gpu.ptr(&ws.gates), t, 1.0f32.to_bits())?,
        }
        gpu.download(&ws.gates, t, "shared gates")
    }

    /// Launches one path's kernels for `t` tokens.
    fn launch_path(&self, plan: &Plan, t: usize, timer: &mut Timer) -> Result<()> {
        let gpu = &*self.gpu;
        let ws = self.ws.as_ref().context("workspace missing")?;
        let l = &*self.layer;
        let cfg = &self.cfg;
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        let (s_all, is) = (cfg.n_shared_experts, cfg.shared_slot_intermediate());
        let spt = plan.shape.spt();
        let a = t * spt;
        let slots = cfg.total_slots();
        let p = |b: &CudaSlice<f32>| ptr(gpu, b);

        timer.start(gpu)?;
        let splits = ws.gate_splits;
        gemm(
            gpu,
            &Gemm {
                a: ptr(gpu, &ws.x),
                a_mode: 0,
                a_map: 0,
                a_div: 1,
                b0: ptr(gpu, &l.gate_w),
                b1: ptr(gpu, &l.gate_w),
                n_first: 1,
                b_stride: 0,
                c: if splits > 1 {
                    p(&ws.gate_parts)
                } else {
                    p(&ws.logits)
                },
                bias: if splits > 1 { 0 } else { p(&l.offset) },
                offsets: ptr(gpu, &ws.dense_off),
                tiles: ptr(gpu, &ws.dense_tiles),
                groups: 1,
                n: e,
                k: h,
                max_tiles: t.div_ceil(GEMM_BM),
                k_splits: splits,
                c_split: t * e,
            },
        )?;
        if splits > 1 {
            splitk_reduce(
                gpu,
                p(&ws.gate_parts),
                splits,
                t,
                e,
                p(&l.offset),
                p(&ws.logits),
            )?;
        }
        timer.stop(
            gpu,
            Stage::GateGemm,
            Some((2 * t * h + 2 * e * h + 4 * t * e) as u64),
        )?;

        let io = RouterIo {
            logits: p(&ws.logits),
            logits_bf16: false,
            bias: l.bias.as_ref().map(p).unwrap_or(0),
            gate: if s_all > 0 { p(&ws.gates) } else { 0 },
            ids: ptr(gpu, &ws.ids),
            weights: p(&ws.weights),
            probs: 0,
        };
        match plan.router {
            RouterImpl::Fused => {
                timer.start(gpu)?;
                router::fused(gpu, &plan.shape, &io, t)?;
                timer.stop(gpu, Stage::RouterFused, Some((4 * t * e + 8 * a) as u64))?;
            }
            RouterImpl::Unfused => router::unfused(gpu, &plan.shape, &io, t, &ws.unfused, timer)?,
        }

        timer.start(gpu)?;
        gpu.fill(gpu.ptr(&ws.counts), slots, 0)?;
        let per_item = ((a.div_ceil(256)) as u32, 1);
        gpu.launch_raw(
            "align_count",
            per_item,
            256,
            0,
            &[
                Arg::Ptr(ptr(gpu, &ws.ids)),
                Arg::U64(a as u64),
                Arg::Ptr(ptr(gpu, &ws.counts)),
            ],
        )?;
        gpu.launch_raw(
            "align_scan",
            (1, 1),
            1024,
            0,
            &[
                Arg::Ptr(ptr(gpu, &ws.counts)),
                Arg::I32(slots as i32),
                Arg::I32(GEMM_BM as i32),
                Arg::Ptr(ptr(gpu, &ws.offsets)),
                Arg::Ptr(ptr(gpu, &ws.tiles)),
                Arg::Ptr(ptr(gpu, &ws.cursor)),
            ],
        )?;
        gpu.launch_raw(
            "align_fill",
            per_item,
            256,
            0,
            &[
                Arg::Ptr(ptr(gpu, &ws.ids)),
                Arg::U64(a as u64),
                Arg::Ptr(ptr(gpu, &ws.cursor)),
                Arg::Ptr(ptr(gpu, &ws.order)),
                Arg::Ptr(ptr(gpu, &ws.position)),
            ],
        )?;
        timer.stop(gpu, Stage::MoeAlign, Some((16 * a) as u64))?;

        let shared13 = l
            .sw13
            .as_ref()
            .map(|b| ptr(gpu, b))
            .unwrap_or(ptr(gpu, &l.w13));
        let shared2 = l
            .sw2
            .as_ref()
            .map(|b| ptr(gpu, b))
            .unwrap_or(ptr(gpu, &l.w2));
        let grouped = |a_ptr: u64,
                       a_mode: i32,
                       b0: u64,
                       b1: u64,
                       stride: usize,
                       c: u64,
                       n: usize,
                       k: usize| Gemm {
            a: a_ptr,
            a_mode,
            a_map: ptr(gpu, &ws.order),
            a_div: spt as i32,
            b0,
            b1,
            n_first: e as i32,
            b_stride: stride as i64,
            c,
            bias: 0,
            offsets: ptr(gpu, &ws.offsets),
            tiles: ptr(gpu, &ws.tiles),
            groups: slots,
            n,
            k,
            max_tiles: a.div_ceil(GEMM_BM) + slots,
            k_splits: 1,
            c_split: 0,
        };
        // K-split where the batch is small: partials, then a fixed-order sum (deterministic).
        let split = |mut g: Gemm, splits: usize, rows: usize| -> Result<()> {
            if splits <= 1 {
                return gemm(gpu, &g);
            }
            let (n, out) = (g.n, g.c);
            g.c = p(&ws.expert_parts);
            g.k_splits = splits;
            g.c_split = rows * n;
            gemm(gpu, &g)?;
            splitk_reduce(gpu, p(&ws.expert_parts), splits, rows, n, 0, out)
        };
        // Weight bytes are filled in once the step's active slots are known (see `step`).
        timer.start(gpu)?;
        let up = grouped(
            ptr(gpu, &ws.x),
            1,
            ptr(gpu, &l.w13),
            shared13,
            2 * i * h,
            p(&ws.h1),
            2 * i,
            h,
        );
        split(up, ws.up_splits[spt], a)?;
        timer.stop(gpu, Stage::ExpertGemmUp, None)?;
        timer.start(gpu)?;
        silu(gpu, p(&ws.h1), ptr(gpu, &ws.act), a, i)?;
        timer.stop(gpu, Stage::SiluMul, Some((8 * a * i + 2 * a * i) as u64))?;
        timer.start(gpu)?;
        let down = grouped(
            ptr(gpu, &ws.act),
            0,
            ptr(gpu, &l.w2),
            shared2,
            h * i,
            p(&ws.eo),
            h,
            i,
        );
        split(down, ws.down_splits[spt], a)?;
        timer.stop(gpu, Stage::ExpertGemmDown, None)?;

        if plan.separate {
            let (sw13, sw2) = match (&l.sw13, &l.sw2) {
                (Some(a), Some(b)) => (ptr(gpu, a), ptr(gpu, b)),
                _ => bail!("the separate shared MLP has no weights"),
            };
            let rows = s_all * t;
            let dense =
                |a_ptr: u64, a_mode: i32, b: u64, stride: usize, c: u64, n: usize, k: usize| Gemm {
                    a: a_ptr,
                    a_mode,
                    a_map: 0,
                    a_div: 1,
                    b0: b,
                    b1: b,
                    n_first: s_all as i32,
                    b_stride: stride as i64,
                    c,
                    bias: 0,
                    offsets: ptr(gpu, &ws.shared_off),
                    tiles: ptr(gpu, &ws.shared_tiles),
                    groups: s_all,
                    n,
                    k,
                    max_tiles: s_all * t.div_ceil(GEMM_BM),
                    k_splits: 1,
                    c_split: 0,
                };
            let wbytes = (2 * s_all * 3 * is * h) as u64;
            timer.start(gpu)?;
            let up = dense(ptr(gpu, &ws.x), 2, sw13, 2 * is * h, p(&ws.sh1), 2 * is, h);
            split(up, ws.shared_splits.0, rows)?;
            silu(gpu, p(&ws.sh1), ptr(gpu, &ws.sact), rows, is)?;
            let down = dense(ptr(gpu, &ws.sact), 0, sw2, h * is, p(&ws.so), h, is);
            split(down, ws.shared_splits.1, rows)?;
            timer.stop(
                gpu,
                Stage::SharedMlp,
                Some(wbytes + (2 * t * h + 4 * rows * h) as u64),
            )?;
        }

        timer.start(gpu)?;
        gpu.launch_raw(
            "combine",
            (t as u32, h.div_ceil(256) as u32),
            256,
            0,
            &[
                Arg::Ptr(p(&ws.eo)),
                Arg::Ptr(ptr(gpu, &ws.position)),
                Arg::Ptr(p(&ws.weights)),
                Arg::I32(spt as i32),
                Arg::F32(plan.out_scale as f32),
                Arg::Ptr(if plan.separate { p(&ws.so) } else { 0 }),
                Arg::Ptr(if plan.separate { p(&ws.sep) } else { 0 }),
                Arg::I32(s_all as i32),
                Arg::I32(t as i32),
                Arg::I32(h as i32),
                Arg::Ptr(p(&ws.y)),
            ],
        )?;
        let shared_read = if plan.separate { 4 * s_all * t * h } else { 0 };
        timer.stop(
            gpu,
            Stage::Combine,
            Some((4 * a * h + 8 * a + shared_read + 4 * t * h) as u64),
        )?;
        Ok(())
    }

    /// Output statistics over all of y, reduced on the device.
    fn output_stats(&self, t: usize) -> Result<OutputStats> {
        let gpu = &*self.gpu;
        let ws = self.ws.as_ref().context("workspace missing")?;
        let n = t * self.cfg.hidden_size;
        gpu.launch_raw(
            "output_stats",
            (STATS_BLOCKS as u32, 1),
            256,
            0,
            &[
                Arg::Ptr(ptr(gpu, &ws.y)),
                Arg::U64(n as u64),
                Arg::Ptr(ptr(gpu, &ws.stats_sq)),
                Arg::Ptr(ptr(gpu, &ws.stats_max)),
                Arg::Ptr(ptr(gpu, &ws.stats_bad)),
            ],
        )?;
        let sq: f64 = gpu
            .download(&ws.stats_sq, STATS_BLOCKS, "output statistics")?
            .iter()
            .sum();
        let max = gpu
            .download(&ws.stats_max, STATS_BLOCKS, "output statistics")?
            .iter()
            .fold(0.0f32, |m, &v| m.max(v));
        let bad: u64 = gpu
            .download(&ws.stats_bad, STATS_BLOCKS, "output statistics")?
            .iter()
            .sum();
        Ok(OutputStats {
            rms: if n == 0 { 0.0 } else { (sq / n as f64).sqrt() },
            max_abs: max as f64,
            nonfinite: bad,
        })
    }

    /// Poisons every output a path writes: unwritten elements then show in the checks.
    fn poison_outputs(&self, t: usize, spt: usize) -> Result<()> {
        let gpu = &*self.gpu;
        let ws = self.ws.as_ref().context("workspace missing")?;
        let nan = f32::NAN.to_bits();
        let e = self.cfg.n_routed_experts;
        gpu.fill(gpu.ptr(&ws.logits), t * e, nan)?;
        gpu.fill(gpu.ptr(&ws.ids), t * spt, u32::MAX)?;
        gpu.fill(gpu.ptr(&ws.weights), t * spt, nan)?;
        gpu.fill(gpu.ptr(&ws.y), t * self.cfg.hidden_size, nan)
    }

    /// Whole-output download for checks: [t × H].
    pub fn download_output(&self, t: usize) -> Result<Vec<f32>> {
        let ws = self.ws.as_ref().context("no step has run")?;
        self.gpu
            .download(&ws.y, t * self.cfg.hidden_size, "layer output")
    }
}

fn silu(gpu: &Gpu, h1: u64, act: u64, rows: usize, inter: usize) -> Result<()> {
    gpu.launch_raw(
        "silu_mul",
        gpu.stride_grid(rows * inter, 256),
        256,
        0,
        &[
            Arg::Ptr(h1),
            Arg::Ptr(act),
            Arg::U64(rows as u64),
            Arg::I32(inter as i32),
        ],
    )
}

impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Cuda,
            device: self.gpu.describe(),
        }
    }

    fn weights(&self) -> &dyn WeightSource {
        &self.weights
    }

    fn step(&mut self, input: &StepInput, paths: &[PathSpec]) -> Result<BackendStep> {
        let t = input.tokens;
        ensure!(t >= 1, "a step needs at least one token");
        ensure!(
            t <= i32::MAX as usize / 64,
            "{t} tokens are more than the kernels index"
        );
        let (e, h) = (self.cfg.n_routed_experts, self.cfg.hidden_size);
        let plans = paths
            .iter()
            .map(|p| Plan::new(&self.cfg, p))
            .collect::<Result<Vec<_>>>()?;
        let spt = plans.iter().map(|p| p.shape.spt()).max().unwrap_or(1);
        let k = plans.iter().map(|p| p.shape.k).max().unwrap_or(1);
        self.workspace(t, spt, k)?;
        let gates = self.prepare_inputs(input)?;
        let gpu = self.gpu.clone();

        let mut runs = Vec::with_capacity(plans.len());
        let mut router_logits = Vec::new();
        for (idx, plan) in plans.iter().enumerate() {
            let spt = plan.shape.spt();
            let separate: Vec<f32> =
                if plan.separate {
                    let w: Vec<f32> = (0..t)
                        .map(|tok| {
                            (plan.separate_weight * gates.get(tok).copied().unwrap_or(1.0) as f64)
                                as f32
                        })
                        .collect();
                    let ws = self.ws.as_mut().context("workspace missing")?;
                    gpu.stream.memcpy_htod(w.as_slice(), &mut ws.sep).map_err(
                        super::gpu::cuda_err("uploading the separate shared weights"),
                    )?;
                    w
                } else {
                    Vec::new()
                };
            if self.poison {
                self.poison_outputs(t, spt)?;
            }
            let mut timer = Timer::new(true);
            self.launch_path(plan, t, &mut timer)?;
            let mut timings = timer.finish(&gpu).with_context(|| format!("path {idx}"))?;

            let ws = self.ws.as_ref().context("workspace missing")?;
            if idx == 0 {
                router_logits = gpu.download(&ws.logits, t * e, "router logits")?;
            }
            let slot_ids = gpu.download(&ws.ids, t * spt, "slot ids")?;
            let slot_weights = gpu.download(&ws.weights, t * spt, "slot weights")?;
            let mut sample_outputs = Vec::with_capacity(input.sample_tokens.len() * h);
            for &tok in &input.sample_tokens {
                ensure!(tok < t, "sample token {tok} out of {t}");
                sample_outputs.extend(gpu.download_at(&ws.y, tok * h, h, "sampled outputs")?);
            }
            let output = self.output_stats(t)?;
            fill_weight_bytes(&self.cfg, &slot_ids, &mut timings);

            // Clean mode: the same launches under one event pair.
            let start = gpu.event()?;
            self.launch_path(plan, t, &mut Timer::new(false))?;
            let end = gpu.event()?;
            gpu.sync("the clean path run")?;
            let clean_ms = start
                .elapsed_ms(&end)
                .map_err(super::gpu::cuda_err("reading the clean path time"))?;

            runs.push(PathRun {
                slots_per_token: spt,
                slot_ids,
                slot_weights,
                out_scale: plan.out_scale,
                separate_shared_weight: separate,
                sample_outputs,
                output,
                timings,
                clean_us: Some(clean_ms as f64 * 1e3),
            });
        }
        let ws = self.ws.as_ref().context("workspace missing")?;
        let mut sample_hidden = Vec::with_capacity(input.sample_tokens.len() * h);
        for &tok in &input.sample_tokens {
            let row = gpu.download_at(&ws.x, tok * h, h, "sampled hidden states")?;
            sample_hidden.extend(row.into_iter().map(bf16_value));
        }
        Ok(BackendStep {
            router_logits,
            sample_hidden,
            shared_gate: gates,
            paths: runs,
            numerics: None,
        })
    }
}

/// Fills in the bytes of the expert GEMMs: the active slots' weights, read once, plus activations.
fn fill_weight_bytes(cfg: &MoeConfig, ids: &[u32], timings: &mut [KernelTiming]) {
    let mut seen = vec![false; cfg.total_slots()];
    for &id in ids {
        if let Some(s) = seen.get_mut(id as usize) {
            *s = true;
        }
    }
    let active = seen.iter().filter(|&&s| s).count();
    let (h, i) = (cfg.hidden_size, cfg.moe_intermediate_size);
    let a = ids.len();
    for t in timings.iter_mut() {
        t.bytes = match t.stage {
            Stage::ExpertGemmUp => {
                Some((active * 2 * i * h * 2 + a * h * 2 + a * 2 * i * 4) as u64)
            }
            Stage::ExpertGemmDown => Some((active * h * i * 2 + a * i * 2 + a * h * 4) as u64),
            _ => t.bytes,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_splits_divide_the_k_steps_and_fill_the_device() {
        for (t, e, h) in [
            (1, 256, 7168),
            (64, 384, 7168),
            (2048, 256, 7168),
            (40000, 8, 4096),
            (1, 8, 64),
        ] {
            let s = gate_splits(132, t, e, h);
            assert!(s >= 1 && (h / 32) % s == 0, "{t} {e} {h}: {s}");
            let blocks = t.div_ceil(GEMM_BM) * e.div_ceil(GEMM_BN);
            if blocks >= 264 {
                assert_eq!(s, 1);
            }
        }
        assert!(gate_splits(132, 1, 256, 7168) > 16);
        // DeepSeek-V3 at T = 1: 9 experts × 32 column tiles would leave a 24-block last wave.
        let s = expert_splits(132, 9, 257, 4096, 7168);
        assert!(s >= 2 && 224 % s == 0, "{s}");
        assert_eq!(expert_splits(132, 4096 * 9, 257, 4096, 7168), 1);
    }

    #[test]
    fn unsupported_shapes_name_the_limit() {
        let mut cfg = MoeConfig::preset("deepseek-v3").unwrap();
        cfg.hidden_size = 7100;
        let err = check_shape(&cfg).unwrap_err().to_string();
        assert!(err.contains("hidden_size") && err.contains("64"), "{err}");
        let mut cfg = MoeConfig::preset("qwen3-next-80b-a3b").unwrap();
        cfg.n_routed_experts = 640;
        let err = check_shape(&cfg).unwrap_err().to_string();
        assert!(err.contains("512"), "{err}");
        let mut cfg = MoeConfig::preset("deepseek-v3").unwrap();
        cfg.num_experts_per_tok = 20;
        cfg.topk_group = 8;
        let err = check_shape(&cfg).unwrap_err().to_string();
        assert!(err.contains("top_k <= 16"), "{err}");
    }
}
