//! Turns what a backend computed into a `StepRecord`: per-slot load, effective weights and the
//! contract verdict per path, and the numerics between the paths and against the f64 reference
//! (reference router on the same logits; f64 layer forward on a sample of tokens).
//!
//! Longer than most files: `host_numerics` is the host twin of `cuda::reference` (the same
//! margins, classes and reductions, step for step), kept in one place so the two read alike.

use super::config::MoeConfig;
use super::finite::{FiniteCounts, FiniteStage};
use super::numerics::{
    detail_tokens, MarginSummary, PathNumerics, RefToken, RouteClass, StepNumerics, TieCounts,
    TokenDist, TokenErrors, TokenMargins, WORST_TOKENS,
};
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

/// Multiply-adds of the host's f64 reference per step at most (the GPU compares every token on
/// the device instead). The reference runs token by token in f64, several times slower per
/// multiply-add than the batched f32 forward; this keeps the CPU backend's step rate where it
/// was (8 tokens of the CPU's default DeepSeek-V3 shape, 1 of a full-size layer).
const REFERENCE_BUDGET_MACS: usize = 28_500_000;

/// Drill-down tokens per step at most.
pub const DETAIL_TOKENS: usize = 8;

/// Which tokens the host compares against the f64 reference this step: every token where the
/// budget allows, else as many as it allows (at least one), spread over the batch and moving
/// with the step so every token gets its turn. `Comparison::sampled_tokens` counts them.
pub fn sample_tokens(cfg: &MoeConfig, tokens: usize, step: u64) -> Vec<usize> {
    let per_token = (cfg.num_experts_per_tok * cfg.moe_intermediate_size
        + cfg.shared_intermediate_size)
        * cfg.hidden_size
        * 3;
    let n = (REFERENCE_BUDGET_MACS / per_token.max(1)).clamp(1, tokens.max(1));
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
pub(crate) struct Effective {
    pub routed: Vec<(u32, f64)>,
    pub shared: Vec<f64>,
}

/// The effective weights of one token's slots: `ids`/`weights` are its `spt` slots as the
/// kernels wrote them, `sep` the separate shared MLP's weight where the path runs one.
pub(crate) fn effective_slots(
    cfg: &MoeConfig,
    ids: &[u32],
    weights: &[f32],
    out_scale: f64,
    sep: Option<f32>,
) -> Effective {
    let e = cfg.n_routed_experts as u32;
    let mut routed = Vec::with_capacity(ids.len());
    let mut shared = vec![0.0; cfg.n_shared_experts];
    for (&id, &w) in ids.iter().zip(weights) {
        let w = w as f64 * out_scale;
        if id < e {
            routed.push((id, w));
        } else if let Some(x) = shared.get_mut((id - e) as usize) {
            *x += w;
        }
    }
    if let Some(sep) = sep {
        shared.iter_mut().for_each(|x| *x += sep as f64);
    }
    Effective { routed, shared }
}

fn effective(cfg: &MoeConfig, run: &PathRun, t: usize) -> Effective {
    let k = run.slots_per_token;
    effective_slots(
        cfg,
        &run.slot_ids[t * k..(t + 1) * k],
        &run.slot_weights[t * k..(t + 1) * k],
        run.out_scale,
        run.separate_shared_weight.get(t).copied(),
    )
}

impl Effective {
    /// As the drill-down shows it: routed slots, then shared slots E..E+S-1.
    pub(crate) fn slot_weights(&self, e: usize) -> SlotWeights {
        let mut sw = SlotWeights {
            ids: self.routed.iter().map(|r| r.0).collect(),
            weights: self.routed.iter().map(|r| r.1).collect(),
        };
        for (j, w) in self.shared.iter().enumerate() {
            sw.ids.push((e + j) as u32);
            sw.weights.push(*w);
        }
        sw
    }
}

/// Relative L2 of `a` against `b`.
pub(crate) fn rel_l2(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) -> f64 {
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

/// Largest |a − b|; NaN where any difference is not finite.
fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    let mut m = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = x - y;
        if !d.is_finite() {
            return f64::NAN;
        }
        m = m.max(d.abs());
    }
    m
}

/// Per-token errors of `rows` against `want` ([n × h] each).
pub(crate) fn token_errors(rows: &[f64], want: &[f64], h: usize, tokens: &[usize]) -> TokenErrors {
    let (mut rel, mut abs) = (Vec::new(), Vec::new());
    for (r, w) in rows.chunks(h.max(1)).zip(want.chunks(h.max(1))) {
        let m = max_abs(r, w);
        abs.push(m);
        rel.push(if m.is_nan() {
            f64::NAN
        } else {
            rel_l2(r.iter().copied(), w.iter().copied())
        });
    }
    TokenErrors {
        rel_l2: TokenDist::of(&rel, tokens),
        max_abs: TokenDist::of(&abs, tokens),
    }
}

