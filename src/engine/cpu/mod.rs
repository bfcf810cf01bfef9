//! CPU backend: the full layer forward with rayon, in f32 on bf16-rounded weights and inputs.
//! It runs where there is no GPU and serves as the reference the CUDA kernels are checked
//! against. Each path's stages mirror the GPU kernels and are timed the same way.
//!
//! Longer than most files: the stages of one path (gate GEMM, the unfused router's nine steps,
//! align, experts, combine, shared MLP) read top to bottom as the kernels' launch sequence does.

mod cost;
mod fp8;

use super::compare::output_stats;
use super::config::MoeConfig;
use super::ep::{GemmSource, GemmTime};
use super::finite::{count_nonfinite, FiniteCounts, FiniteStage};
use super::paths::{Contract, ExpertFormat, LogitsDtype, PathSpec, RouterImpl, SharedMode};
use super::routing::{self, top_k};
use super::step::{KernelTiming, Stage};
use super::trace::RoutedBatch;
use super::weights::synthetic::hidden_row;
use super::weights::{round_bf16, ExpertWeights, WeightSource};
use super::{Backend, BackendInfo, BackendKind, BackendStep, PathRun, StepInput};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::sync::Arc;
use std::time::Instant;

/// The layer's weights held on the host.
pub struct CpuBackend {
    source: Box<dyn WeightSource>,
    cfg: MoeConfig,
    gate: Vec<f32>,
    bias: Option<Vec<f32>>,
    offset: Vec<f32>,
    experts: Vec<Arc<ExpertWeights>>,
    /// Shared slots (each the routed experts' size when fusable).
    shared_slots: Vec<Arc<ExpertWeights>>,
    /// The shared experts as one dense MLP (the separate path).
    shared_dense: Option<ExpertWeights>,
    shared_gate: Option<Vec<f32>>,
    /// Measured at the first EP step.
    cost: Option<cost::ExpertCost>,
    /// Non-finite values in the weights, counted once when they were loaded.
    weights_nonfinite: u64,
    /// The FP8 experts, made at the first step of a path that runs them.
    fp8: Option<fp8::Fp8Weights>,
}

