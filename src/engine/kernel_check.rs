//! The CPU half of `check --kernel`: the inputs a user's router kernel is run on (random, golden
//! and adversarial), and the judgement of what it wrote against the reference router and the
//! scaling contract. Each failure names its stage and whether it is a tie-rule difference, a
//! rounding-level near tie or a real error, with one token as an example. No GPU here: the
//! tests judge Rust stand-ins for kernels.
//!
//! Longer than most files: the cases and their judgement are one definition of what `check
//! --kernel` holds a kernel to (the adversarial inputs exist for the classifications below).

use super::config::MoeConfig;
use super::cuda::user_kernel::{Conventions, LogitsDtype, RawOutput, POISON_ID, POISON_WEIGHT};
use super::routing::{self, TokenRoute};
use super::step::Stats;
use super::weights::round_bf16;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;

/// Relative tolerance on each weight (the kernels' weights are f32).
pub const WEIGHT_REL: f64 = 1e-5;
/// Relative distance of two selection values that a float kernel may order either way.
const NEAR_TIE_REL: f64 = 8.0 * f32::EPSILON as f64;

/// One input the kernel is run on.
#[derive(Clone, Debug)]
pub struct Case {
    /// e.g. "random", "exact ties (group and expert)", "golden deepseek-v3-ties".
    pub name: String,
    pub tokens: usize,
    pub dtype: LogitsDtype,
    /// [tokens × E], the values the kernel reads (bf16-representable for a bf16 case).
    pub logits: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    /// [tokens] shared gate, where the model gates its shared expert.
    pub gate: Option<Vec<f32>>,
}

fn normal_logits(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    // Box-Muller: N(0, 2²) without a distribution object that can fail.
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            (2.0 * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

impl Case {
    fn new(
        cfg: &MoeConfig,
        name: &str,
        tokens: usize,
        logits: Vec<f32>,
        bias: Option<Vec<f32>>,
        rng: &mut impl Rng,
    ) -> Case {
        let gate = cfg.shared_expert_gate.then(|| {
            (0..tokens)
                .map(|_| rng.random_range(0.05f32..0.95))
                .collect()
        });
        Case {
            name: name.to_string(),
            tokens,
            dtype: LogitsDtype::F32,
            logits,
            bias: cfg.has_bias.then_some(bias).flatten(),
            gate,
        }
    }

    /// A case from given inputs (a golden file).
    pub fn given(
        cfg: &MoeConfig,
        name: &str,
        logits: Vec<f32>,
        bias: Option<Vec<f32>>,
        dtype: LogitsDtype,
    ) -> Case {
        let tokens = logits.len() / cfg.n_routed_experts.max(1);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        Case {
            dtype,
            ..Case::new(cfg, name, tokens, logits, bias, &mut rng)
        }
    }
}

/// Bias shared by paired experts (2m, 2m+1) and by every group at the same position, so equal
/// logits give exactly equal selection values.
fn paired_bias(cfg: &MoeConfig, rng: &mut impl Rng) -> Vec<f32> {
    let per = cfg.experts_per_group().max(1);
    let levels: Vec<f32> = (0..per.div_ceil(2))
        .map(|_| rng.random_range(-4i32..=4) as f32 / 64.0)
        .collect();
    (0..cfg.n_routed_experts)
        .map(|e| levels[(e % per) / 2])
        .collect()
}

/// The cases of one config: random at several T (1, odd, large), bf16 logits, exact ties at
/// expert and at group level, near ties within one ulp. `large` adds T = 131072.
pub fn cases(cfg: &MoeConfig, rng: &mut impl Rng, large: bool) -> Vec<Case> {
    let e = cfg.n_routed_experts;
    let bias: Vec<f32> = (0..e).map(|_| rng.random_range(-0.05f32..0.05)).collect();
    let mut out = Vec::new();
    let mut sizes = vec![
        (1usize, "random T=1"),
        (37, "random T=37 (odd)"),
        (1000, "random T=1000"),
    ];
    if large {
        sizes.push((131072, "random T=131072"));
    }
    for (t, name) in sizes {
        let logits = normal_logits(rng, t * e);
        out.push(Case::new(cfg, name, t, logits, Some(bias.clone()), rng));
    }
    let bf16: Vec<f32> = normal_logits(rng, 1000 * e)
        .into_iter()
        .map(round_bf16)
        .collect();
    out.push(Case {
        dtype: LogitsDtype::Bf16,
        ..Case::new(
            cfg,
            "bf16 logits T=1000",
            1000,
            bf16,
            Some(bias.clone()),
            rng,
        )
    });
    // Quarters: many exactly equal logits, independent experts.
    let quarters: Vec<f32> = normal_logits(rng, 1000 * e)
        .into_iter()
        .map(|v| (v * 4.0).round() / 4.0)
        .collect();
    let pbias = paired_bias(cfg, rng);
    out.push(Case::new(
        cfg,
        "exact ties (expert) T=1000",
        1000,
        quarters,
        Some(pbias.clone()),
        rng,
    ));
    // Pairs (2m, 2m+1) equal and half the groups copies of another: a group's two best tie,
    // and whole groups tie.
    let per = cfg.experts_per_group();
    let mut paired: Vec<f32> = normal_logits(rng, 1000 * e)
        .into_iter()
        .map(|v| (v * 2.0).round() / 2.0)
        .collect();
    for row in paired.chunks_mut(e) {
        for m in (0..e.saturating_sub(1)).step_by(2) {
            row[m + 1] = row[m];
        }
        if cfg.n_group > 1 {
            for g in (1..cfg.n_group).step_by(2) {
                row.copy_within((g - 1) * per..g * per, g * per);
            }
        }
    }
    out.push(Case::new(
        cfg,
        "exact ties (group and expert) T=1000",
        1000,
        paired,
        Some(pbias),
        rng,
    ));
    // One ulp apart: pairs, and groups copied one ulp up. No bias, so sel = score.
    let mut near = normal_logits(rng, 1000 * e);
    for row in near.chunks_mut(e) {
        for m in (0..e.saturating_sub(1)).step_by(2) {
            row[m + 1] = ulp_step(row[m], rng.random());
        }
        if cfg.n_group > 1 {
            for g in (1..cfg.n_group).step_by(2) {
                for j in 0..per {
                    row[g * per + j] = ulp_step(row[(g - 1) * per + j], true);
                }
            }
        }
    }
    out.push(Case::new(
        cfg,
        "near ties (1 ulp) T=1000",
        1000,
        near,
        Some(vec![0.0; e]),
        rng,
    ));
    out
}

/// The next float up or down.
fn ulp_step(v: f32, up: bool) -> f32 {
    let b = v.to_bits() as i64;
    let d = if (v >= 0.0) == up { 1 } else { -1 };
    if v == 0.0 {
        return if up {
            f32::from_bits(1)
        } else {
            -f32::from_bits(1)
        };
    }
    f32::from_bits((b + d) as u32)
}

/// Where a kernel went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailStage {
    /// Writes outside the outputs, or outputs left unwritten.
    Outputs,
    GroupSelection,
    ExpertSelection,
    Weights,
    SharedSlot,
    Scaling,
}

/// Why it differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailClass {
    /// Exactly equal values ordered by another tie rule than the reference's.
    TieRule,
    /// Values within a rounding of each other: a float kernel may order them either way.
    NearTie,
    RealError,
}