/// The contract verdict from a path's aggregates.
fn check_contract(p: &PathNumerics, has_shared: bool) -> ContractCheck {
    let mut check = ContractCheck {
        ok: false,
        expected_routed_sum: p.routed_sum_expected,
        expected_shared: if has_shared { p.shared_expected } else { None },
        routed_max_dev: p.routed_max_dev,
        shared_max_dev: p.shared_max_dev,
        violations: Vec::new(),
    };
    let shared = if has_shared { p.shared } else { None };
    check.violations = check.violations_of(&p.routed_sum, shared.as_ref(), CONTRACT_TOLERANCE);
    check.ok = check.violations.is_empty();
    check
}

/// Largest relative deviation |got − want| / max(|want|, 1).
fn max_dev(pairs: &[(f64, f64)]) -> f64 {
    pairs
        .iter()
        .map(|(got, want)| (got - want).abs() / want.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// A path's load and contract aggregates from its effective weights.
fn path_numerics(
    cfg: &MoeConfig,
    run: &PathRun,
    eff: &[Effective],
    reference: &Routing,
    gate_of: &dyn Fn(usize) -> f64,
) -> PathNumerics {
    let t_count = eff.len();
    let mut load = vec![0u32; cfg.total_slots()];
    for &id in &run.slot_ids {
        if let Some(c) = load.get_mut(id as usize) {
            *c += 1;
        }
    }
    if !run.separate_shared_weight.is_empty() {
        load[cfg.n_routed_experts..]
            .iter_mut()
            .for_each(|c| *c += t_count as u32);
    }
    let k = reference.k;
    let routed: Vec<(f64, f64)> = eff
        .iter()
        .enumerate()
        .map(|(t, x)| {
            let want: f64 =
                reference.probs[t * k..(t + 1) * k].iter().sum::<f64>() * cfg.routed_scaling_factor;
            (x.routed.iter().map(|r| r.1).sum(), want)
        })
        .collect();
    let shared: Vec<(f64, f64)> = eff
        .iter()
        .enumerate()
        .flat_map(|(t, x)| x.shared.iter().map(move |&w| (w, gate_of(t))))
        .collect();
    let has_shared = cfg.n_shared_experts > 0;
    let mut finite_seen = FiniteCounts::default();
    finite_seen.count(FiniteStage::Router, &run.slot_weights);
    finite_seen.add(FiniteStage::Combine, run.output.nonfinite);
    PathNumerics {
        finite_seen,
        load,
        routed_sum: Stats::of(routed.iter().map(|p| p.0)),
        routed_sum_expected: Stats::of(routed.iter().map(|p| p.1)),
        shared: has_shared.then(|| Stats::of(shared.iter().map(|p| p.0))),
        shared_expected: has_shared.then(|| Stats::of(shared.iter().map(|p| p.1))),
        routed_max_dev: max_dev(&routed),
        shared_max_dev: max_dev(&shared),
    }
}

/// Selection values of one token (scores + bias, f32 as the router selects on them).
fn selection(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut sel = vec![0.0f32; logits.len()];
    routing::scores_into(cfg.scoring_func, logits, &mut sel);
    if let Some(b) = bias {
        sel.iter_mut().zip(b).for_each(|(s, b)| *s += b);
    }
    sel
}

/// The numerics of one step computed on the host (the CPU backend, and the CUDA backend where it
/// returns no device numerics): reference routing, margins and classes for every token, the f64
/// reference layer on `input.sample_tokens`.
pub fn host_numerics(
    cfg: &MoeConfig,
    backend: &dyn Backend,
    input: &StepInput,
    paths: &[PathSpec],
    out: &BackendStep,
    given: Option<&Routing>,
) -> Result<StepNumerics> {
    use rayon::prelude::*;
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
    for (i, run) in out.paths.iter().enumerate() {
        ensure!(
            run.slot_ids.len() == t_count * run.slots_per_token
                && run.slot_weights.len() == run.slot_ids.len(),
            "path {} returned {} slots for {} tokens × {} per token",
            i,
            run.slot_ids.len(),
            t_count,
            run.slots_per_token
        );
    }
    let rsf = cfg.routed_scaling_factor;
    let weights = backend.weights();
    let bias = weights.router_bias()?;
    let k = cfg.num_experts_per_tok;
    let routes: Vec<TokenRoute> = match given {
        // A given routing (a trace): no logits, so no selection values, margins or ties.
        Some(r) => (0..t_count)
            .map(|t| TokenRoute {
                ids: r.ids[t * r.k..(t + 1) * r.k].to_vec(),
                probs: r.probs[t * r.k..(t + 1) * r.k].to_vec(),
                group_scores: Vec::new(),
                kept_groups: Vec::new(),
            })
            .collect(),
        None => out
            .router_logits
            .par_chunks(e)
            .map(|row| routing::route_token(cfg, row, bias.as_deref(), k))
            .collect(),
    };
    let reference = Routing {
        k: routes.first().map(|r| r.ids.len()).unwrap_or(k),
        ids: routes.iter().flat_map(|r| r.ids.iter().copied()).collect(),
        probs: routes
            .iter()
            .flat_map(|r| r.probs.iter().copied())
            .collect(),
    };
    let gate_of = |t: usize| out.shared_gate.get(t).copied().unwrap_or(1.0) as f64;
    let mut seen = FiniteCounts::default();
    seen.count(FiniteStage::Input, &out.sample_hidden);
    seen.count(FiniteStage::Weights, bias.as_deref().unwrap_or(&[]));
    seen.count(FiniteStage::Router, &out.router_logits);
    let effectives: Vec<Vec<Effective>> = out
        .paths
        .iter()
        .map(|run| (0..t_count).map(|t| effective(cfg, run, t)).collect())
        .collect();
    let path_nums: Vec<PathNumerics> = out
        .paths
        .iter()
        .zip(&effectives)
        .map(|(run, eff)| {
            let mut p = path_numerics(cfg, run, eff, &reference, &gate_of);
            p.finite_seen = p.finite_seen.merged(&seen);
            p
        })
        .collect();

    // Margins and classes for every token.
    let per_token: Vec<(TokenMargins, Vec<RouteClass>)> = (0..t_count)
        .into_par_iter()
        .map(|t| {
            let sel = match out.router_logits.get(t * e..(t + 1) * e) {
                Some(row) if given.is_none() => selection(cfg, row, bias.as_deref()),
                _ => Vec::new(),
            };
            let r = &routes[t];
            let rt = RefToken {
                sel: &sel,
                group_scores: &r.group_scores,
                kept_groups: &r.kept_groups,
                ids: &r.ids,
            };
            let classes = effectives
                .iter()
                .map(|eff| {
                    let ids: Vec<u32> = eff[t].routed.iter().map(|x| x.0).collect();
                    rt.classify(cfg, &ids)
                })
                .collect();
            (rt.margins(cfg), classes)
        })
        .collect();

    let frac = |n: usize| {
        if t_count == 0 {
            1.0
        } else {
            n as f64 / t_count as f64
        }
    };
    let id_set = |p: usize, t: usize| -> BTreeSet<u32> {
        effectives[p][t].routed.iter().map(|r| r.0).collect()
    };
    let mut comparison = Comparison {
        routing_agreement_ab: if paths.len() >= 2 {
            frac(
                (0..t_count)
                    .filter(|&t| id_set(0, t) == id_set(1, t))
                    .count(),
            )
        } else {
            1.0
        },
        margins: given
            .is_none()
            .then(|| MarginSummary::of(&per_token.iter().map(|p| p.0).collect::<Vec<_>>())),
        disagreeing_tokens: (0..t_count)
            .filter(|&t| per_token[t].1.iter().any(|&c| c != RouteClass::Agree))
            .take(WORST_TOKENS)
            .collect(),
        ..Comparison::default()
    };
    for (p, eff) in effectives.iter().enumerate() {
        let mut ties = TieCounts::default();
        let mut agree = 0;
        let mut max_diff = 0.0f64;
        for (t, x) in eff.iter().enumerate() {
            let class = per_token[t].1[p];
            ties.add(class);
            if class != RouteClass::Agree {
                continue;
            }
            agree += 1;
            let ref_ids = &reference.ids[t * reference.k..(t + 1) * reference.k];
            for (id, w) in &x.routed {
                if let Some(r) = ref_ids.iter().position(|x| x == id) {
                    max_diff = max_diff.max((w - reference.probs[t * reference.k + r] * rsf).abs());
                }
            }
        }
        comparison.routing_agreement_ref.push(frac(agree));
        comparison.weight_max_diff_ref.push(max_diff);
        comparison.ties_ref.push(ties);
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
    let mut gates = Vec::with_capacity(samples.len());
    for (s, &t) in samples.iter().enumerate() {
        ensure!(t < t_count, "sample token {t} out of {t_count}");
        let x: Vec<f64> = out.sample_hidden[s * h..(s + 1) * h]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let g = shared_gate_f64(shared_gate_w.as_deref(), &x);
        gates.push((t, g));
        ref_rows.extend(reference_output(cfg, &routes[t], &x, g, &mut slot)?);
    }
    let rows = |p: usize| -> Vec<f64> {
        out.paths[p]
            .sample_outputs
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    for p in 0..paths.len() {
        ensure!(
            out.paths[p].sample_outputs.len() == samples.len() * h,
            "path {} returned {} sampled outputs, expected {}",
            p,
            out.paths[p].sample_outputs.len(),
            samples.len() * h
        );
        let r = rows(p);
        comparison
            .output_rel_l2_ref
            .push(rel_l2(r.iter().copied(), ref_rows.iter().copied()));
        comparison
            .token_errors_ref
            .push(token_errors(&r, &ref_rows, h, samples));
    }
    if paths.len() >= 2 {
        let (a, b) = (rows(0), rows(1));
        comparison.output_rel_l2_ab = rel_l2(b.iter().copied(), a.iter().copied());
        comparison.token_errors_ab = Some(token_errors(&b, &a, h, samples));
    }
    comparison.sampled_tokens = samples.len();

    let details = detail_tokens(&comparison, samples, DETAIL_TOKENS)
        .into_iter()
        .map(|t| {
            let r = &routes[t];
            let g = gates
                .iter()
                .find(|x| x.0 == t)
                .map(|x| x.1)
                .unwrap_or_else(|| gate_of(t));
            TokenDetail {
                token: t,
                group_scores: r.group_scores.clone(),
                kept_groups: r.kept_groups.clone(),
                reference: reference_slots(cfg, &r.ids, &r.probs, g),
                paths: effectives
                    .iter()
                    .map(|eff| eff[t].slot_weights(e))
                    .collect(),
                margins: Some(per_token[t].0),
                classes: per_token[t].1.clone(),
            }
        })
        .collect();
    Ok(StepNumerics {
        comparison,
        paths: path_nums,
        details,
    })
}

/// The reference's slots of one token: routed ids with rsf·p, then shared slots with the gate.
pub(crate) fn reference_slots(
    cfg: &MoeConfig,
    ids: &[u32],
    probs: &[f64],
    gate: f64,
) -> SlotWeights {
    let e = cfg.n_routed_experts;
    let mut sw = SlotWeights {
        ids: ids.to_vec(),
        weights: probs
            .iter()
            .map(|p| p * cfg.routed_scaling_factor)
            .collect(),
    };
    for j in 0..cfg.n_shared_experts {
        sw.ids.push((e + j) as u32);
        sw.weights.push(gate);
    }
    sw
}

/// Builds the StepRecord of one step (wall and clock times are filled in by the engine): from the
/// backend's device numerics where it returned them, else computed on the host.
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
    let numerics = match &out.numerics {
        Some(n) if given.is_none() => n.clone(),
        _ => host_numerics(cfg, backend, input, paths, out, given)?,
    };
    ensure!(
        numerics.paths.len() == paths.len() && out.paths.len() == paths.len(),
        "numerics of {} paths and {} runs, expected {}",
        numerics.paths.len(),
        out.paths.len(),
        paths.len()
    );
    let has_shared = cfg.n_shared_experts > 0;
    let mut records = Vec::with_capacity(paths.len());
    for (i, ((spec, run), num)) in paths
        .iter()
        .zip(&out.paths)
        .zip(&numerics.paths)
        .enumerate()
    {
        let finite = out
            .finite
            .merged(&run.finite)
            .at_least(&num.finite_seen)
            .check();
        let mut contract = check_contract(num, has_shared);
        contract.judge_finite(&finite);
        records.push(PathRecord {
            name: PathId::nth(i).with_context(|| {
                format!(
                    "{} paths given; a run compares at most {}",
                    paths.len(),
                    PathId::ALL.len()
                )
            })?,
            spec: spec.clone(),
            load: num.load.clone(),
            routed_weight_sum: num.routed_sum,
            shared_weight: if has_shared { num.shared } else { None },
            contract,
            output: run.output,
            total_us: run.timings.iter().map(|k| k.us).sum(),
            timings: run.timings.clone(),
            clean_us: run.clean_us,
            finite: Some(finite),
        });
    }
    Ok(StepRecord {
        step: input.step,
        tokens: input.tokens,
        backend: backend_kind,
        wall_us: 0.0,
        t_ms: 0.0,
        paths: records,
        comparison: numerics.comparison,
        token_details: numerics.details,
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
