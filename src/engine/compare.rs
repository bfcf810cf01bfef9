//! Turns what a backend computed into a `StepRecord`: per-slot load, effective weights and the
//! contract verdict per path, and the numerics between the paths and against the f64 reference
//! (reference router on the same logits; f64 layer forward on a sample of tokens).

use super::config::MoeConfig;
use super::finite::{FiniteCounts, FiniteStage};
use super::paths::{PathId, PathSpec};
use super::routing::{self, Routing, TokenRoute};
use super::step::{
    Comparison, ContractCheck, OutputStats, PathRecord, SlotWeights, Stats, StepRecord, TokenDetail,
};
use super::weights::ExpertWeights;
use super::{Backend, BackendKind, BackendStep, PathRun, StepInput};
use anyhow::{ensure, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

pub use super::step::CONTRACT_TOLERANCE;

/// Multiply-adds of the f64 reference the engine spends per step at most.
const REFERENCE_BUDGET_MACS: usize = 200_000_000;

/// Which tokens are compared against the f64 reference this step: up to 8, fewer on large
/// layers, spread over the batch and moving with the step so every token gets its turn.
pub fn sample_tokens(cfg: &MoeConfig, tokens: usize, step: u64) -> Vec<usize> {
    let per_token = (cfg.num_experts_per_tok * cfg.moe_intermediate_size
        + cfg.shared_intermediate_size)
        * cfg.hidden_size
        * 3;
    let n = (REFERENCE_BUDGET_MACS / per_token.max(1))
        .clamp(1, 8)
        .min(tokens);
    let stride = tokens / n.max(1);
    (0..n)
        .map(|i| (i * stride + step as usize) % tokens)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// SwiGLU MLP in f64: `down(silu(gate(x)) * up(x))`. Rows in parallel: on a full-size layer
/// this reference is most of a GPU step's host time.
pub fn mlp_f64(w: &ExpertWeights, x: &[f64]) -> Vec<f64> {
    use rayon::prelude::*;
    let (h, i) = (w.hidden, w.intermediate);
    let dot =
        |row: &[f32], v: &[f64]| -> f64 { row.iter().zip(v).map(|(a, b)| *a as f64 * b).sum() };
    let act: Vec<f64> = (0..i)
        .into_par_iter()
        .with_min_len(64)
        .map(|r| {
            let g = dot(&w.gate[r * h..(r + 1) * h], x);
            let u = dot(&w.up[r * h..(r + 1) * h], x);
            g / (1.0 + (-g).exp()) * u
        })
        .collect();
    (0..h)
        .into_par_iter()
        .with_min_len(64)
        .map(|r| dot(&w.down[r * i..(r + 1) * i], &act))
        .collect()
}

/// Qwen3-Next's shared gate in f64: sigmoid(gate · x); 1 where the model has no gate.
pub fn shared_gate_f64(gate: Option<&[f32]>, x: &[f64]) -> f64 {
    match gate {
        Some(g) => {
            let z: f64 = g.iter().zip(x).map(|(a, b)| *a as f64 * b).sum();
            1.0 / (1.0 + (-z).exp())
        }
        None => 1.0,
    }
}

/// The f64 reference layer output for one token: Σ rsf·p_i·E_i(x) + g·Σ_j S_j(x).
pub fn reference_output(
    cfg: &MoeConfig,
    route: &TokenRoute,
    x: &[f64],
    gate: f64,
    mut slot: impl FnMut(usize) -> Result<Arc<ExpertWeights>>,
) -> Result<Vec<f64>> {
    let mut y = vec![0.0f64; cfg.hidden_size];
    for (&id, &p) in route.ids.iter().zip(&route.probs) {
        let out = mlp_f64(slot(id as usize)?.as_ref(), x);
        let w = p * cfg.routed_scaling_factor;
        y.iter_mut().zip(&out).for_each(|(y, o)| *y += w * o);
    }
    for j in 0..cfg.n_shared_experts {
        let out = mlp_f64(slot(cfg.n_routed_experts + j)?.as_ref(), x);
        y.iter_mut().zip(&out).for_each(|(y, o)| *y += gate * o);
    }
    Ok(y)
}

/// Effective weights one path applied to one token: routed (id, weight) and shared weights.
struct Effective {
    routed: Vec<(u32, f64)>,
    shared: Vec<f64>,
}

fn effective(cfg: &MoeConfig, run: &PathRun, t: usize) -> Effective {
    let e = cfg.n_routed_experts as u32;
    let k = run.slots_per_token;
    let mut routed = Vec::with_capacity(k);
    let mut shared = vec![0.0; cfg.n_shared_experts];
    for s in t * k..(t + 1) * k {
        let (id, w) = (run.slot_ids[s], run.slot_weights[s] as f64 * run.out_scale);
        if id < e {
            routed.push((id, w));
        } else if let Some(x) = shared.get_mut((id - e) as usize) {
            *x += w;
        }
    }
    if let Some(&sep) = run.separate_shared_weight.get(t) {
        shared.iter_mut().for_each(|x| *x += sep as f64);
    }
    Effective { routed, shared }
}

fn id_set(ids: impl Iterator<Item = u32>) -> BTreeSet<u32> {
    ids.collect()
}

/// Relative L2 of `a` against `b`.
fn rel_l2(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) -> f64 {
    let (mut diff, mut norm) = (0.0, 0.0);
    for (x, y) in a.zip(b) {
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

fn check_contract(routed: &[(f64, f64)], shared: &[(f64, f64)], has_shared: bool) -> ContractCheck {
    let dev = |pairs: &[(f64, f64)]| {
        pairs
            .iter()
            .map(|(got, want)| (got - want).abs() / want.abs().max(1.0))
            .fold(0.0, f64::max)
    };
    let (routed_max_dev, shared_max_dev) = (dev(routed), dev(shared));
    let got_shared = Stats::of(shared.iter().map(|p| p.0));
    let got_routed = Stats::of(routed.iter().map(|p| p.0));
    let mut check = ContractCheck {
        ok: false,
        expected_routed_sum: Stats::of(routed.iter().map(|p| p.1)),
        expected_shared: has_shared.then(|| Stats::of(shared.iter().map(|p| p.1))),
        routed_max_dev,
        shared_max_dev,
        violations: Vec::new(),
    };
    check.violations = check.violations_of(
        &got_routed,
        has_shared.then_some(&got_shared),
        CONTRACT_TOLERANCE,
    );
    check.ok = check.violations.is_empty();
    check
}

/// Builds the StepRecord of one step (wall and clock times are filled in by the engine).
pub fn assemble(
    cfg: &MoeConfig,
    backend: &dyn Backend,
    input: &StepInput,
    paths: &[PathSpec],
    out: &BackendStep,
    backend_kind: BackendKind,
) -> Result<StepRecord> {
    assemble_given(cfg, backend, input, paths, out, backend_kind, None)
}

/// The same for a step whose routing was given (a trace; `Backend::step_routed`): the reference
/// applies that routing instead of routing the logits, which the backend did not compute.
pub fn assemble_given(
    cfg: &MoeConfig,
    backend: &dyn Backend,
    input: &StepInput,
    paths: &[PathSpec],
    out: &BackendStep,
    backend_kind: BackendKind,
    given: Option<&Routing>,
) -> Result<StepRecord> {
    let (t_count, e, h) = (input.tokens, cfg.n_routed_experts, cfg.hidden_size);
    ensure!(
        given.is_some() || out.router_logits.len() == t_count * e,
        "backend returned {} router logits, expected {}",
        out.router_logits.len(),
        t_count * e
    );
    ensure!(
        out.paths.len() == paths.len(),
        "backend ran {} paths, expected {}",
        out.paths.len(),
        paths.len()
    );
    let has_shared = cfg.n_shared_experts > 0;
    let rsf = cfg.routed_scaling_factor;
    let weights = backend.weights();
    let bias = weights.router_bias()?;
    let reference: Routing = match given {
        Some(r) => r.clone(),
        None => routing::route(
            cfg,
            &out.router_logits,
            bias.as_deref(),
            cfg.num_experts_per_tok,
        ),
    };
    let gate_of = |t: usize| out.shared_gate.get(t).copied().unwrap_or(1.0) as f64;
    let mut seen = FiniteCounts::default();
    seen.count(FiniteStage::Input, &out.sample_hidden);
    seen.count(FiniteStage::Weights, bias.as_deref().unwrap_or(&[]));
    seen.count(FiniteStage::Router, &out.router_logits);

    // Per path: load, effective weights, contract.
    let mut records = Vec::with_capacity(paths.len());
    let mut effectives: Vec<Vec<Effective>> = Vec::with_capacity(paths.len());
    for (i, (spec, run)) in paths.iter().zip(&out.paths).enumerate() {
        ensure!(
            run.slot_ids.len() == t_count * run.slots_per_token
                && run.slot_weights.len() == run.slot_ids.len(),
            "path {} returned {} slots for {} tokens × {} per token",
            i,
            run.slot_ids.len(),
            t_count,
            run.slots_per_token
        );
        let mut load = vec![0u32; cfg.total_slots()];
        for &id in &run.slot_ids {
            if let Some(c) = load.get_mut(id as usize) {
                *c += 1;
            }
        }
        if !run.separate_shared_weight.is_empty() {
            load[e..].iter_mut().for_each(|c| *c += t_count as u32);
        }
        let eff: Vec<Effective> = (0..t_count).map(|t| effective(cfg, run, t)).collect();
        let routed_pairs: Vec<(f64, f64)> = eff
            .iter()
            .enumerate()
            .map(|(t, x)| {
                let want: f64 = reference.probs[t * reference.k..(t + 1) * reference.k]
                    .iter()
                    .sum::<f64>()
                    * rsf;
                (x.routed.iter().map(|r| r.1).sum(), want)
            })
            .collect();
        let shared_pairs: Vec<(f64, f64)> = eff
            .iter()
            .enumerate()
            .flat_map(|(t, x)| x.shared.iter().map(move |&w| (w, gate_of(t))))
            .collect();
        let mut path_seen = seen;
        path_seen.count(FiniteStage::Router, &run.slot_weights);
        path_seen.add(FiniteStage::Combine, run.output.nonfinite);
        let finite = out.finite.merged(&run.finite).at_least(&path_seen).check();
        let mut contract = check_contract(&routed_pairs, &shared_pairs, has_shared);
        contract.judge_finite(&finite);
        records.push(PathRecord {
            name: PathId::nth(i).with_context(|| {
                format!(
                    "{} paths given; a run compares at most {}",
                    paths.len(),
                    PathId::ALL.len()
                )
            })?,
            spec: *spec,
            load,
            routed_weight_sum: Stats::of(routed_pairs.iter().map(|p| p.0)),
            shared_weight: has_shared.then(|| Stats::of(shared_pairs.iter().map(|p| p.0))),
            contract,
            output: run.output,
            total_us: run.timings.iter().map(|k| k.us).sum(),
            timings: run.timings.clone(),
            clean_us: run.clean_us,
            finite: Some(finite),
        });
        effectives.push(eff);
    }

    // Routing agreement and weight differences.
    let ref_set = |t: usize| {
        id_set(
            reference.ids[t * reference.k..(t + 1) * reference.k]
                .iter()
                .copied(),
        )
    };
    let path_set = |p: usize, t: usize| id_set(effectives[p][t].routed.iter().map(|r| r.0));
    let frac = |n: usize| {
        if t_count == 0 {
            1.0
        } else {
            n as f64 / t_count as f64
        }
    };
    let mut comparison = Comparison {
        routing_agreement_ab: if paths.len() >= 2 {
            frac(
                (0..t_count)
                    .filter(|&t| path_set(0, t) == path_set(1, t))
                    .count(),
            )
        } else {
            1.0
        },
        ..Comparison::default()
    };
    for eff in &effectives {
        let mut agree = 0;
        let mut max_diff = 0.0f64;
        for (t, x) in eff.iter().enumerate() {
            let ref_ids = &reference.ids[t * reference.k..(t + 1) * reference.k];
            if id_set(x.routed.iter().map(|r| r.0)) != ref_set(t) {
                continue;
            }
            agree += 1;
            for (id, w) in &x.routed {
                if let Some(r) = ref_ids.iter().position(|x| x == id) {
                    max_diff = max_diff.max((w - reference.probs[t * reference.k + r] * rsf).abs());
                }
            }
        }
        comparison.routing_agreement_ref.push(frac(agree));
        comparison.weight_max_diff_ref.push(max_diff);
    }

    // f64 reference layer on the sampled tokens.
    let samples = &input.sample_tokens;
    ensure!(
        out.sample_hidden.len() == samples.len() * h,
        "backend returned {} sampled hidden values, expected {}",
        out.sample_hidden.len(),
        samples.len() * h
    );
    let shared_gate_w = weights.shared_gate()?;
    let mut cache: HashMap<usize, Arc<ExpertWeights>> = HashMap::new();
    let mut slot = |id: usize| -> Result<Arc<ExpertWeights>> {
        if let Some(w) = cache.get(&id) {
            return Ok(w.clone());
        }
        let w = backend.reference_slot(id)?;
        cache.insert(id, w.clone());
        Ok(w)
    };
    let mut ref_rows: Vec<f64> = Vec::with_capacity(samples.len() * h);
    let mut details = Vec::with_capacity(samples.len());
    for (s, &t) in samples.iter().enumerate() {
        let x: Vec<f64> = out.sample_hidden[s * h..(s + 1) * h]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let route = match given {
            Some(r) => TokenRoute {
                ids: r.ids[t * r.k..(t + 1) * r.k].to_vec(),
                probs: r.probs[t * r.k..(t + 1) * r.k].to_vec(),
                group_scores: Vec::new(),
                kept_groups: Vec::new(),
            },
            None => routing::route_token(
                cfg,
                &out.router_logits[t * e..(t + 1) * e],
                bias.as_deref(),
                cfg.num_experts_per_tok,
            ),
        };
        let g = shared_gate_f64(shared_gate_w.as_deref(), &x);
        ref_rows.extend(reference_output(cfg, &route, &x, g, &mut slot)?);
        let mut reference_slots = SlotWeights {
            ids: route.ids.clone(),
            weights: route.probs.iter().map(|p| p * rsf).collect(),
        };
        for j in 0..cfg.n_shared_experts {
            reference_slots.ids.push((e + j) as u32);
            reference_slots.weights.push(g);
        }
        let path_slots = effectives
            .iter()
            .map(|eff| {
                let x = &eff[t];
                let mut sw = SlotWeights {
                    ids: x.routed.iter().map(|r| r.0).collect(),
                    weights: x.routed.iter().map(|r| r.1).collect(),
                };
                for (j, w) in x.shared.iter().enumerate() {
                    sw.ids.push((e + j) as u32);
                    sw.weights.push(*w);
                }
                sw
            })
            .collect();
        details.push(TokenDetail {
            token: t,
            group_scores: route.group_scores,
            kept_groups: route.kept_groups,
            reference: reference_slots,
            paths: path_slots,
        });
    }
    let rows = |p: usize| out.paths[p].sample_outputs.iter().map(|&v| v as f64);
    for p in 0..paths.len() {
        ensure!(
            out.paths[p].sample_outputs.len() == samples.len() * h,
            "path {} returned {} sampled outputs, expected {}",
            p,
            out.paths[p].sample_outputs.len(),
            samples.len() * h
        );
        comparison
            .output_rel_l2_ref
            .push(rel_l2(rows(p), ref_rows.iter().copied()));
    }
    if paths.len() >= 2 {
        comparison.output_rel_l2_ab = rel_l2(rows(1), rows(0));
    }
    comparison.sampled_tokens = samples.len();

    Ok(StepRecord {
        step: input.step,
        tokens: t_count,
        backend: backend_kind,
        wall_us: 0.0,
        t_ms: 0.0,
        paths: records,
        comparison,
        token_details: details,
        telemetry: None,
        ep: None,
    })
}

/// Output statistics over a full output buffer.
pub fn output_stats(y: &[f32]) -> OutputStats {
    let mut sq = 0.0f64;
    let mut max_abs = 0.0f64;
    let mut nonfinite = 0u64;
    for &v in y {
        if !v.is_finite() {
            nonfinite += 1;
            continue;
        }
        sq += (v as f64) * (v as f64);
        max_abs = max_abs.max(v.abs() as f64);
    }
    OutputStats {
        rms: if y.is_empty() {
            0.0
        } else {
            (sq / y.len() as f64).sqrt()
        },
        max_abs,
        nonfinite,
    }
}
