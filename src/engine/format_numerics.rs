//! The numerics of FP8 paths (`--experts fp8`), computed on the host over the sampled tokens
//! (`StepInput::sample_tokens`): each FP8 path against the FP8 math in f64 — its own slots and
//! weights, the dequantized FP8 weights it multiplied, the activations quantized per token and
//! group of 128 as the kernels quantize them (the kernels' own error) — and against the first
//! bf16 path (the format's error).
//! The reference takes the path's applied slots, so routing and contract differences — which
//! the contract checks report — stay out of these figures.

use super::compare::{rel_l2, token_errors};
use super::paths::{ExpertFormat, PathId, PathSpec};
use super::step::FormatErrors;
use super::weights::fp8::TokenGroups;
use super::weights::{round_bf16, ExpertWeights};
use super::{Backend, BackendStep, PathRun, StepInput};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Per path, the FP8 paths' errors (None for bf16 paths); empty when no path runs FP8.
pub fn expert_formats(
    backend: &dyn Backend,
    input: &StepInput,
    paths: &[PathSpec],
    out: &BackendStep,
) -> Result<Vec<Option<FormatErrors>>> {
    if !paths.iter().any(|p| p.uses_fp8()) {
        return Ok(Vec::new());
    }
    let cfg = backend.weights().config();
    let (h, samples) = (cfg.hidden_size, &input.sample_tokens);
    ensure!(
        out.sample_hidden.len() == samples.len() * h,
        "backend returned {} sampled hidden values, expected {}",
        out.sample_hidden.len(),
        samples.len() * h
    );
    let bf16 = paths.iter().position(|p| !p.uses_fp8());
    let rows = |p: usize| -> Vec<f64> {
        out.paths[p]
            .sample_outputs
            .iter()
            .map(|&v| f64::from(v))
            .collect()
    };
    let mut cache = SlotCache::new(backend);
    let mut result = Vec::with_capacity(paths.len());
    for (p, spec) in paths.iter().enumerate() {
        if !spec.uses_fp8() {
            result.push(None);
            continue;
        }
        let run = &out.paths[p];
        ensure!(
            run.sample_outputs.len() == samples.len() * h,
            "path {p} returned {} sampled outputs, expected {}",
            run.sample_outputs.len(),
            samples.len() * h
        );
        let mut want = Vec::with_capacity(samples.len() * h);
        for (s, &t) in samples.iter().enumerate() {
            let x: Vec<f64> = out.sample_hidden[s * h..(s + 1) * h]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            want.extend(own_slots_f64(spec, run, t, &x, &mut cache)?);
        }
        let got = rows(p);
        let vs_bf16 = bf16.map(|b| {
            let base = rows(b);
            (
                PathId::nth(b),
                rel_l2(got.iter().copied(), base.iter().copied()),
                token_errors(&got, &base, h, samples),
            )
        });
        result.push(Some(FormatErrors {
            tokens: samples.len(),
            on_device: false,
            activations_quantized: true,
            dequant_rel_l2: rel_l2(got.iter().copied(), want.iter().copied()),
            dequant: token_errors(&got, &want, h, samples),
            bf16_path: vs_bf16.as_ref().and_then(|v| v.0),
            bf16_rel_l2: vs_bf16.as_ref().map(|v| v.1),
            bf16: vs_bf16.map(|v| v.2),
        }));
    }
    Ok(result)
}

/// Slots' MLPs in either format, each fetched once per step.
struct SlotCache<'a> {
    backend: &'a dyn Backend,
    slots: HashMap<(usize, ExpertFormat), Arc<ExpertWeights>>,
}

impl<'a> SlotCache<'a> {
    fn new(backend: &'a dyn Backend) -> SlotCache<'a> {
        SlotCache {
            backend,
            slots: HashMap::new(),
        }
    }

    fn get(&mut self, slot: usize, format: ExpertFormat) -> Result<Arc<ExpertWeights>> {
        if let Some(w) = self.slots.get(&(slot, format)) {
            return Ok(w.clone());
        }
        let w = match format {
            ExpertFormat::Bf16 => self.backend.reference_slot(slot)?,
            ExpertFormat::Fp8 => self.backend.reference_slot_fp8(slot)?,
        };
        self.slots.insert((slot, format), w.clone());
        Ok(w)
    }
}

/// Token `t`'s output in f64 from the slots and weights path `run` applied to it (out_scale,
/// then the separate shared MLP), each slot through the weights of its format.
fn own_slots_f64(
    spec: &PathSpec,
    run: &PathRun,
    t: usize,
    x: &[f64],
    cache: &mut SlotCache,
) -> Result<Vec<f64>> {
    let cfg = cache.backend.weights().config();
    let (e, s, k) = (
        cfg.n_routed_experts,
        cfg.n_shared_experts,
        run.slots_per_token,
    );
    let mut y = vec![0.0f64; cfg.hidden_size];
    for a in t * k..(t + 1) * k {
        let slot = run.slot_ids[a] as usize;
        let w = f64::from(run.slot_weights[a]) * run.out_scale;
        if w == 0.0 {
            continue;
        }
        let mlp = cache.get(slot, spec.slot_format(slot, e))?;
        let o = mlp_as(&mlp, x, spec.slot_format(slot, e));
        y.iter_mut().zip(&o).for_each(|(y, o)| *y += w * o);
    }
    if let Some(&sep) = run.separate_shared_weight.get(t) {
        for j in 0..s {
            let mlp = cache.get(e + j, spec.shared_experts)?;
            let o = mlp_as(&mlp, x, spec.shared_experts);
            let w = f64::from(sep);
            y.iter_mut().zip(&o).for_each(|(y, o)| *y += w * o);
        }
    }
    Ok(y)
}

/// One MLP in f64 as a path in `format` computes it, its roundings emulated: the SiLU·mul
/// activation rounded to bf16 (as the kernels round it), and in FP8 the token and that
/// activation quantized per group of 128 around the f64 GEMMs.
pub fn mlp_as(w: &ExpertWeights, x: &[f64], format: ExpertFormat) -> Vec<f64> {
    let fp8 = format == ExpertFormat::Fp8;
    let quant = |v: Vec<f32>| -> Vec<f64> {
        let v = if fp8 {
            TokenGroups::quantize(&v, 1, v.len()).dequantize()
        } else {
            v
        };
        v.into_iter().map(f64::from).collect()
    };
    let xq = quant(x.iter().map(|&v| v as f32).collect());
    let (h, i) = (w.hidden, w.intermediate);
    let dot =
        |row: &[f32], v: &[f64]| -> f64 { row.iter().zip(v).map(|(a, b)| f64::from(*a) * b).sum() };
    // Rows in parallel, as `compare::mlp_f64`: a full-size expert per sampled token.
    let act: Vec<f32> = (0..i)
        .into_par_iter()
        .with_min_len(64)
        .map(|r| {
            let g = dot(&w.gate[r * h..(r + 1) * h], &xq) as f32;
            let u = dot(&w.up[r * h..(r + 1) * h], &xq) as f32;
            round_bf16(g / (1.0 + (-g).exp()) * u)
        })
        .collect();
    let aq = quant(act);
    (0..h)
        .into_par_iter()
        .with_min_len(64)
        .map(|r| dot(&w.down[r * i..(r + 1) * i], &aq))
        .collect()
}