impl CpuBackend {
    pub fn new(source: Box<dyn WeightSource>) -> Result<CpuBackend> {
        let cfg = source.config().clone();
        cfg.validate()?;
        let experts = (0..cfg.n_routed_experts)
            .into_par_iter()
            .map(|e| source.expert(e).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let shared_slots = (0..cfg.n_shared_experts)
            .map(|j| source.shared_slot(j).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let shared_dense = concat_mlps(&shared_slots);
        let (gate, bias) = (source.router_gate()?, source.router_bias()?);
        let (offset, shared_gate) = (source.logit_offset()?, source.shared_gate()?);
        let mlps = experts.iter().chain(&shared_slots);
        let weights_nonfinite = [&gate, &offset]
            .into_iter()
            .chain(bias.as_ref())
            .chain(shared_gate.as_ref())
            .map(|v| count_nonfinite(v))
            .chain(mlps.map(|m| {
                [&m.gate, &m.up, &m.down]
                    .map(|v| count_nonfinite(v))
                    .iter()
                    .sum()
            }))
            .sum();
        Ok(CpuBackend {
            gate,
            bias,
            offset,
            shared_gate,
            weights_nonfinite,
            cost: None,
            fp8: None,
            experts,
            shared_slots,
            shared_dense,
            cfg,
            source,
        })
    }

    /// Router logits [T × E] = x · gateᵀ + offset.
    fn gate_gemm(&self, x: &[f32], t: usize) -> Vec<f32> {
        let (e, h) = (self.cfg.n_routed_experts, self.cfg.hidden_size);
        let mut logits = vec![0.0f32; t * e];
        logits
            .par_chunks_mut(e)
            .zip(x.par_chunks(h))
            .for_each(|(row, xr)| {
                for (j, l) in row.iter_mut().enumerate() {
                    *l = dot(xr, &self.gate[j * h..(j + 1) * h]) + self.offset[j];
                }
            });
        logits
    }

    fn slot_mlp(&self, slot: usize) -> &Arc<ExpertWeights> {
        let e = self.cfg.n_routed_experts;
        if slot < e {
            &self.experts[slot]
        } else {
            &self.shared_slots[slot - e]
        }
    }

    /// Slot `slot`'s MLP as a path in `format` multiplies it.
    fn slot_mlp_as(&self, slot: usize, format: ExpertFormat) -> &Arc<ExpertWeights> {
        match (format, &self.fp8) {
            (ExpertFormat::Fp8, Some(w)) => w.slot(slot),
            _ => self.slot_mlp(slot),
        }
    }

    /// Makes the FP8 weights where a path runs them and they are not made yet.
    fn ensure_fp8(&mut self, paths: &[PathSpec]) -> Result<()> {
        for spec in paths.iter().filter(|p| p.uses_fp8()) {
            fp8::check_path(&self.cfg, spec)?;
        }
        if self.fp8.is_none() && paths.iter().any(|p| p.uses_fp8()) {
            let w = fp8::Fp8Weights::new(self.source.as_ref(), &self.experts, &self.shared_slots)?;
            self.fp8 = Some(w);
        }
        Ok(())
    }

    fn run_path(
        &self,
        spec: &PathSpec,
        x: &[f32],
        t: usize,
        gates: &[f32],
        samples: &[usize],
        given: Option<&RoutedBatch>,
    ) -> Result<(PathRun, Vec<f32>)> {
        let cfg = &self.cfg;
        let has_shared = cfg.n_shared_experts > 0;
        let contract = spec.contract(cfg.routed_scaling_factor, has_shared);
        let s = spec.shared_slots_per_token(cfg.n_shared_experts);
        if s > 0 {
            ensure!(cfg.shared_fusable(), "the shared experts of {} cannot be fused as slots: shared intermediate {} is not {} × the routed experts' {}", cfg.name, cfg.shared_intermediate_size, cfg.n_shared_experts, cfg.moe_intermediate_size);
        }
        let mut timings = Vec::new();
        let mut finite = FiniteCounts::default();
        let (slots, logits) = match given {
            Some(batch) => (given_slots(cfg, batch, &contract, s, gates), Vec::new()),
            None => {
                let start = Instant::now();
                let logits = self.gate_gemm(x, t);
                timed(&mut timings, Stage::GateGemm, start);
                finite.count(FiniteStage::Router, &logits);
                let k = spec.routed_per_token(cfg.num_experts_per_tok, cfg.n_shared_experts);
                // A bf16 router GEMM's output: the f32 sum rounded once. The f32 logits are
                // what the reference routes, so they are the ones returned.
                let read: std::borrow::Cow<[f32]> = match spec.logits {
                    LogitsDtype::F32 => (&logits[..]).into(),
                    LogitsDtype::Bf16 => logits.iter().map(|&l| round_bf16(l)).collect(),
                };
                let slots = self.route_slots(spec, &contract, &read, t, k, s, gates, &mut timings);
                (slots, logits)
            }
        };
        finite.count(FiniteStage::Router, &slots.weights);
        let run = self.experts_and_combine(
            spec, &contract, x, t, gates, samples, slots, timings, finite,
        );
        Ok((run, logits))
    }

    /// The router into slots: routed ids and weights, then the shared slots.
    #[allow(clippy::too_many_arguments)]
    fn route_slots(
        &self,
        spec: &PathSpec,
        contract: &Contract,
        logits: &[f32],
        t: usize,
        k: usize,
        s: usize,
        gates: &[f32],
        timings: &mut Vec<KernelTiming>,
    ) -> Slots {
        let cfg = &self.cfg;
        let e = cfg.n_routed_experts;
        let per_token = k + s;
        let mut slot_ids = vec![0u32; t * per_token];
        let mut slot_weights = vec![0.0f32; t * per_token];
        let bias = self.bias.as_deref();
        match spec.router {
            // A user kernel never reaches the CPU backend (`step` refuses it).
            RouterImpl::Fused | RouterImpl::User => {
                let start = Instant::now();
                slot_ids
                    .par_chunks_mut(per_token)
                    .zip(slot_weights.par_chunks_mut(per_token))
                    .enumerate()
                    .for_each(|(tok, (ids, ws))| {
                        let r = routing::route_token(cfg, &logits[tok * e..(tok + 1) * e], bias, k);
                        for (i, (&id, &p)) in r.ids.iter().zip(&r.probs).enumerate() {
                            ids[i] = id;
                            ws[i] = contract.routed_slot_weight(p) as f32;
                        }
                        for j in 0..s {
                            ids[k + j] = (e + j) as u32;
                            ws[k + j] = (contract.shared_slot_weight * gates[tok] as f64) as f32;
                        }
                    });
                timed(timings, Stage::RouterFused, start);
            }
            RouterImpl::Unfused => {
                let stages =
                    unfused_router(cfg, logits, bias, t, k, contract.routed_scale, timings);
                for tok in 0..t {
                    for i in 0..k {
                        slot_ids[tok * per_token + i] = stages.0[tok * k + i];
                        slot_weights[tok * per_token + i] = stages.1[tok * k + i];
                    }
                    for j in 0..s {
                        slot_ids[tok * per_token + k + j] = (e + j) as u32;
                        slot_weights[tok * per_token + k + j] =
                            (contract.shared_slot_weight * gates[tok] as f64) as f32;
                    }
                }
            }
        }
        Slots {
            per_token,
            ids: slot_ids,
            weights: slot_weights,
        }
    }

    /// Alignment, the grouped expert MLPs, combine and the separate shared MLP.
    #[allow(clippy::too_many_arguments)]
    fn experts_and_combine(
        &self,
        spec: &PathSpec,
        contract: &Contract,
        x: &[f32],
        t: usize,
        gates: &[f32],
        samples: &[usize],
        slots_in: Slots,
        mut timings: Vec<KernelTiming>,
        mut finite: FiniteCounts,
    ) -> PathRun {
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        let Slots {
            per_token,
            ids: slot_ids,
            weights: slot_weights,
        } = slots_in;
        // Alignment: tokens grouped by slot.
        let start = Instant::now();
        let slots = cfg.total_slots();
        let mut counts = vec![0usize; slots];
        for &id in &slot_ids {
            counts[id as usize] += 1;
        }
        let mut offsets = vec![0usize; slots + 1];
        for i in 0..slots {
            offsets[i + 1] = offsets[i] + counts[i];
        }
        let mut fill = offsets.clone();
        let mut order = vec![0usize; slot_ids.len()]; // permuted position -> assignment index
        let mut position = vec![0usize; slot_ids.len()]; // assignment index -> permuted position
        for (a, &id) in slot_ids.iter().enumerate() {
            let p = fill[id as usize];
            fill[id as usize] += 1;
            order[p] = a;
            position[a] = p;
        }
        timed(&mut timings, Stage::MoeAlign, start);

        // Grouped expert MLPs, one slot at a time in parallel, outputs in slot order; an FP8
        // slot multiplies the tokens quantized per group of 128.
        let start = Instant::now();
        let xq = spec.uses_fp8().then(|| fp8::quantize_rows(x, h));
        let e = cfg.n_routed_experts;
        let mut expert_out = vec![0.0f32; slot_ids.len() * h];
        let mut chunks: Vec<(usize, &mut [f32])> = Vec::with_capacity(slots);
        let mut rest: &mut [f32] = &mut expert_out;
        for (slot, &count) in counts.iter().enumerate() {
            let (head, tail) = rest.split_at_mut(count * h);
            chunks.push((slot, head));
            rest = tail;
        }
        chunks.into_par_iter().for_each(|(slot, out)| {
            if out.is_empty() {
                return;
            }
            let format = spec.slot_format(slot, e);
            let src = match (&xq, format) {
                (Some(q), ExpertFormat::Fp8) => q.as_slice(),
                _ => x,
            };
            let rows: Vec<&[f32]> = order[offsets[slot]..offsets[slot + 1]]
                .iter()
                .map(|&a| &src[(a / per_token) * h..(a / per_token + 1) * h])
                .collect();
            mlp_rows(self.slot_mlp_as(slot, format), &rows, out, format);
        });
        timed(&mut timings, Stage::ExpertMlp, start);
        finite.count(FiniteStage::Experts, &expert_out);

        // Combine back to tokens, with the output scale.
        let start = Instant::now();
        let mut y = vec![0.0f32; t * h];
        let scale = contract.out_scale as f32;
        y.par_chunks_mut(h).enumerate().for_each(|(tok, row)| {
            for a in tok * per_token..(tok + 1) * per_token {
                let w = slot_weights[a];
                let src = &expert_out[position[a] * h..(position[a] + 1) * h];
                row.iter_mut().zip(src).for_each(|(y, o)| *y += w * o);
            }
            row.iter_mut().for_each(|y| *y *= scale);
        });
        timed(&mut timings, Stage::Combine, start);

        // The separate shared MLP, added after the scale.
        let mut separate = Vec::new();
        let (dense, src) = match (spec.shared_experts, &self.fp8, &xq) {
            (ExpertFormat::Fp8, Some(w), Some(q)) => (w.shared_dense.as_ref(), q.as_slice()),
            _ => (self.shared_dense.as_ref(), x),
        };
        if spec.shared == SharedMode::Separate && contract.separate_shared_weight != 0.0 {
            if let Some(mlp) = dense {
                let start = Instant::now();
                separate = gates
                    .iter()
                    .map(|&g| (contract.separate_shared_weight * g as f64) as f32)
                    .collect();
                let mut shared_out = vec![0.0f32; t * h];
                shared_out
                    .par_chunks_mut(h)
                    .enumerate()
                    .for_each(|(tok, out)| {
                        let row = &src[tok * h..(tok + 1) * h];
                        mlp_rows(mlp, &[row], out, spec.shared_experts);
                    });
                finite.count(FiniteStage::Experts, &shared_out);
                y.par_chunks_mut(h)
                    .zip(shared_out.par_chunks(h))
                    .enumerate()
                    .for_each(|(tok, (row, s))| {
                        let w = separate[tok];
                        row.iter_mut().zip(s).for_each(|(y, o)| *y += w * o);
                    });
                timed(&mut timings, Stage::SharedMlp, start);
            }
        }

        let sample_outputs = samples
            .iter()
            .flat_map(|&tok| y[tok * h..(tok + 1) * h].iter().copied())
            .collect();
        let output = output_stats(&y);
        finite.add(FiniteStage::Combine, output.nonfinite);
        PathRun {
            finite,
            slots_per_token: per_token,
            slot_ids,
            slot_weights,
            out_scale: contract.out_scale,
            separate_shared_weight: separate,
            sample_outputs,
            output,
            timings,
            clean_us: None,
        }
    }
}

/// One path's slots: [tokens × per_token] ids and the weights the kernels apply.
struct Slots {
    per_token: usize,
    ids: Vec<u32>,
    weights: Vec<f32>,
}

/// Slots from a given routing (a trace): its ids with the path's routed weight on its
/// probabilities, then the shared slots, as the routers write them.
fn given_slots(
    cfg: &MoeConfig,
    batch: &RoutedBatch,
    contract: &Contract,
    s: usize,
    gates: &[f32],
) -> Slots {
    let (ids, weights) = batch.slots(cfg.n_routed_experts, contract, s, gates);
    Slots {
        per_token: batch.k + s,
        ids,
        weights,
    }
}

/// The unfused router: one pass over the batch per step of the PyTorch sequence, each timed.
/// Returns ids [T × k] (best first) and slot weights [T × k] (probabilities × `routed_scale`).
fn unfused_router(
    cfg: &MoeConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    k: usize,
    routed_scale: f64,
    timings: &mut Vec<KernelTiming>,
) -> (Vec<u32>, Vec<f32>) {
    let (e, g) = (cfg.n_routed_experts, cfg.n_group);
    let start = Instant::now();
    let mut scores = vec![0.0f32; t * e];
    scores
        .par_chunks_mut(e)
        .zip(logits.par_chunks(e))
        .for_each(|(s, l)| routing::scores_into(cfg.scoring_func, l, s));
    timed(timings, Stage::RouterScores, start);

    let start = Instant::now();
    let mut sel = scores.clone();
    if let Some(b) = bias {
        sel.par_chunks_mut(e)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(s, b)| *s += b));
    }
    timed(timings, Stage::RouterAddBias, start);