/// What one token shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    GuardWritten {
        buffer: String,
        offset: i64,
    },
    Unwritten {
        column: usize,
    },
    IdOutOfRange {
        column: usize,
        id: i64,
        limit: usize,
    },
    Duplicate {
        id: i64,
    },
    SharedIdInRoutedColumn {
        column: usize,
        id: i64,
    },
    WrongSharedColumn {
        column: usize,
        id: i64,
        expected: usize,
    },
    Groups {
        expected: Vec<u32>,
        got: Vec<u32>,
    },
    Experts {
        expected: Vec<u32>,
        got: Vec<u32>,
    },
    RoutedWeight {
        id: u32,
        got: f64,
        expected: f64,
    },
    RoutedSum {
        got: f64,
        expected: f64,
    },
    SharedWeight {
        slot: usize,
        got: f64,
        expected: f64,
    },
}

/// One kind of failure over a case: how many tokens, and the first as the example.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    pub stage: FailStage,
    pub class: FailClass,
    pub tokens: usize,
    /// Token of the example (None for a guard band).
    pub token: Option<usize>,
    pub example: Finding,
}

/// The effective weights against the contract over a case.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ContractVerdict {
    pub ok: bool,
    pub routed_sum: Stats,
    pub expected_routed_sum: Stats,
    pub shared: Option<Stats>,
    pub expected_shared: Option<Stats>,
}

/// What one case showed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseReport {
    pub case: String,
    pub tokens: usize,
    /// Fraction of tokens whose routed id set equals the reference's.
    pub agreement: f64,
    /// Largest relative routed-weight difference over agreeing tokens.
    pub weight_max_rel: f64,
    pub contract: ContractVerdict,
    pub failures: Vec<Failure>,
}

