//! `CudaBackend`: the engine's `Backend` on the device. Per step: the workspace, the inputs
//! (hidden states, shared gates), then per path an instrumented run (per-stage events), the
//! readback, and a clean run under one event pair.
//!
//! Longer than most files: the step's sequence (inputs, FP8 weights where a path runs them, the
//! paths, the device reference, the counters) reads in one place, as the CPU backend's does.

use super::super::gpu::{cuda_err, Gpu, Timer};
use super::super::kernels::{DevPtr, InitHiddenArgs, SharedGateArgs, ToBf16Args};
use super::super::reference::{self, DeviceReference, RefWeights};
use super::super::router::RouterShape;
use super::device::{bf16_value, DeviceLayer, DeviceWeights};
use super::finite::Values;
use super::fp8::{Fp8Buffers, Fp8Layer, Fp8Stage};
use super::readback::{self, PathOutputs};
use super::stages::{PathLaunch, Plan};
use super::workspace::Workspace;
use crate::engine::config::MoeConfig;
use crate::engine::cuda::user_kernel::{Conventions, KernelFile, LogitsDtype, UserKernel};
use crate::engine::ep::{GemmSource, GemmTime};
use crate::engine::finite::{FiniteCounts, FiniteStage};
use crate::engine::paths::{PathId, PathSpec, RouterImpl};
use crate::engine::step::FormatErrors;
use crate::engine::trace::RoutedBatch;
use crate::engine::weights::synthetic::tensor_id;
use crate::engine::weights::WeightSource;
use crate::engine::{Backend, BackendInfo, BackendKind, BackendStep, PathRun, StepInput};
use anyhow::{ensure, Context, Result};
use std::sync::Arc;

/// The CUDA backend.
pub struct CudaBackend {
    gpu: Arc<Gpu>,
    cfg: MoeConfig,
    layer: Arc<DeviceLayer>,
    weights: DeviceWeights,
    ws: Option<Workspace>,
    /// The buffers EP straggler timings run in (apart from the step's).
    ep_ws: Option<Workspace>,
    /// Fill outputs with NaN / invalid ids before each path (`check`), so unwritten ones show.
    pub poison: bool,
    /// Compare every token on the device (cuda::reference; what `cuda::open` turns on); false:
    /// the host compares a sample from the downloaded logits and rows (compare::host_numerics).
    pub device_numerics: bool,
    /// Download the [T × E] logits even with device numerics (the engine routes them itself).
    keep_logits: bool,
    reference: Option<DeviceReference>,
    /// Path C's router kernel, where the run has one.
    user: Option<UserKernel>,
    /// This step's shared gates on the host (path C appends shared slots with them).
    step_gates: Vec<f32>,
    /// FP8 expert weights and their buffers, made at the first step of a path that runs them.
    fp8: Option<Fp8Layer>,
    fp8_bufs: Option<Fp8Buffers>,
    /// The device reference on FP8 weights, one FP8 path at a time.
    fp8_reference: Option<DeviceReference>,
}