    let mut masked = sel.clone();
    if g > 1 {
        let start = Instant::now();
        let mut group_scores = vec![0.0f32; t * g];
        group_scores
            .par_chunks_mut(g)
            .zip(sel.par_chunks(e))
            .for_each(|(gs, s)| routing::group_scores_into(cfg, s, gs));
        timed(timings, Stage::RouterGroupScores, start);

        let start = Instant::now();
        let kept: Vec<Vec<usize>> = group_scores
            .par_chunks(g)
            .map(|gs| top_k(gs, 0..g, cfg.topk_group))
            .collect();
        timed(timings, Stage::RouterGroupTopk, start);

        let start = Instant::now();
        let per = cfg.experts_per_group();
        masked
            .par_chunks_mut(e)
            .zip(kept.par_iter())
            .for_each(|(row, kept)| {
                for (grp, chunk) in row.chunks_mut(per).enumerate() {
                    if !kept.contains(&grp) {
                        chunk.iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
                    }
                }
            });
        timed(timings, Stage::RouterMask, start);
    }

    let start = Instant::now();
    let ids: Vec<u32> = masked
        .par_chunks(e)
        .flat_map_iter(|row| top_k(row, 0..e, k).into_iter().map(|i| i as u32))
        .collect();
    timed(timings, Stage::RouterExpertTopk, start);