impl CaseReport {
    /// Whether the case fails: any failure except near ties (unless `strict`).
    pub fn failed(&self, strict: bool) -> bool {
        self.failures
            .iter()
            .any(|f| strict || f.class != FailClass::NearTie)
    }
}

/// Collects failures by (stage, class), keeping the first token as the example.
#[derive(Default)]
struct Tally(BTreeMap<(FailStage, FailClass), (usize, Option<usize>, Finding)>);

impl Tally {
    fn add(&mut self, stage: FailStage, class: FailClass, token: Option<usize>, f: Finding) {
        self.0.entry((stage, class)).or_insert((0, token, f)).0 += 1;
    }
    fn into_failures(self) -> Vec<Failure> {
        self.0
            .into_iter()
            .map(|((stage, class), (tokens, token, example))| Failure {
                stage,
                class,
                tokens,
                token,
                example,
            })
            .collect()
    }
}

/// Judges what the kernel wrote for `case` (shared columns already appended by moescope where
/// the kernel leaves them).
pub fn judge(cfg: &MoeConfig, conv: Conventions, case: &Case, out: &RawOutput) -> CaseReport {
    let (e, k, s) = (
        cfg.n_routed_experts,
        cfg.num_experts_per_tok,
        cfg.n_shared_experts,
    );
    let stride = k + s;
    let rsf = cfg.routed_scaling_factor;
    let out_scale = conv.out_scale(rsf);
    let reference = route_all(cfg, case);
    let mut tally = Tally::default();
    for (buffer, offset) in &out.guard_hits {
        let f = Finding::GuardWritten {
            buffer: buffer.to_string(),
            offset: *offset,
        };
        tally.add(FailStage::Outputs, FailClass::RealError, None, f);
    }
    let (mut agree, mut wmax) = (0usize, 0.0f64);
    let (mut sums, mut want_sums, mut shared, mut want_shared) = (vec![], vec![], vec![], vec![]);
    // Weight deviations (token, finding, ratio) decided after all tokens: uniform = scaling.
    let (mut routed_dev, mut shared_dev) = (Vec::new(), Vec::new());
    for (t, r) in reference.iter().enumerate() {
        let ids = &out.ids[t * stride..(t + 1) * stride];
        let ws = &out.weights[t * stride..(t + 1) * stride];
        if let Some((stage, f)) = slot_problem(e, k, s, ids, ws) {
            tally.add(stage, FailClass::RealError, Some(t), f);
            continue;
        }
        let gate = case.gate.as_ref().map_or(1.0, |g| g[t] as f64);
        let eff = |c: usize| ws[c] as f64 * out_scale;
        let routed_sum: f64 = (0..k).map(eff).sum();
        let want_sum: f64 = r.probs.iter().sum::<f64>() * rsf;
        sums.push(routed_sum);
        want_sums.push(want_sum);
        for j in 0..s {
            let (got, want) = (eff(k + j), gate);
            shared.push(got);
            want_shared.push(want);
            if rel(got, want) > WEIGHT_REL {
                shared_dev.push((
                    t,
                    Finding::SharedWeight {
                        slot: e + j,
                        got,
                        expected: want,
                    },
                    got / want,
                ));
            }
        }
        let mut got: Vec<u32> = ids[..k].iter().map(|&i| i as u32).collect();
        got.sort_unstable();
        let mut want: Vec<u32> = r.ids.clone();
        want.sort_unstable();
        if got != want {
            let (stage, class, f) = classify(cfg, case, t, r, &got);
            tally.add(stage, class, Some(t), f);
            continue;
        }
        agree += 1;
        let (d, dev) = routed_weights(r, &ids[..k], &ws[..k], out_scale, rsf);
        wmax = wmax.max(d);
        if let Some((f, ratio)) = dev {
            routed_dev.push((t, f, ratio));
        }
    }
    for devs in [routed_dev, shared_dev] {
        // One factor for every token: a scaling bug; anything else: the weights themselves.
        let first = devs.first().map(|d| d.2);
        let uniform = first.is_some_and(|r0| devs.iter().all(|d| rel(d.2, r0) < 1e-4));
        for (t, f, _) in devs {
            let stage = if uniform {
                FailStage::Scaling
            } else {
                FailStage::Weights
            };
            tally.add(stage, FailClass::RealError, Some(t), f);
        }
    }
    let contract = verdict(&sums, &want_sums, &shared, &want_shared, s > 0);
    CaseReport {
        case: case.name.clone(),
        tokens: case.tokens,
        agreement: agree as f64 / case.tokens.max(1) as f64,
        weight_max_rel: wmax,
        contract,
        failures: tally.into_failures(),
    }
}

