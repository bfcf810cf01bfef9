//! The reference router: the routing formula that every backend and kernel must reproduce.
//!
//! Selection values are f32, computed as `round_f32(f64 formula)`: the CUDA kernels compute the
//! same values the same way, so ids agree exactly with them and with PyTorch's f32 router, ties
//! included. Weights are accumulated in f64.
//!
//! Steps: scores (sigmoid or softmax) → `sel = scores + bias` → group score (sum of the top-2
//! `sel` with a bias, the max without) → keep the best `topk_group` groups → top-k experts by
//! `sel` among them → probabilities are the chosen experts' unbiased scores, renormalized if
//! `norm_topk_prob`. The routed scaling factor is not in `probs`; the path's contract applies it.
//! Ties break toward the lower group index, then the lower expert index.

use super::config::{MoeConfig, ScoringFunc};
use std::cmp::Ordering;

/// Scores of one token's logits, written to `out` (len E).
pub fn scores_into(scoring: ScoringFunc, logits: &[f32], out: &mut [f32]) {
    match scoring {
        ScoringFunc::Sigmoid => {
            for (o, &x) in out.iter_mut().zip(logits) {
                *o = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            }
        }
        ScoringFunc::Softmax => {
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = logits.iter().map(|&x| (x as f64 - m).exp()).sum();
            for (o, &x) in out.iter_mut().zip(logits) {
                *o = ((x as f64 - m).exp() / sum) as f32;
            }
        }
    }
}

/// Ordering for selection: larger first, NaN as the smallest, equal values by lower index.
fn by_value_then_index(values: &[f32]) -> impl Fn(&usize, &usize) -> Ordering + '_ {
    move |&a, &b| {
        let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
        key(values[b])
            .partial_cmp(&key(values[a]))
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    }
}

/// Indices of the `k` largest values among `candidates`, best first; ties to the lower index.
pub fn top_k(values: &[f32], candidates: impl Iterator<Item = usize>, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = candidates.collect();
    let cmp = by_value_then_index(values);
    if k < idx.len() {
        idx.select_nth_unstable_by(k, &cmp);
        idx.truncate(k);
    }
    idx.sort_by(&cmp);
    idx
}

/// Score of each group of `sel` (len n_group): sum of the top-2 with a bias, else the max.
pub fn group_scores_into(cfg: &MoeConfig, sel: &[f32], out: &mut [f32]) {
    let per = cfg.experts_per_group();
    for (g, o) in out.iter_mut().enumerate() {
        let group = &sel[g * per..(g + 1) * per];
        *o = if cfg.has_bias {
            let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for &v in group {
                if v > first {
                    second = first;
                    first = v;
                } else if v > second {
                    second = v;
                }
            }
            first + second
        } else {
            group.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        };
    }
}

/// One token's routing with every intermediate the drill-down shows.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRoute {
    /// Chosen experts, best first.
    pub ids: Vec<u32>,
    /// Aligned probabilities (renormalized if norm_topk_prob; rsf not included).
    pub probs: Vec<f64>,
    /// Score of every group (empty when ungrouped).
    pub group_scores: Vec<f32>,
    /// Kept groups, best first (empty when ungrouped).
    pub kept_groups: Vec<u32>,
}