    let start = Instant::now();
    let mut weights: Vec<f64> = ids
        .par_iter()
        .enumerate()
        .map(|(a, &id)| scores[(a / k) * e + id as usize] as f64)
        .collect();
    timed(timings, Stage::RouterGather, start);

    let start = Instant::now();
    if cfg.norm_topk_prob {
        weights.par_chunks_mut(k).for_each(|w| {
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|x| *x /= sum);
            }
        });
    }
    timed(timings, Stage::RouterRenormalize, start);

    let start = Instant::now();
    let scaled: Vec<f32> = weights
        .par_iter()
        .map(|&w| (w * routed_scale) as f32)
        .collect();
    timed(timings, Stage::RouterScale, start);
    (ids, scaled)
}

/// Records the time since `start` as `stage`.
fn timed(timings: &mut Vec<KernelTiming>, stage: Stage, start: Instant) {
    timings.push(KernelTiming {
        stage,
        us: start.elapsed().as_secs_f64() * 1e6,
        bytes: None,
    });
}

/// Dot product with eight accumulators (the compiler vectorizes it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// SwiGLU MLP on rows of x, writing [rows × H] to `out`; the activation is rounded to bf16 as
/// the GPU's down-projection input is, and in FP8 then quantized per group of 128.
fn mlp_rows(w: &ExpertWeights, rows: &[&[f32]], out: &mut [f32], format: ExpertFormat) {
    let (h, i) = (w.hidden, w.intermediate);
    let mut act = vec![0.0f32; i];
    for (r, x) in rows.iter().enumerate() {
        for (j, a) in act.iter_mut().enumerate() {
            let g = dot(x, &w.gate[j * h..(j + 1) * h]);
            let u = dot(x, &w.up[j * h..(j + 1) * h]);
            *a = round_bf16(g / (1.0 + (-g).exp()) * u);
        }
        if format == ExpertFormat::Fp8 {
            act = crate::engine::weights::fp8::TokenGroups::quantize(&act, 1, i).dequantize();
        }
        for (c, o) in out[r * h..(r + 1) * h].iter_mut().enumerate() {
            *o = dot(&act, &w.down[c * i..(c + 1) * i]);
        }
    }
}