/// The routed weights of a token whose ids agree: the largest relative difference, and where one
/// exceeds the tolerance the finding with its factor (the routed sum's factor when every weight
/// is off by it: a scaling; NaN otherwise).
fn routed_weights(
    r: &TokenRoute,
    ids: &[i32],
    ws: &[f32],
    out_scale: f64,
    rsf: f64,
) -> (f64, Option<(Finding, f64)>) {
    let (mut dmax, mut worst) = (0.0f64, None);
    let (mut sum, mut want_sum) = (0.0, 0.0);
    for (&id, &w) in ids.iter().zip(ws) {
        let id = id as u32;
        let p = r
            .ids
            .iter()
            .position(|&x| x == id)
            .map_or(0.0, |i| r.probs[i]);
        let (g, want) = (w as f64 * out_scale, p * rsf);
        sum += g;
        want_sum += want;
        let d = rel(g, want);
        if d > dmax {
            dmax = d;
            worst = Some((
                Finding::RoutedWeight {
                    id,
                    got: g,
                    expected: want,
                },
                g / want,
            ));
        }
    }
    if dmax <= WEIGHT_REL {
        return (dmax, None);
    }
    let ratio = sum / want_sum;
    let uniform = ids.iter().zip(ws).all(|(&id, &w)| {
        let p = r
            .ids
            .iter()
            .position(|&x| x == id as u32)
            .map_or(0.0, |i| r.probs[i]);
        rel(w as f64 * out_scale / (p * rsf), ratio) < 1e-4
    });
    let dev = if uniform {
        (
            Finding::RoutedSum {
                got: sum,
                expected: want_sum,
            },
            ratio,
        )
    } else {
        worst.map_or(
            (
                Finding::RoutedSum {
                    got: sum,
                    expected: want_sum,
                },
                f64::NAN,
            ),
            |(f, _)| (f, f64::NAN),
        )
    };
    (dmax, Some(dev))
}

fn route_all(cfg: &MoeConfig, case: &Case) -> Vec<TokenRoute> {
    use rayon::prelude::*;
    case.logits
        .par_chunks(cfg.n_routed_experts)
        .map(|row| routing::route_token(cfg, row, case.bias.as_deref(), cfg.num_experts_per_tok))
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        return f64::INFINITY;
    }
    (a - b).abs() / b.abs().max(1e-12)
}

/// Element-level problems of one token's row: unwritten, out of range, duplicated, shared
/// columns wrong. The first found, with its stage.
fn slot_problem(
    e: usize,
    k: usize,
    s: usize,
    ids: &[i32],
    ws: &[f32],
) -> Option<(FailStage, Finding)> {
    for (c, (&id, &w)) in ids.iter().zip(ws).enumerate() {
        if id as u32 == POISON_ID || w.to_bits() == POISON_WEIGHT {
            return Some((FailStage::Outputs, Finding::Unwritten { column: c }));
        }
    }
    for (c, &id) in ids.iter().enumerate() {
        let stage = if c < k {
            FailStage::ExpertSelection
        } else {
            FailStage::SharedSlot
        };
        if id < 0 || id as usize >= e + s {
            return Some((
                stage,
                Finding::IdOutOfRange {
                    column: c,
                    id: id as i64,
                    limit: e + s,
                },
            ));
        }
    }
    for (c, &id) in ids[..k].iter().enumerate() {
        if id as usize >= e {
            return Some((
                FailStage::SharedSlot,
                Finding::SharedIdInRoutedColumn {
                    column: c,
                    id: id as i64,
                },
            ));
        }
    }
    for j in 0..s {
        if ids[k + j] as usize != e + j {
            let f = Finding::WrongSharedColumn {
                column: k + j,
                id: ids[k + j] as i64,
                expected: e + j,
            };
            return Some((FailStage::SharedSlot, f));
        }
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Some((
            FailStage::ExpertSelection,
            Finding::Duplicate { id: w[0] as i64 },
        ));
    }
    None
}

/// Selection values of one token as the reference computes them.
fn sel_of(cfg: &MoeConfig, case: &Case, t: usize) -> Vec<f32> {
    let e = cfg.n_routed_experts;
    let mut scores = vec![0.0f32; e];
    routing::scores_into(
        cfg.scoring_func,
        &case.logits[t * e..(t + 1) * e],
        &mut scores,
    );
    match &case.bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores,
    }
}