/// The clean (uninstrumented) timing of each path runs on every CLEAN_EVERY-th step only, so a
/// live step runs each path once; `PathRecord::clean_us` is None on the other steps.
pub const CLEAN_EVERY: u64 = 8;

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
            ep_ws: None,
            user: None,
            step_gates: Vec::new(),
            fp8: None,
            fp8_bufs: None,
            fp8_reference: None,
            poison: false,
            device_numerics: false,
            keep_logits: false,
            reference: None,
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn layer(&self) -> &DeviceLayer {
        &self.layer
    }
    /// The buffers of the last step (None before the first).
    pub fn workspace(&self) -> Option<&Workspace> {
        self.ws.as_ref()
    }

    /// The workspace for `t` tokens, `spt` slots and top-`k`, reallocated where it does not fit.
    fn ensure_workspace(&mut self, t: usize, spt: usize, k: usize) -> Result<&mut Workspace> {
        if !self.ws.as_ref().is_some_and(|w| w.fits(t, spt, k)) {
            self.ws = None; // free first: the old and new buffers may not fit together
            self.ws = Some(Workspace::new(&self.gpu, &self.cfg, t, spt, k)?);
        }
        self.ws.as_mut().context("workspace missing")
    }

    fn ws(&self) -> Result<&Workspace> {
        self.ws.as_ref().context("workspace missing")
    }

    /// Hidden states into the workspace (bf16) and the shared gates, which it returns.
    fn prepare_inputs(&mut self, input: &StepInput) -> Result<Vec<f32>> {
        let (t, h) = (input.tokens, self.cfg.hidden_size);
        let gpu = self.gpu.clone();
        let b = &mut self.ws.as_mut().context("workspace missing")?.inputs;
        match &input.hidden {
            Some(states) => {
                ensure!(
                    states.len() == t * h,
                    "captured hidden states hold {} values, expected {} tokens × {}",
                    states.len(),
                    t,
                    h
                );
                if b.x_f32.as_ref().is_none_or(|x| x.len() < t * h) {
                    b.x_f32 = Some(gpu.alloc(t * h, "captured hidden states")?);
                }
                let buf = b.x_f32.as_mut().context("hidden buffer missing")?;
                gpu.stream
                    .memcpy_htod(states.as_slice(), buf)
                    .map_err(cuda_err("uploading the hidden states"))?;
                gpu.launch(ToBf16Args {
                    input: gpu.ptr(buf),
                    out: gpu.ptr(&b.x),
                    n: (t * h) as u64,
                })?;
            }
            None => gpu.launch(InitHiddenArgs {
                out: gpu.ptr(&b.x),
                n: (t * h) as u64,
                seed: input.seed,
                tensor: tensor_id::HIDDEN_BASE + input.step,
            })?,
        }
        if self.cfg.n_shared_experts == 0 {
            return Ok(Vec::new());
        }
        match &self.layer.shared_gate_w {
            Some(wg) => gpu.launch(SharedGateArgs {
                x: gpu.ptr(&b.x),
                wg: gpu.ptr(wg),
                g: gpu.ptr(&b.gates),
                t: t as i32,
                h: h as i32,
            })?,
            None => gpu.fill(gpu.ptr(&b.gates), t, 1.0f32.to_bits())?,
        }
        gpu.download(&b.gates, t, "shared gates")
    }

    /// Adds path C's kernel (compiled or loaded for this device and layer, reading `logits`);
    /// returns what it declares, for its PathSpec.
    pub fn with_user_kernel(
        mut self,
        file: KernelFile,
        logits: LogitsDtype,
    ) -> Result<(CudaBackend, Conventions)> {
        let k = UserKernel::open(&self.gpu, file, &self.cfg, logits)?;
        let conv = k.conventions;
        self.user = Some(k);
        Ok((self, conv))
    }

    /// The FP8 weights the paths need (made or widened where they are not there yet) and the
    /// FP8 stage's buffers for `t` tokens of `spt` slots. Nothing where no path runs FP8.
    fn ensure_fp8(&mut self, paths: &[PathSpec], t: usize, spt: usize) -> Result<()> {
        let routed = paths.iter().any(|p| p.experts.is_fp8());
        let shared =
            paths.iter().any(|p| p.shared_experts.is_fp8()) && self.cfg.n_shared_experts > 0;
        if !routed && !shared {
            return Ok(());
        }
        if !self.fp8.as_ref().is_some_and(|w| w.covers(routed, shared)) {
            let (r, s) = match &self.fp8 {
                Some(w) => (routed || w.routed.is_some(), shared || w.shared.is_some()),
                None => (routed, shared),
            };
            (self.fp8, self.fp8_bufs) = (None, None); // free first
            let w = Fp8Layer::new(&self.gpu, &self.layer, self.weights.source.as_ref(), r, s)?;
            self.fp8 = Some(w);
        }
        let w = self.fp8.as_ref().context("FP8 weights missing")?;
        if !self.fp8_bufs.as_ref().is_some_and(|b| b.fits(w, t, spt)) {
            self.fp8_bufs = None;
            self.fp8_bufs = Some(Fp8Buffers::new(&self.gpu, &self.cfg, w, t, spt)?);
        }
        Ok(())
    }

    /// The FP8 stage's weights and buffers, where they are made.
    fn fp8_stage(&self) -> Option<Fp8Stage<'_>> {
        match (&self.fp8, &self.fp8_bufs) {
            (Some(layer), Some(bufs)) => Some(Fp8Stage { layer, bufs }),
            _ => None,
        }
    }

    /// Launches one path's kernels for `t` tokens.
    fn launch_path(&self, plan: &Plan, t: usize, routed: bool, timer: &mut Timer) -> Result<()> {
        PathLaunch {
            gpu: &self.gpu,
            cfg: &self.cfg,
            layer: &self.layer,
            ws: self.ws()?,
            plan,
            t,
            routed,
            user: self.user.as_ref(),
            gates: &self.step_gates,
            fp8: self.fp8_stage(),
        }
        .run(timer)
    }

    /// A trace's routing as the path's slots, uploaded where the router would write them.
    fn upload_slots(
        &mut self,
        plan: &Plan,
        spec: &PathSpec,
        batch: &RoutedBatch,
        gates: &[f32],
    ) -> Result<()> {
        ensure!(
            plan.shape.k == batch.k,
            "this path routes {} experts per token (variant {}), the routing trace {}",
            plan.shape.k,
            spec.variant,
            batch.k
        );
        let contract = spec.contract(
            self.cfg.routed_scaling_factor,
            self.cfg.n_shared_experts > 0,
        );
        let s = plan.shape.spt() - plan.shape.k;
        let (ids, weights) = batch.slots(self.cfg.n_routed_experts, &contract, s, gates);
        let gpu = self.gpu.clone();
        let ws = self.ws.as_mut().context("workspace missing")?;
        let mut ids_view = ws.router.ids.slice_mut(..ids.len());
        gpu.stream
            .memcpy_htod(ids.as_slice(), &mut ids_view)
            .map_err(cuda_err("uploading the trace's slot ids"))?;
        let mut w_view = ws.router.weights.slice_mut(..weights.len());
        gpu.stream
            .memcpy_htod(weights.as_slice(), &mut w_view)
            .map_err(cuda_err("uploading the trace's slot weights"))?;
        Ok(())
    }

    /// The separate shared MLP's per-token weights (contract weight × gate), uploaded; empty for
    /// paths that fuse the shared experts or have none.
    fn upload_separate(&mut self, plan: &Plan, gates: &[f32], t: usize) -> Result<Vec<f32>> {
        if !plan.separate {
            return Ok(Vec::new());
        }
        let w: Vec<f32> = (0..t)
            .map(|tok| {
                (plan.separate_weight * gates.get(tok).copied().unwrap_or(1.0) as f64) as f32
            })
            .collect();
        let gpu = self.gpu.clone();
        let ws = self.ws.as_mut().context("workspace missing")?;
        gpu.stream
            .memcpy_htod(w.as_slice(), &mut ws.inputs.sep)
            .map_err(cuda_err("uploading the separate shared weights"))?;
        Ok(w)
    }

    /// Counts the step's hidden states into row 0, as the layer reads them (bf16: a finite f32
    /// too large for bf16 is an infinity, as on the CPU backend).
    fn count_inputs(&self, t: usize) -> Result<()> {
        let (gpu, ws) = (&*self.gpu, self.ws()?);
        let values = Values::Bf16(gpu.ptr(&ws.inputs.x), t * self.cfg.hidden_size);
        ws.finite.count(gpu, 0, FiniteStage::Input, values)
    }

    /// Counts what a path wrote into row `row`: logits and slot weights (router), expert and
    /// separate shared outputs (experts). The output's count comes with its statistics.
    fn count_path(&self, row: usize, plan: &Plan, t: usize, routed: bool) -> Result<()> {
        let (gpu, ws, cfg) = (&*self.gpu, self.ws()?, &self.cfg);
        let (a, h) = (t * plan.shape.spt(), cfg.hidden_size);
        let count = |stage, values| ws.finite.count(gpu, row, stage, values);
        let logits = Values::F32(gpu.ptr(&ws.gate.logits), t * cfg.n_routed_experts);
        // A traced step computes no logits: the buffer holds an earlier step's, or nothing.
        if !routed {
            count(FiniteStage::Router, logits)?;
        }
        count(
            FiniteStage::Router,
            Values::F32(gpu.ptr(&ws.router.weights), a),
        )?;
        count(
            FiniteStage::Experts,
            Values::F32(gpu.ptr(&ws.experts.eo), a * h),
        )?;
        if plan.separate {
            let n = cfg.n_shared_experts * t * h;
            count(
                FiniteStage::Experts,
                Values::F32(gpu.ptr(&ws.shared.out), n),
            )?;
        }
        Ok(())
    }

    /// One path: instrumented run, non-finite counts into counter row `row`, readback, clean run.
    fn run_path(
        &mut self,
        row: usize,
        plan: &Plan,
        input: &StepInput,
        gates: &[f32],
        routed: bool,
    ) -> Result<PathRun> {
        let (t, spt, h) = (input.tokens, plan.shape.spt(), self.cfg.hidden_size);
        let separate = self.upload_separate(plan, gates, t)?;
        let gpu = self.gpu.clone();
        if self.poison {
            readback::poison_outputs(&gpu, self.ws()?, &self.cfg, t, spt)?;
        }
        let mut timer = Timer::new(true);
        self.launch_path(plan, t, routed, &mut timer)?;
        let mut timings = timer.finish(&gpu)?;
        self.count_path(row, plan, t, routed)?;
        let out: PathOutputs =
            readback::path_outputs(&gpu, self.ws()?, h, t, spt, &input.sample_tokens)?;
        readback::fill_weight_bytes(&self.cfg, &out.slot_ids, plan.experts, &mut timings);
        Ok(PathRun {
            slots_per_token: spt,
            slot_ids: out.slot_ids,
            slot_weights: out.slot_weights,
            out_scale: plan.out_scale,
            separate_shared_weight: separate,
            sample_outputs: out.sample_outputs,
            output: out.output,
            timings,
            clean_us: if input.step.is_multiple_of(CLEAN_EVERY) {
                Some(self.clean_us(plan, t, routed)?)
            } else {
                None
            },
            // Filled in from the step's one read of the counters (`Backend::step`).
            finite: FiniteCounts::default(),
        })
    }

    /// The path's launches again without per-stage events, under one event pair (µs).
    fn clean_us(&self, plan: &Plan, t: usize, routed: bool) -> Result<f64> {
        let gpu = &self.gpu;
        let start = gpu.event()?;
        self.launch_path(plan, t, routed, &mut Timer::new(false))?;
        let end = gpu.event()?;
        gpu.sync("the clean path run")?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(cuda_err("reading the clean path time"))?;
        Ok(ms as f64 * 1e3)
    }

    /// The device reference's share of path `idx`: the reference itself after the first path
    /// (whose gate GEMM wrote the logits every path shares), then the path's comparison.
    fn compare_on_device(&mut self, idx: usize, plan: &Plan, step: u64) -> Result<()> {
        let gpu = self.gpu.clone();
        let outputs = self.path_outputs(plan)?;
        let ws = self.ws.as_ref().context("workspace missing")?;
        let r = self
            .reference
            .as_mut()
            .context("device reference missing")?;
        if idx == 0 {
            let (x, logits) = (gpu.ptr(&ws.inputs.x), gpu.ptr(&ws.gate.logits));
            r.run(&gpu, &self.layer, x, logits, RefWeights::Bf16, step)?;
        }
        r.compare_path(&gpu, idx, outputs)
    }

    /// What path `plan` left in the workspace, for a comparison on the device.
    fn path_outputs(&self, plan: &Plan) -> Result<reference::PathOutputs> {
        let (gpu, ws) = (&self.gpu, self.ws()?);
        let shared = self.cfg.n_shared_experts > 0;
        Ok(reference::PathOutputs {
            ids: gpu.ptr(&ws.router.ids),
            weights: gpu.ptr(&ws.router.weights),
            spt: plan.shape.spt(),
            out_scale: plan.out_scale,
            sep: if plan.separate {
                gpu.ptr(&ws.inputs.sep)
            } else {
                DevPtr::NULL
            },
            gate: if shared {
                gpu.ptr(&ws.inputs.gates)
            } else {
                DevPtr::NULL
            },
            y: gpu.ptr(&ws.out.y),
            near_ulps: crate::engine::numerics::near_tie_ulps(plan.logits),
        })
    }

    /// Whether the device compares the FP8 paths among `paths` itself: with device numerics,
    /// every FP8 path's routed experts in FP8 (the reference's FP8 mode), and the format's error
    /// from the A-against-B comparison (no bf16 path, or A and B alone with one of them bf16).
    fn fp8_on_device(&self, paths: &[PathSpec]) -> bool {
        let fp8: Vec<bool> = paths.iter().map(|p| p.uses_fp8()).collect();
        let bf16 = fp8.iter().filter(|&&f| !f).count();
        self.device_numerics
            && paths.iter().all(|p| !p.uses_fp8() || p.experts.is_fp8())
            && (bf16 == 0 || (paths.len() == 2 && bf16 == 1))
    }

    /// Path `idx` (FP8) against the device reference on its FP8 weights. `last`: whether this
    /// step's previous FP8 path ran with FP8 shared slots, where one ran: a path on the same
    /// weights reuses that reference.
    fn compare_fp8_on_device(
        &mut self,
        plan: &Plan,
        spec: &PathSpec,
        last: &mut Option<bool>,
        step: u64,
    ) -> Result<FormatErrors> {
        let (t, spt) = (self.ws()?.t, plan.shape.spt());
        if !self
            .fp8_reference
            .as_ref()
            .is_some_and(|r| r.fits(t, 1, spt))
        {
            self.fp8_reference = None; // free first
            self.fp8_reference = Some(DeviceReference::new(&self.gpu, &self.cfg, t, 1, spt)?);
            *last = None; // a new reference holds nothing to reuse
        }
        let outputs = self.path_outputs(plan)?;
        let (gpu, ws) = (
            self.gpu.clone(),
            self.ws.as_ref().context("workspace missing")?,
        );
        let w = self.fp8.as_ref().context("FP8 weights missing")?;
        let r = self
            .fp8_reference
            .as_mut()
            .context("FP8 reference missing")?;
        let shared_fp8 = spec.shared_experts.is_fp8() && self.cfg.n_shared_experts > 0;
        let reuse = last.replace(shared_fp8) == Some(shared_fp8);
        super::fp8::device_errors(
            &gpu,
            r,
            &self.layer,
            w,
            ws,
            outputs,
            shared_fp8,
            reuse,
            step,
        )
    }

    /// Whole-output download for checks: [t × H].
    pub fn download_output(&self, t: usize) -> Result<Vec<f32>> {
        let ws = self.ws.as_ref().context("no step has run")?;
        self.gpu
            .download(&ws.out.y, t * self.cfg.hidden_size, "layer output")
    }
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

    fn compares_on_device(&self) -> bool {
        self.device_numerics
    }

    fn compares_fp8_on_device(&self, paths: &[PathSpec]) -> bool {
        self.fp8_on_device(paths)
    }

    fn keep_router_logits(&mut self) {
        self.keep_logits = true;
    }

    fn step(&mut self, input: &StepInput, paths: &[PathSpec]) -> Result<BackendStep> {
        self.step_with(input, paths, None)
    }

    fn step_routed(
        &mut self,
        input: &StepInput,
        paths: &[PathSpec],
        routed: &RoutedBatch,
    ) -> Result<BackendStep> {
        self.step_with(input, paths, Some(routed))
    }

    fn rank_gemm_time(&mut self, slots: &[(u32, u32)]) -> Result<Option<GemmTime>> {
        self.time_rank_gemm(slots).map(Some)
    }

    /// Exactly the FP8 weights the kernels multiply, copied back from the device.
    fn reference_slot_fp8(
        &self,
        slot: usize,
    ) -> Result<Arc<crate::engine::weights::ExpertWeights>> {
        let w = self.fp8.as_ref().context("no path runs FP8 experts")?;
        Ok(Arc::new(w.slot_from_device(&self.gpu, &self.cfg, slot)?))
    }
}

