//! The numerics of one step, one type for both backends: `StepNumerics` is what the CPU computes
//! on the host (`compare::host_numerics`) and the GPU reduces on the device
//! (`cuda::reference`), and `compare::assemble` turns either into the StepRecord. The rules both
//! follow live here: the quantile ranks, the worst-token order, the tie classes and margins.

use super::config::MoeConfig;
use super::finite::FiniteCounts;
use super::paths::LogitsDtype;
use super::step::{Comparison, Stats, TokenDetail};
pub use super::step::{MarginSummary, RouteClass, TieCounts, TokenDist, TokenErrors, TokenMargins};

/// Tokens listed as the worst of a per-token quantity.
pub const WORST_TOKENS: usize = 8;

/// A disagreement within this many ulps (of the f32 selection value at the boundary) is a near
/// tie: rounding, not a different rule or a bug.
pub const NEAR_TIE_ULPS: u32 = 4;

/// The near-tie width, in f32 ulps at the boundary, for a path whose router read logits of
/// `logits`: NEAR_TIE_ULPS ulps of that type. A bf16 ulp is 2^16 f32 ulps (7 mantissa bits, not
/// 23), so a token that bf16 rounding moved to another expert is a near tie, not a real error.
pub fn near_tie_ulps(logits: LogitsDtype) -> u32 {
    match logits {
        LogitsDtype::F32 => NEAR_TIE_ULPS,
        LogitsDtype::Bf16 => NEAR_TIE_ULPS << 16,
    }
}

impl RouteClass {
    /// The device's encoding (kernels/reference.cu `ref_compare_routes`).
    pub fn from_code(c: u8) -> RouteClass {
        match c {
            0 => RouteClass::Agree,
            1 => RouteClass::ExactTie,
            2 => RouteClass::NearTie,
            _ => RouteClass::Real,
        }
    }
}

impl TieCounts {
    pub fn add(&mut self, c: RouteClass) {
        match c {
            RouteClass::Agree => {}
            RouteClass::ExactTie => self.exact += 1,
            RouteClass::NearTie => self.near += 1,
            RouteClass::Real => self.real += 1,
        }
    }
}

/// The rank (ascending, 0-based) of quantile `q` among `n` values: the lower nearest rank. The
/// device computes the same expression (`ref_summarize`).
pub fn quantile_rank(n: usize, q: f64) -> usize {
    if n == 0 {
        0
    } else {
        (q * (n - 1) as f64) as usize
    }
}

/// Total order of the per-token quantities: NaN above everything.
fn order_key(v: f64) -> (bool, f64) {
    (v.is_nan(), if v.is_nan() { 0.0 } else { v })
}