/// The shared slots as one dense MLP: intermediate rows stacked, down columns side by side.
fn concat_mlps(slots: &[Arc<ExpertWeights>]) -> Option<ExpertWeights> {
    let first = slots.first()?;
    let h = first.hidden;
    let inter: usize = slots.iter().map(|s| s.intermediate).sum();
    let mut down = vec![0.0f32; h * inter];
    let mut col = 0;
    for s in slots {
        for r in 0..h {
            down[r * inter + col..r * inter + col + s.intermediate]
                .copy_from_slice(&s.down[r * s.intermediate..(r + 1) * s.intermediate]);
        }
        col += s.intermediate;
    }
    Some(ExpertWeights {
        hidden: h,
        intermediate: inter,
        gate: slots.iter().flat_map(|s| s.gate.iter().copied()).collect(),
        up: slots.iter().flat_map(|s| s.up.iter().copied()).collect(),
        down,
    })
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Cpu,
            device: format!("CPU, {} threads", rayon::current_num_threads()),
        }
    }

    fn weights(&self) -> &dyn WeightSource {
        self.source.as_ref()
    }

    fn reference_slot(&self, slot: usize) -> Result<Arc<ExpertWeights>> {
        Ok(self.slot_mlp(slot).clone())
    }

    fn reference_slot_fp8(&self, slot: usize) -> Result<Arc<ExpertWeights>> {
        match &self.fp8 {
            Some(w) => Ok(w.slot(slot).clone()),
            None => anyhow::bail!("no path runs FP8 experts"),
        }
    }

    fn step(&mut self, input: &StepInput, paths: &[PathSpec]) -> Result<BackendStep> {
        anyhow::ensure!(
            paths.iter().all(|p| p.router != RouterImpl::User),
            "a user router kernel (path C) runs on the CUDA backend only"
        );
        self.step_with(input, paths, None)
    }

    fn rank_gemm_time(&mut self, slots: &[(u32, u32)]) -> Result<Option<GemmTime>> {
        let cost = match self.cost {
            Some(c) => c,
            None => {
                let c = cost::ExpertCost::measure(&self.experts[0]);
                self.cost = Some(c);
                c
            }
        };
        Ok(Some(GemmTime {
            us: cost.rank_us(slots),
            source: GemmSource::Model,
        }))
    }

    fn step_routed(
        &mut self,
        input: &StepInput,
        paths: &[PathSpec],
        routed: &RoutedBatch,
    ) -> Result<BackendStep> {
        self.step_with(input, paths, Some(routed))
    }
}