impl CudaBackend {
    /// A step, routed by the path's router or by `given` (a trace: its slots are uploaded and
    /// the gate GEMM and router are skipped; `router_logits` stays empty).
    fn step_with(
        &mut self,
        input: &StepInput,
        paths: &[PathSpec],
        given: Option<&RoutedBatch>,
    ) -> Result<BackendStep> {
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
        let gpu = self.gpu.clone();
        let rows = 1 + plans.len();
        self.ensure_workspace(t, spt, k)?.finite.reset(&gpu, rows)?;
        self.ensure_fp8(paths, t, spt)?;
        let gates = self.prepare_inputs(input)?;
        self.step_gates = gates.clone();
        self.count_inputs(t)?;

        let mut runs = Vec::with_capacity(plans.len());
        let mut router_logits = Vec::new();
        let on_device = self.device_numerics && given.is_none();
        let fp8_device =
            on_device && self.fp8_on_device(paths) && paths.iter().any(|p| p.uses_fp8());
        let mut fp8_errors: Vec<Option<FormatErrors>> = vec![None; paths.len()];
        if on_device
            && !self
                .reference
                .as_ref()
                .is_some_and(|r| r.fits(t, plans.len(), spt))
        {
            self.reference = None; // free first
            self.reference = Some(DeviceReference::new(&gpu, &self.cfg, t, plans.len(), spt)?);
        }
        let mut fp8_reference_shared = None;
        for (idx, plan) in plans.iter().enumerate() {
            if let Some(batch) = given {
                self.upload_slots(plan, &paths[idx], batch, &gates)
                    .with_context(|| format!("path {idx}"))?;
            }
            let run = self
                .run_path(1 + idx, plan, input, &gates, given.is_some())
                .with_context(|| format!("path {idx}"))?;
            // A given routing (a trace) has no logits to route on the device: the host
            // compares it (compare::host_numerics with the trace as the reference).
            if on_device {
                self.compare_on_device(idx, plan, input.step)?;
            }
            if fp8_device && paths[idx].uses_fp8() {
                fp8_errors[idx] = Some(self.compare_fp8_on_device(
                    plan,
                    &paths[idx],
                    &mut fp8_reference_shared,
                    input.step,
                )?);
            }
            if idx == 0 && given.is_none() && (!self.device_numerics || self.keep_logits) {
                // Every path computes the same logits: the first's are kept.
                router_logits = gpu.download(&self.ws()?.gate.logits, t * e, "router logits")?;
            }
            runs.push(run);
        }
        let mut numerics = match self.reference.as_mut() {
            Some(r) if on_device => Some(r.finish(&gpu, input.step)?),
            _ => None,
        };
        if let (true, Some(n)) = (fp8_device, numerics.as_mut()) {
            n.comparison.expert_formats = with_format_errors(paths, fp8_errors, &n.comparison);
        }
        let ws = self.ws()?;
        let counts = ws.finite.read(&gpu, rows)?;
        let mut finite = counts.first().copied().unwrap_or_default();
        finite.add(FiniteStage::Weights, self.layer.weights_nonfinite);
        for (run, c) in runs.iter_mut().zip(&counts[1..]) {
            run.finite = *c;
            run.finite.add(FiniteStage::Combine, run.output.nonfinite);
        }
        let mut sample_hidden = Vec::with_capacity(input.sample_tokens.len() * h);
        for &tok in &input.sample_tokens {
            let row = gpu.download_at(&ws.inputs.x, tok * h, h, "sampled hidden states")?;
            sample_hidden.extend(row.into_iter().map(bf16_value));
        }
        Ok(BackendStep {
            router_logits,
            sample_hidden,
            shared_gate: gates,
            paths: runs,
            finite,
            numerics,
        })
    }
}