/// Which of two differing values' orders the tie rule decides: equal, within a rounding, or not.
fn order_class(a: f32, b: f32) -> FailClass {
    if a == b {
        FailClass::TieRule
    } else if ((a - b).abs() as f64) <= NEAR_TIE_REL * (a.abs().max(b.abs()) as f64).max(1e-30) {
        FailClass::NearTie
    } else {
        FailClass::RealError
    }
}

/// A routed id set that differs from the reference's: group or expert stage, and its class.
fn classify(
    cfg: &MoeConfig,
    case: &Case,
    t: usize,
    r: &TokenRoute,
    got: &[u32],
) -> (FailStage, FailClass, Finding) {
    let sel = sel_of(cfg, case, t);
    let per = cfg.experts_per_group() as u32;
    let mut expected = r.ids.clone();
    expected.sort_unstable();
    if cfg.n_group > 1 {
        let mut groups: Vec<u32> = got.iter().map(|&i| i / per).collect();
        groups.sort_unstable();
        groups.dedup();
        // The kernel kept another group: one of its experts is outside the kept groups, or a
        // missed expert's group holds none of the kernel's experts.
        let outside = groups.iter().any(|g| !r.kept_groups.contains(g));
        let dropped = expected
            .iter()
            .any(|m| !got.contains(m) && !groups.contains(&(m / per)));
        if outside || dropped {
            let mut kept = r.kept_groups.clone();
            kept.sort_unstable();
            let class = group_class(cfg, r, &sel, &groups);
            let f = Finding::Groups {
                expected: kept,
                got: groups,
            };
            return (FailStage::GroupSelection, class, f);
        }
    }
    let best_extra = got
        .iter()
        .filter(|i| !expected.contains(i))
        .map(|&i| sel[i as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    let worst_missed = expected
        .iter()
        .filter(|i| !got.contains(i))
        .map(|&i| sel[i as usize])
        .fold(f32::INFINITY, f32::min);
    let class = order_class(best_extra, worst_missed);
    (
        FailStage::ExpertSelection,
        class,
        Finding::Experts {
            expected,
            got: got.to_vec(),
        },
    )
}

/// A group-level difference: the reference's boundary groups tied (exactly or within a
/// rounding), or the kernel's groups are the best under the other tie rule for a group's tied
/// best experts; else a real error.
fn group_class(cfg: &MoeConfig, r: &TokenRoute, sel: &[f32], groups: &[u32]) -> FailClass {
    let mut scores: Vec<f32> = r.group_scores.clone();
    scores.sort_by(|a, b| b.total_cmp(a));
    let n = cfg.topk_group;
    let class = match (scores.get(n - 1), scores.get(n)) {
        (Some(&last_kept), Some(&first_out)) => order_class(first_out, last_kept),
        _ => FailClass::RealError,
    };
    if class == FailClass::RealError && tied_top_rule_explains(cfg, sel, groups) {
        return FailClass::TieRule;
    }
    class
}

/// Whether the kernel's groups are the best under the other common tie rule for a group's two
/// tied best experts: counting them once (the second is the best value below the maximum).
fn tied_top_rule_explains(cfg: &MoeConfig, sel: &[f32], groups: &[u32]) -> bool {
    if !cfg.has_bias {
        return false;
    }
    let per = cfg.experts_per_group();
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let scores: Vec<f32> = (0..cfg.n_group)
        .map(|g| {
            let grp = &sel[g * per..(g + 1) * per];
            let first = grp
                .iter()
                .copied()
                .map(key)
                .fold(f32::NEG_INFINITY, f32::max);
            let second = grp
                .iter()
                .copied()
                .map(key)
                .filter(|&v| v < first)
                .fold(f32::NEG_INFINITY, f32::max);
            first + second
        })
        .collect();
    let kept = routing::top_k(&scores, 0..cfg.n_group, cfg.topk_group);
    groups.iter().all(|g| kept.contains(&(*g as usize)))
}

fn verdict(
    sums: &[f64],
    want: &[f64],
    shared: &[f64],
    want_shared: &[f64],
    has_shared: bool,
) -> ContractVerdict {
    let tol = super::compare::CONTRACT_TOLERANCE;
    let ok_pairs = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| rel(*x, *y) <= tol);
    ContractVerdict {
        ok: ok_pairs(sums, want) && ok_pairs(shared, want_shared),
        routed_sum: Stats::of(sums.iter().copied()),
        expected_routed_sum: Stats::of(want.iter().copied()),
        shared: has_shared.then(|| Stats::of(shared.iter().copied())),
        expected_shared: has_shared.then(|| Stats::of(want_shared.iter().copied())),
    }
}

#[cfg(test)]
#[path = "kernel_check_tests.rs"]
mod tests;