/// Routes one token to `k` experts (k = top_k normally; more for the shared-dropped variant).
pub fn route_token(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>, k: usize) -> TokenRoute {
    let e = cfg.n_routed_experts;
    let mut scores = vec![0.0f32; e];
    scores_into(cfg.scoring_func, logits, &mut scores);
    let sel: Vec<f32> = match bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    let (group_scores, kept_groups, ids) = if cfg.n_group > 1 {
        let mut gs = vec![0.0f32; cfg.n_group];
        group_scores_into(cfg, &sel, &mut gs);
        let kept = top_k(&gs, 0..cfg.n_group, cfg.topk_group);
        let per = cfg.experts_per_group();
        let mut candidates: Vec<usize> =
            kept.iter().flat_map(|&g| g * per..(g + 1) * per).collect();
        candidates.sort_unstable();
        let k = k.min(candidates.len());
        let ids = top_k(&sel, candidates.into_iter(), k);
        (gs, kept.iter().map(|&g| g as u32).collect(), ids)
    } else {
        (Vec::new(), Vec::new(), top_k(&sel, 0..e, k.min(e)))
    };
    let mut probs: Vec<f64> = ids.iter().map(|&i| scores[i] as f64).collect();
    if cfg.norm_topk_prob {
        let sum: f64 = probs.iter().sum();
        if sum > 0.0 {
            probs.iter_mut().for_each(|p| *p /= sum);
        }
    }
    TokenRoute {
        ids: ids.into_iter().map(|i| i as u32).collect(),
        probs,
        group_scores,
        kept_groups,
    }
}

/// A batch's routing: `k` experts per token.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub k: usize,
    /// [tokens × k], best first per token.
    pub ids: Vec<u32>,
    /// [tokens × k] probabilities (rsf not included).
    pub probs: Vec<f64>,
}

impl Routing {
    pub fn tokens(&self) -> usize {
        self.ids.len() / self.k.max(1)
    }
    /// Token t's ids and probabilities sorted by ascending expert id (the golden files' order).
    pub fn ascending(&self, t: usize) -> (Vec<u32>, Vec<f64>) {
        let range = t * self.k..(t + 1) * self.k;
        let mut pairs: Vec<(u32, f64)> = self.ids[range.clone()]
            .iter()
            .copied()
            .zip(self.probs[range].iter().copied())
            .collect();
        pairs.sort_by_key(|p| p.0);
        pairs.into_iter().unzip()
    }
}

