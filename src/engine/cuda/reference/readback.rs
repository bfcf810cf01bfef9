//! Reading the device reference's results back: the column summaries (`ref_summarize`, one row
//! of SUMMARY_LEN doubles per column), the step's numerics built from them, and the drill-down
//! tokens' rows.

use super::{DeviceReference, RouteCol, RowCol, ROW_COLS, SUMMARY_LEN};
use crate::engine::compare::{effective_slots, reference_slots};
use crate::engine::cuda::gpu::Gpu;
use crate::engine::finite::{FiniteCounts, FiniteStage};
use crate::engine::numerics::{
    MarginSummary, PathNumerics, RouteClass, StepNumerics, TieCounts, TokenDist, TokenErrors,
    TokenMargins, WORST_TOKENS,
};
use crate::engine::step::{Comparison, Stats, TokenDetail};
use anyhow::{Context, Result};

/// The column summaries of one step, as downloaded.
pub(super) struct Summaries<'a> {
    pub all: &'a [f64],
    pub nrc: usize,
    pub n_route: usize,
}

/// One column's summary.
struct Summary<'a>(&'a [f64]);

impl Summary<'_> {
    fn sum(&self) -> f64 {
        self.0[0]
    }
    fn min(&self) -> f64 {
        self.0[1]
    }
    fn max(&self) -> f64 {
        self.0[2]
    }
    fn nans(&self) -> usize {
        self.0[5] as usize
    }
    fn zeros(&self) -> usize {
        self.0[6] as usize
    }
    /// Indices (into the column) of the worst entries with their values, worst first.
    fn worst(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        (0..WORST_TOKENS)
            .map(|q| (self.0[7 + q], self.0[7 + WORST_TOKENS + q]))
            .filter(|(i, _)| *i >= 0.0)
            .map(|(i, v)| (i as usize, v))
    }
    /// Mean, min and max over `n` entries (NaN entries make the mean NaN, as Stats::of).
    fn stats(&self, n: usize) -> Stats {
        if n == 0 {
            return Stats::default();
        }
        Stats {
            mean: self.sum() / n as f64,
            min: self.min(),
            max: self.max(),
        }
    }
    /// The distribution, with column indices mapped to tokens.
    fn dist(&self, tokens: &[usize]) -> TokenDist {
        TokenDist {
            p50: self.0[3],
            p99: self.0[4],
            max: if self.nans() > 0 {
                f64::NAN
            } else {
                self.max()
            },
            worst: self.worst().map(|(i, _)| tokens[i]).collect(),
        }
    }
}

impl Summaries<'_> {
    fn at(&self, i: usize) -> Summary<'_> {
        Summary(&self.all[i * SUMMARY_LEN..(i + 1) * SUMMARY_LEN])
    }
    fn route(&self, path: usize, c: RouteCol) -> Summary<'_> {
        self.at(path * self.nrc + c as usize)
    }
    fn shared(&self, path: usize, j: usize) -> Summary<'_> {
        self.at(path * self.nrc + RouteCol::Shared0 as usize + j)
    }
    fn ab_sets(&self) -> Summary<'_> {
        self.at(self.n_route - 1)
    }
    fn margin(&self, group: bool) -> Summary<'_> {
        self.at(self.n_route + group as usize)
    }
    fn row(&self, slot: usize, c: RowCol) -> Summary<'_> {
        self.at(self.n_route + 2 + slot * ROW_COLS + c as usize)
    }
}

/// Relative L2 from the summed squares, as `compare::rel_l2`.
fn rel_l2(diff2: f64, norm2: f64) -> f64 {
    if norm2 == 0.0 {
        diff2.sqrt()
    } else {
        (diff2 / norm2).sqrt()
    }
}

/// The margins' summary from their two columns (+inf: no boundary).
fn margin_summary(expert: &Summary, group: &Summary) -> MarginSummary {
    let some = |v: f64| (v.is_finite()).then_some(v);
    MarginSummary {
        expert_min: some(expert.min()),
        expert_p50: some(expert.0[3]),
        expert_ties: expert.zeros(),
        group_min: some(group.min()),
        group_p50: some(group.0[3]),
        group_ties: group.zeros(),
    }
}