impl TokenDist {
    /// The distribution of `values`, where `values[i]` belongs to token `tokens[i]`.
    pub fn of(values: &[f64], tokens: &[usize]) -> TokenDist {
        let n = values.len();
        if n == 0 {
            return TokenDist::default();
        }
        let mut idx: Vec<usize> = (0..n).collect();
        // Ascending by value, ties by index: the device's radix select gives the same element.
        idx.sort_by(|&a, &b| {
            order_key(values[a])
                .partial_cmp(&order_key(values[b]))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let at = |q: f64| values[idx[quantile_rank(n, q)]];
        let max = if values.iter().any(|v| v.is_nan()) {
            f64::NAN
        } else {
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        };
        let mut worst: Vec<usize> = idx.clone();
        worst.sort_by(|&a, &b| {
            order_key(values[b])
                .partial_cmp(&order_key(values[a]))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        worst.truncate(WORST_TOKENS);
        TokenDist {
            p50: at(0.5),
            p99: at(0.99),
            max,
            worst: worst.into_iter().map(|i| tokens[i]).collect(),
        }
    }
}

impl TokenMargins {
    /// From the device's encoding: +inf where there is no boundary.
    pub fn from_raw(expert: f64, group: f64) -> TokenMargins {
        let some = |v: f64| (v != f64::INFINITY).then_some(v);
        TokenMargins {
            expert: some(expert),
            group: some(group),
        }
    }
}

impl MarginSummary {
    /// Over every token's margins (host side).
    pub fn of(margins: &[TokenMargins]) -> MarginSummary {
        let level = |get: &dyn Fn(&TokenMargins) -> Option<f64>| {
            let mut v: Vec<f64> = margins.iter().filter_map(get).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            let ties = v.iter().filter(|&&m| m == 0.0).count();
            let p50 = (!v.is_empty()).then(|| v[quantile_rank(v.len(), 0.5)]);
            (v.first().copied(), p50, ties)
        };
        let (expert_min, expert_p50, expert_ties) = level(&|m| m.expert);
        let (group_min, group_p50, group_ties) = level(&|m| m.group);
        MarginSummary {
            expert_min,
            expert_p50,
            expert_ties,
            group_min,
            group_p50,
            group_ties,
        }
    }
}

/// Gap between two selection values, better minus worse, in f64; equal keys are no gap (NaN
/// counts as -inf, as in routing).
fn gap(better: f32, worse: f32) -> f64 {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let (a, b) = (key(better), key(worse));
    if a == b {
        0.0
    } else {
        a as f64 - b as f64
    }
}

/// One token's reference routing with what margins and classes need: selection values, group
/// scores, kept groups (best first) and chosen experts (best first).
pub struct RefToken<'a> {
    pub sel: &'a [f32],
    pub group_scores: &'a [f32],
    pub kept_groups: &'a [u32],
    pub ids: &'a [u32],
}

impl RefToken<'_> {
    fn candidate(&self, cfg: &MoeConfig, e: usize) -> bool {
        cfg.n_group <= 1
            || self
                .kept_groups
                .contains(&((e / cfg.experts_per_group()) as u32))
    }

    /// The expert- and group-level margins (kernels/reference.cu `ref_route` computes the same).
    pub fn margins(&self, cfg: &MoeConfig) -> TokenMargins {
        let best_other = |values: &[f32], skip: &dyn Fn(usize) -> bool| {
            (0..values.len())
                .filter(|&i| !skip(i))
                .map(|i| values[i])
                .reduce(|a, b| if gap(b, a) > 0.0 { b } else { a })
        };
        let expert = self.ids.last().and_then(|&last| {
            let skip = |i: usize| self.ids.contains(&(i as u32)) || !self.candidate(cfg, i);
            let at = self.sel.get(last as usize)?;
            best_other(self.sel, &skip).map(|v| gap(*at, v))
        });
        let group = match (cfg.n_group > 1, self.kept_groups.last()) {
            (true, Some(&last)) => self.group_scores.get(last as usize).and_then(|&at| {
                let skip = |g: usize| self.kept_groups.contains(&(g as u32));
                best_other(self.group_scores, &skip).map(|v| gap(at, v))
            }),
            _ => None,
        };
        TokenMargins { expert, group }
    }

    /// How a path's routed ids for this token compare with the reference's (the device's
    /// `ref_compare_routes` follows the same rule).
    /// `near_ulps`: the near-tie width in f32 ulps (`near_tie_ulps`).
    pub fn classify(&self, cfg: &MoeConfig, path_ids: &[u32], near_ulps: u32) -> RouteClass {
        let mut distinct: Vec<u32> = path_ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != self.ids.len() {
            return RouteClass::Real;
        }
        if distinct.iter().all(|id| self.ids.contains(id)) {
            return RouteClass::Agree;
        }
        let per = cfg.experts_per_group();
        let last_sel = self
            .ids
            .last()
            .and_then(|&i| self.sel.get(i as usize).copied());
        let last_gs = self
            .kept_groups
            .last()
            .and_then(|&g| self.group_scores.get(g as usize).copied());
        // The first cause decides: where the path chose from a group the reference did not
        // keep, the groups' scores do (the experts it displaced follow from the group swap);
        // otherwise the experts' selection values.
        let extra: Vec<u32> = path_ids
            .iter()
            .copied()
            .filter(|p| !self.ids.contains(p))
            .collect();
        let swapped = extra.iter().any(|&p| !self.candidate(cfg, p as usize));
        let mut class = RouteClass::ExactTie;
        for &p in &extra {
            let kept = self.candidate(cfg, p as usize);
            if swapped && kept {
                continue;
            }
            let (thr, v) = if kept {
                (last_sel, self.sel.get(p as usize).copied())
            } else {
                (last_gs, self.group_scores.get(p as usize / per).copied())
            };
            let (Some(thr), Some(v)) = (thr, v) else {
                return RouteClass::Real;
            };
            let g = gap(thr, v);
            let at = thr.abs();
            let ulp = (f32::from_bits(at.to_bits() + 1) - at) as f64;
            let c = if g == 0.0 {
                RouteClass::ExactTie
            } else if g.is_finite() && ulp.is_finite() && g <= near_ulps as f64 * ulp {
                RouteClass::NearTie
            } else {
                RouteClass::Real
            };
            class = class.max(c);
        }
        class
    }
}

/// Load, effective weights and contract aggregates of one path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PathNumerics {
    /// Non-finite values the numerics saw in this path's data (the backend's own counts are
    /// merged in when the record is assembled).
    pub finite_seen: FiniteCounts,
    /// Tokens per slot (E routed, then S shared; a separate shared MLP counts every token).
    pub load: Vec<u32>,
    /// Effective routed-weight sum per token, and what the reference expects.
    pub routed_sum: Stats,
    pub routed_sum_expected: Stats,
    /// Effective weight on each shared expert per token, and the expected (the shared gate).
    pub shared: Option<Stats>,
    pub shared_expected: Option<Stats>,
    /// Largest relative |effective − expected| over tokens (routed sum; shared weights).
    pub routed_max_dev: f64,
    pub shared_max_dev: f64,
}

/// Everything one step's comparison produced, before it becomes part of the StepRecord.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepNumerics {
    pub comparison: Comparison,
    pub paths: Vec<PathNumerics>,
    pub details: Vec<TokenDetail>,
}