/// Routes a batch of logits [tokens × E] on the CPU (rayon over tokens).
pub fn route(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>, k: usize) -> Routing {
    use rayon::prelude::*;
    let e = cfg.n_routed_experts;
    let routes: Vec<TokenRoute> = logits
        .par_chunks(e)
        .map(|row| route_token(cfg, row, bias, k))
        .collect();
    let k = routes.first().map(|r| r.ids.len()).unwrap_or(k);
    Routing {
        k,
        ids: routes.iter().flat_map(|r| r.ids.iter().copied()).collect(),
        probs: routes
            .iter()
            .flat_map(|r| r.probs.iter().copied())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small_grouped() -> MoeConfig {
        MoeConfig {
            n_routed_experts: 16,
            n_group: 4,
            topk_group: 2,
            num_experts_per_tok: 4,
            ..MoeConfig::preset("deepseek-v3").unwrap()
        }
    }

    #[test]
    fn ties_break_toward_lower_group_then_lower_expert() {
        let cfg = small_grouped();
        // Every logit equal: groups 0 and 1 kept, experts 0..4 chosen.
        let r = route_token(&cfg, &[0.5; 16], Some(&[0.0; 16]), 4);
        assert_eq!(r.kept_groups, vec![0, 1]);
        assert_eq!(r.ids, vec![0, 1, 2, 3]);
        assert!(r.probs.iter().all(|p| (p - 0.25).abs() < 1e-12));
    }

    #[test]
    fn group_score_is_top2_sum_with_bias_and_max_without() {
        let cfg = small_grouped();
        let sel = [
            0.9, 0.1, 0.1, 0.1, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let mut gs = [0.0; 4];
        group_scores_into(&cfg, &sel, &mut gs);
        assert_eq!(gs[0], 0.9 + 0.1);
        assert_eq!(gs[1], 0.5 + 0.5);
        let no_bias = MoeConfig {
            has_bias: false,
            ..cfg
        };
        group_scores_into(&no_bias, &sel, &mut gs);
        assert_eq!(&gs[..2], &[0.9, 0.5]);
    }

    #[test]
    fn bias_steers_selection_but_not_weights() {
        let cfg = MoeConfig {
            n_group: 1,
            topk_group: 1,
            num_experts_per_tok: 1,
            norm_topk_prob: false,
            ..small_grouped()
        };
        let logits = [1.0f32; 16];
        let mut bias = [0.0f32; 16];
        bias[5] = 0.3;
        let r = route_token(&cfg, &logits, Some(&bias), 1);
        assert_eq!(r.ids, vec![5]);
        let sig = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((r.probs[0] - sig).abs() < 1e-7);
    }

    /// A random valid grouped config and matching logits/bias.
    fn arb_case() -> impl Strategy<Value = (MoeConfig, Vec<f32>, Vec<f32>)> {
        (
            1usize..=8,
            2usize..=16,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_flat_map(|(groups, per, sigmoid, with_bias, norm)| {
                let e = groups * per;
                (
                    1..=groups,
                    Just((groups, per, sigmoid, with_bias, norm)),
                    proptest::collection::vec(-4.0f32..4.0, e),
                    proptest::collection::vec(-0.2f32..0.2, e),
                )
                    .prop_flat_map(move |(topk_group, shape, logits, bias)| {
                        let max_k = (topk_group * shape.1).min(16);
                        (1..=max_k, Just((topk_group, shape, logits, bias)))
                    })
                    .prop_map(
                        |(
                            k,
                            (topk_group, (groups, per, sigmoid, with_bias, norm), logits, bias),
                        )| {
                            let cfg = MoeConfig {
                                n_routed_experts: groups * per,
                                n_group: groups,
                                topk_group,
                                num_experts_per_tok: k,
                                scoring_func: if sigmoid {
                                    ScoringFunc::Sigmoid
                                } else {
                                    ScoringFunc::Softmax
                                },
                                has_bias: with_bias,
                                norm_topk_prob: norm,
                                ..MoeConfig::preset("deepseek-v3").unwrap()
                            };
                            (cfg, logits, bias)
                        },
                    )
            })
    }

    proptest! {
        #[test]
        fn router_invariants((cfg, logits, bias) in arb_case()) {
            prop_assert!(cfg.validate().is_ok());
            let bias = cfg.has_bias.then_some(bias);
            let r = route_token(&cfg, &logits, bias.as_deref(), cfg.num_experts_per_tok);
            let mut ids = r.ids.clone();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), cfg.num_experts_per_tok, "distinct ids");
            let per = cfg.experts_per_group() as u32;
            if cfg.n_group > 1 {
                prop_assert_eq!(r.kept_groups.len(), cfg.topk_group);
                for id in &r.ids {
                    prop_assert!(r.kept_groups.contains(&(id / per)), "expert {} outside the kept groups", id);
                }
            }
            let sum: f64 = r.probs.iter().sum();
            if cfg.norm_topk_prob {
                prop_assert!((sum - 1.0).abs() < 1e-9, "renormalized sum {}", sum);
            }
            // Every chosen expert beats every unchosen expert of the kept groups.
            let mut scores = vec![0.0f32; cfg.n_routed_experts];
            scores_into(cfg.scoring_func, &logits, &mut scores);
            let sel: Vec<f32> = match &bias { Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(), None => scores.clone() };
            let worst = r.ids.iter().map(|&i| sel[i as usize]).fold(f32::INFINITY, f32::min);
            let kept: Vec<u32> = if cfg.n_group > 1 { r.kept_groups.clone() } else { vec![0] };
            for g in kept {
                for e in g * per..(g + 1) * per {
                    if !r.ids.contains(&e) {
                        prop_assert!(sel[e as usize] <= worst);
                    }
                }
            }
            // Weights are the unbiased scores of the chosen experts.
            for (id, p) in r.ids.iter().zip(&r.probs) {
                let want = if cfg.norm_topk_prob { scores[*id as usize] as f64 / r.ids.iter().map(|&i| scores[i as usize] as f64).sum::<f64>() } else { scores[*id as usize] as f64 };
                prop_assert!((p - want).abs() < 1e-12);
            }
        }
    }
}