/// The FP8 paths' device errors with the format's error from the A-against-B comparison, where
/// one of A and B is bf16 (B against A: the same figure either way round, up to the norm).
fn with_format_errors(
    paths: &[PathSpec],
    mut errors: Vec<Option<FormatErrors>>,
    c: &crate::engine::step::Comparison,
) -> Vec<Option<FormatErrors>> {
    let bf16 = paths.iter().position(|p| !p.uses_fp8());
    if let (Some(b), 2) = (bf16, paths.len()) {
        for e in errors.iter_mut().flatten() {
            e.bf16_path = PathId::nth(b);
            e.bf16_rel_l2 = Some(c.output_rel_l2_ab);
            e.bf16 = c.token_errors_ab.clone();
        }
    }
    errors
}

/// Runs of an EP rank's share of the grouped GEMM; the median is reported.
const RANK_GEMM_RUNS: usize = 3;

impl CudaBackend {
    /// Times one EP rank's share of the grouped expert MLP: its experts with their token counts
    /// as one slot per row (alignment and the up/SiLU/down GEMMs, no router, no combine), in
    /// buffers of its own; the median of `RANK_GEMM_RUNS` event-timed runs.
    fn time_rank_gemm(&mut self, slots: &[(u32, u32)]) -> Result<GemmTime> {
        let ids: Vec<u32> = slots
            .iter()
            .flat_map(|&(e, n)| std::iter::repeat_n(e, n as usize))
            .collect();
        let a = ids.len();
        if a == 0 {
            return Ok(GemmTime {
                us: 0.0,
                source: GemmSource::Measured,
            });
        }
        let shape = RouterShape::new(&self.cfg, 1, 0, 1.0, 0.0)?;
        let plan = Plan {
            router: RouterImpl::Fused,
            shape,
            out_scale: 1.0,
            separate: false,
            separate_weight: 0.0,
            logits: LogitsDtype::F32,
            experts: crate::engine::paths::ExpertFormat::Bf16,
            shared_experts: crate::engine::paths::ExpertFormat::Bf16,
        };
        let gpu = self.gpu.clone();
        if !self.ep_ws.as_ref().is_some_and(|w| w.fits(a, 1, 1)) {
            self.ep_ws = None;
            let ws = Workspace::new(&gpu, &self.cfg, a, 1, 1)?;
            // Rows of any finite value: the GEMM's time does not depend on them.
            gpu.launch(InitHiddenArgs {
                out: gpu.ptr(&ws.inputs.x),
                n: (a * self.cfg.hidden_size) as u64,
                seed: 1,
                tensor: tensor_id::HIDDEN_BASE,
            })?;
            self.ep_ws = Some(ws);
        }
        let ws = self.ep_ws.as_mut().context("EP workspace missing")?;
        let mut view = ws.router.ids.slice_mut(..a);
        gpu.stream
            .memcpy_htod(ids.as_slice(), &mut view)
            .map_err(cuda_err("uploading an EP rank's slot ids"))?;
        let ws = self.ep_ws.as_ref().context("EP workspace missing")?;
        let launch = PathLaunch {
            gpu: &gpu,
            cfg: &self.cfg,
            layer: &self.layer,
            ws,
            plan: &plan,
            t: a,
            routed: true,
            user: None,
            gates: &[],
            fp8: None,
        };
        let mut times = Vec::with_capacity(RANK_GEMM_RUNS);
        for _ in 0..RANK_GEMM_RUNS {
            let start = gpu.event()?;
            launch.experts_only(&mut Timer::new(false))?;
            let end = gpu.event()?;
            gpu.sync("an EP rank's GEMM")?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(cuda_err("reading an EP rank's GEMM time"))?;
            times.push(ms as f64 * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(GemmTime {
            us: times[RANK_GEMM_RUNS / 2],
            source: GemmSource::Measured,
        })
    }
}