impl DeviceReference {
    /// The step's numerics from the column summaries and the loads.
    pub(super) fn assemble(&self, s: &Summaries, load: &[u32]) -> Result<StepNumerics> {
        let cfg = &self.cfg;
        let (t, e, slots, sh) = (
            self.t,
            cfg.n_routed_experts,
            cfg.total_slots(),
            cfg.n_shared_experts,
        );
        let frac = |x: f64| if t == 0 { 1.0 } else { x / t as f64 };
        let errors = |slot: usize| TokenErrors {
            rel_l2: s.row(slot, RowCol::RelL2).dist(&self.tokens),
            max_abs: s.row(slot, RowCol::MaxAbs).dist(&self.tokens),
        };
        let rel = |slot: usize| {
            rel_l2(
                s.row(slot, RowCol::Diff2).sum(),
                s.row(slot, RowCol::Norm2).sum(),
            )
        };
        let mut c = Comparison {
            sampled_tokens: self.n,
            routing_agreement_ab: 1.0,
            margins: Some(margin_summary(&s.margin(false), &s.margin(true))),
            ..Comparison::default()
        };
        let mut paths = Vec::with_capacity(self.paths);
        let mut disagree = Vec::new();
        for p in 0..self.paths {
            let run = self.runs[p].context("a path was not compared")?;
            let count = |col: RouteCol| s.route(p, col).sum() as usize;
            c.routing_agreement_ref
                .push(frac(s.route(p, RouteCol::Agree).sum()));
            c.weight_max_diff_ref
                .push(s.route(p, RouteCol::WeightDiff).max());
            c.ties_ref.push(TieCounts {
                exact: count(RouteCol::Exact),
                near: count(RouteCol::Near),
                real: count(RouteCol::Real),
            });
            for col in [RouteCol::Exact, RouteCol::Near, RouteCol::Real] {
                let worst = s.route(p, col);
                disagree.extend(worst.worst().filter(|w| w.1 > 0.0).map(|w| w.0));
            }
            c.output_rel_l2_ref.push(rel(p));
            c.token_errors_ref.push(errors(p));
            let mut l = load[p * slots..(p + 1) * slots].to_vec();
            if !run.sep.is_null() {
                l[e..].iter_mut().for_each(|x| *x += t as u32);
            }
            let shared = (sh > 0).then(|| {
                let cols: Vec<Summary> = (0..sh).map(|j| s.shared(p, j)).collect();
                Stats {
                    mean: cols.iter().map(|c| c.sum()).sum::<f64>() / (t * sh).max(1) as f64,
                    min: cols.iter().map(|c| c.min()).fold(f64::INFINITY, f64::min),
                    max: cols
                        .iter()
                        .map(|c| c.max())
                        .fold(f64::NEG_INFINITY, f64::max),
                }
            });
            // Tokens whose routed weights were not finite (the device counts no more of them).
            let mut finite_seen = FiniteCounts::default();
            let bad_weights = s.route(p, RouteCol::RoutedSum).nans() as u64;
            finite_seen.add(FiniteStage::Router, bad_weights);
            paths.push(PathNumerics {
                finite_seen,
                load: l,
                routed_sum: s.route(p, RouteCol::RoutedSum).stats(t),
                routed_sum_expected: s.route(p, RouteCol::RoutedWant).stats(t),
                shared,
                shared_expected: (sh > 0).then(|| s.route(p, RouteCol::Gate).stats(t)),
                routed_max_dev: s.route(p, RouteCol::RoutedDev).max(),
                shared_max_dev: s.route(p, RouteCol::SharedDev).max(),
            });
        }
        if self.paths >= 2 {
            c.routing_agreement_ab = frac(s.ab_sets().sum());
            c.output_rel_l2_ab = rel(self.paths);
            c.token_errors_ab = Some(errors(self.paths));
        }
        disagree.sort_unstable();
        disagree.dedup();
        disagree.truncate(WORST_TOKENS);
        c.disagreeing_tokens = disagree;
        Ok(StepNumerics {
            comparison: c,
            paths,
            details: Vec::new(),
        })
    }

    /// One drill-down token, read back row by row (a few hundred bytes).
    pub(super) fn detail(&self, gpu: &Gpu, tok: usize) -> Result<TokenDetail> {
        let cfg = &self.cfg;
        let (t, k, e, g) = (
            self.t,
            cfg.num_experts_per_tok,
            cfg.n_routed_experts,
            cfg.n_group,
        );
        let ids = gpu.download_at(&self.ids, tok * k, k, "reference ids")?;
        let probs = gpu.download_at(&self.probs, tok * k, k, "reference probabilities")?;
        let (group_scores, kept_groups) = if g > 1 {
            let tg = cfg.topk_group;
            (
                gpu.download_at(&self.gscore, tok * g, g, "reference group scores")?,
                gpu.download_at(&self.kept, tok * tg, tg, "reference kept groups")?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let m = gpu.download_at(&self.margins, tok, 1, "reference margins")?[0];
        let mg = gpu.download_at(&self.margins, t + tok, 1, "reference margins")?[0];
        let gate = match self.tokens.binary_search(&tok) {
            _ if cfg.n_shared_experts == 0 => 1.0,
            Ok(i) => gpu.download_at(&self.gate, i, 1, "reference shared gate")?[0],
            Err(_) => {
                let at = RouteCol::Gate as usize * t + tok;
                gpu.download_at(&self.route_cols, at, 1, "shared gate")?[0]
            }
        };
        let mut paths = Vec::with_capacity(self.paths);
        let mut classes = Vec::with_capacity(self.paths);
        for p in 0..self.paths {
            let run = self.runs[p].context("a path was not compared")?;
            let at = p * t * self.spt_max + tok * run.spt;
            let pid = gpu.download_at(&self.kept_ids, at, run.spt, "slot ids")?;
            let pw = gpu.download_at(&self.kept_w, at, run.spt, "slot weights")?;
            let sep = if run.sep.is_null() {
                None
            } else {
                Some(gpu.download_at(&self.kept_sep, p * t + tok, 1, "separate weights")?[0])
            };
            let eff = effective_slots(cfg, &pid, &pw, run.out_scale, sep);
            paths.push(eff.slot_weights(e));
            let class = gpu.download_at(&self.classes, p * t + tok, 1, "routing classes")?[0];
            classes.push(RouteClass::from_code(class));
        }
        Ok(TokenDetail {
            token: tok,
            group_scores,
            kept_groups,
            reference: reference_slots(cfg, &ids, &probs, gate),
            paths,
            margins: Some(TokenMargins::from_raw(m, mg)),
            classes,
        })
    }
}