/// Drill-down tokens: the worst of each output comparison and of each disagreement, then the
/// spread `sample` until there are `max` (ascending).
pub fn detail_tokens(comparison: &Comparison, sample: &[usize], max: usize) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::new();
    let take = |t: usize, picked: &mut Vec<usize>| {
        if picked.len() < max && !picked.contains(&t) {
            picked.push(t);
        }
    };
    for e in comparison
        .token_errors_ref
        .iter()
        .chain(comparison.token_errors_ab.iter())
    {
        for &t in e.rel_l2.worst.iter().take(2) {
            take(t, &mut picked);
        }
    }
    for &t in comparison.disagreeing_tokens.iter().take(4) {
        take(t, &mut picked);
    }
    for &t in sample {
        take(t, &mut picked);
    }
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_worst_tokens_follow_the_device_rule() {
        let v = [0.3, 0.1, f64::NAN, 0.2, 0.2];
        let d = TokenDist::of(&v, &[10, 11, 12, 13, 14]);
        // Ascending: 0.1 0.2 0.2 0.3 NaN; rank(0.5) = 2, rank(0.99) = 3.
        assert_eq!(d.p50, 0.2);
        assert_eq!(d.p99, 0.3);
        assert!(d.max.is_nan());
        assert_eq!(d.worst, vec![12, 10, 13, 14, 11]);
        assert_eq!(quantile_rank(256, 0.99), 252);
        assert_eq!(TokenDist::of(&[], &[]), TokenDist::default());
    }

    fn cfg() -> MoeConfig {
        MoeConfig {
            n_routed_experts: 8,
            n_group: 2,
            topk_group: 1,
            num_experts_per_tok: 2,
            ..MoeConfig::preset("deepseek-v3").unwrap()
        }
    }

    /// A path that kept another group than the reference, by a near tie of the group scores,
    /// is a near tie even where the experts it then took are far below the reference's boundary.
    #[test]
    fn a_group_swap_is_classed_by_the_groups() {
        let cfg = MoeConfig {
            n_routed_experts: 12,
            n_group: 3,
            topk_group: 2,
            ..cfg()
        };
        let gs_near = f32::from_bits(1.0f32.to_bits() - 1);
        // Reference: groups 0 and 1 kept (1.0 each), group 2 just below; experts 0 and 4.
        let sel = [0.9, 0.1, 0.1, 0.1, 0.8, 0.2, 0.1, 0.1, 0.7, 0.1, 0.1, 0.1];
        let gs = [1.0, 1.0, gs_near];
        let r = RefToken {
            sel: &sel,
            group_scores: &gs,
            kept_groups: &[0, 1],
            ids: &[0, 4],
        };
        // The path kept groups 0 and 2: it took 8 (group 2) and, displaced, expert 1 of group 0
        // whose value is far below the boundary.
        assert_eq!(
            r.classify(&cfg, &[0, 8], NEAR_TIE_ULPS),
            RouteClass::NearTie
        );
        assert_eq!(
            r.classify(&cfg, &[1, 8], NEAR_TIE_ULPS),
            RouteClass::NearTie
        );
        // Without a group swap the experts' values decide.
        assert_eq!(r.classify(&cfg, &[0, 1], NEAR_TIE_ULPS), RouteClass::Real);
    }

    #[test]
    fn margins_and_classes() {
        let cfg = cfg();
        let one = 0.5f32;
        let near = f32::from_bits(one.to_bits() - 2);
        let sel = [0.9, one, one, near, 0.1, 0.1, 0.1, 0.1];
        let gs = [1.4, 0.2];
        let r = RefToken {
            sel: &sel,
            group_scores: &gs,
            kept_groups: &[0],
            ids: &[0, 1],
        };
        let m = r.margins(&cfg);
        assert_eq!(m.expert, Some(0.0));
        assert!((m.group.unwrap() - 1.2).abs() < 1e-6);
        assert_eq!(r.classify(&cfg, &[1, 0], NEAR_TIE_ULPS), RouteClass::Agree);
        assert_eq!(
            r.classify(&cfg, &[0, 2], NEAR_TIE_ULPS),
            RouteClass::ExactTie
        );
        assert_eq!(
            r.classify(&cfg, &[0, 3], NEAR_TIE_ULPS),
            RouteClass::NearTie
        );
        assert_eq!(r.classify(&cfg, &[0, 4], NEAR_TIE_ULPS), RouteClass::Real);
        assert_eq!(r.classify(&cfg, &[0], NEAR_TIE_ULPS), RouteClass::Real);
        assert_eq!(
            r.classify(&cfg, &[0, 1, 2], NEAR_TIE_ULPS),
            RouteClass::Real
        );
        // 0.01 under a boundary of 0.5: a real divergence in f32, within 4 bf16 ulps (2^-8 each).
        let sel = [0.9, one, 0.49, 0.1, 0.1, 0.1, 0.1, 0.1];
        let r = RefToken { sel: &sel, ..r };
        let (f32_near, bf16_near) = (
            near_tie_ulps(LogitsDtype::F32),
            near_tie_ulps(LogitsDtype::Bf16),
        );
        assert_eq!(r.classify(&cfg, &[0, 2], f32_near), RouteClass::Real);
        assert_eq!(r.classify(&cfg, &[0, 2], bf16_near), RouteClass::NearTie);
        assert_eq!(r.classify(&cfg, &[0, 4], bf16_near), RouteClass::Real);
    }

    #[test]
    fn margin_summary_counts_ties() {
        let m = [
            TokenMargins {
                expert: Some(0.0),
                group: None,
            },
            TokenMargins {
                expert: Some(0.5),
                group: Some(0.25),
            },
            TokenMargins::from_raw(f64::INFINITY, f64::INFINITY),
        ];
        let s = MarginSummary::of(&m);
        assert_eq!(s.expert_min, Some(0.0));
        assert_eq!(s.expert_ties, 1);
        assert_eq!(s.group_p50, Some(0.25));
        assert_eq!(s.group_ties, 0);
    }
}