impl CpuBackend {
    /// A step, routed by the router or by `given` (a trace: the router is skipped and
    /// `router_logits` stays empty).
    fn step_with(
        &mut self,
        input: &StepInput,
        paths: &[PathSpec],
        given: Option<&RoutedBatch>,
    ) -> Result<BackendStep> {
        self.ensure_fp8(paths)?;
        let (t, h) = (input.tokens, self.cfg.hidden_size);
        let x: Vec<f32> = match &input.hidden {
            Some(states) => {
                ensure!(
                    states.len() == t * h,
                    "captured hidden states hold {} values, expected {} tokens × {}",
                    states.len(),
                    t,
                    h
                );
                states.iter().map(|&v| round_bf16(v)).collect()
            }
            None => {
                let rows: Vec<Vec<f32>> = (0..t)
                    .into_par_iter()
                    .map(|tok| hidden_row(input.seed, input.step, tok, h))
                    .collect();
                rows.concat()
            }
        };
        let gates: Vec<f32> = if self.cfg.n_shared_experts == 0 {
            Vec::new()
        } else {
            match &self.shared_gate {
                Some(g) => x
                    .par_chunks(h)
                    .map(|row| 1.0 / (1.0 + (-dot(row, g)).exp()))
                    .collect(),
                None => vec![1.0; t],
            }
        };
        let mut finite = FiniteCounts::default();
        finite.count(FiniteStage::Input, &x);
        finite.add(FiniteStage::Weights, self.weights_nonfinite);
        let ones = vec![1.0f32; t];
        let gate_view: &[f32] = if gates.is_empty() { &ones } else { &gates };
        let mut runs = Vec::with_capacity(paths.len());
        let mut router_logits = Vec::new();
        for (i, spec) in paths.iter().enumerate() {
            let (run, logits) =
                self.run_path(spec, &x, t, gate_view, &input.sample_tokens, given)?;
            if i == 0 {
                router_logits = logits;
            }
            runs.push(run);
        }
        let sample_hidden = input
            .sample_tokens
            .iter()
            .flat_map(|&tok| x[tok * h..(tok + 1) * h].iter().copied())
            .collect();
        Ok(BackendStep {
            router_logits,
            sample_hidden,
            shared_gate: gates,
            paths: runs,
            finite,
            numerics: None,
        })
    }
}
