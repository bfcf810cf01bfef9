//! `judge` on Rust stand-ins for kernels: the correct router passes every case of every preset,
//! and each known bug (the examples in examples/kernels/) fails with its stage and class.

use super::*;
use crate::engine::config::PRESET_NAMES;
use rand::SeedableRng;

/// What a stand-in kernel gets wrong (one per example kernel).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    SharedInvRsf,
    RsfTwice,
    Hardcoded2_5,
    SharedDropped,
    GroupTie,
    MarkerTwice,
    RsfIgnored,
}

fn conventions(bug: Bug) -> Conventions {
    let on_output = matches!(bug, Bug::RsfTwice | Bug::Hardcoded2_5);
    Conventions {
        appends_shared: true,
        rsf_in_router: !on_output,
    }
}

/// Group score that counts a group's tied best experts once (the Triton router's rule).
fn tie_bug_route(cfg: &MoeConfig, sel: &[f32], scores: &[f32], k: usize) -> Vec<(u32, f32)> {
    let per = cfg.experts_per_group();
    let gs: Vec<f32> = (0..cfg.n_group)
        .map(|g| {
            let grp = &sel[g * per..(g + 1) * per];
            let first = grp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if !cfg.has_bias {
                return first;
            }
            first
                + grp
                    .iter()
                    .copied()
                    .filter(|&v| v < first)
                    .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect();
    let kept = routing::top_k(&gs, 0..cfg.n_group, cfg.topk_group);
    let mut cand: Vec<usize> = kept.iter().flat_map(|&g| g * per..(g + 1) * per).collect();
    cand.sort_unstable();
    routing::top_k(sel, cand.into_iter(), k)
        .into_iter()
        .map(|i| (i as u32, scores[i]))
        .collect()
}

/// A host "kernel" on the ABI: writes ids and weights as the examples do.
fn stand_in(cfg: &MoeConfig, case: &Case, bug: Bug) -> RawOutput {
    let (e, k, s) = (
        cfg.n_routed_experts,
        cfg.num_experts_per_tok,
        cfg.n_shared_experts,
    );
    let rsf = cfg.routed_scaling_factor;
    let stride = k + s;
    let mut out = RawOutput {
        ids: vec![0; case.tokens * stride],
        weights: vec![0.0; case.tokens * stride],
        guard_hits: vec![],
    };
    for t in 0..case.tokens {
        let row = &case.logits[t * e..(t + 1) * e];
        let want = if bug == Bug::SharedDropped { k + s } else { k };
        let chosen: Vec<(u32, f32)> = if bug == Bug::GroupTie && cfg.n_group > 1 {
            let mut scores = vec![0.0; e];
            routing::scores_into(cfg.scoring_func, row, &mut scores);
            let sel: Vec<f32> = match &case.bias {
                Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                None => scores.clone(),
            };
            tie_bug_route(cfg, &sel, &scores, want)
        } else {
            let r = routing::route_token(cfg, row, case.bias.as_deref(), want);
            let mut scores = vec![0.0; e];
            routing::scores_into(cfg.scoring_func, row, &mut scores);
            r.ids.iter().map(|&i| (i, scores[i as usize])).collect()
        };
        let sum: f64 = chosen.iter().map(|c| c.1 as f64).sum();
        let p = |x: f32| {
            if cfg.norm_topk_prob && sum > 0.0 {
                x as f64 / sum
            } else {
                x as f64
            }
        };
        let routed_scale = match bug {
            Bug::Hardcoded2_5 => 1.0,
            Bug::RsfIgnored => 1.0,
            _ => rsf,
        };
        let gate = case.gate.as_ref().map_or(1.0, |g| g[t] as f64);
        let psum: f64 = chosen.iter().take(k).map(|c| p(c.1)).sum();
        let shared_w = match bug {
            Bug::SharedInvRsf => psum / rsf,
            Bug::RsfTwice => 1.0 / rsf,
            Bug::Hardcoded2_5 => psum / 2.5,
            _ => 1.0,
        } * gate;
        let base = t * stride;
        let n = if bug == Bug::SharedDropped { stride } else { k };
        for (c, &(id, sc)) in chosen.iter().take(n).enumerate() {
            out.ids[base + c] = id as i32;
            out.weights[base + c] = (routed_scale * p(sc)) as f32;
        }
        if bug != Bug::SharedDropped {
            let mut marker = e as i32;
            if bug == Bug::MarkerTwice && s > 0 {
                out.ids[base + k - 1] = marker;
                marker += 1;
            }
            for j in 0..s {
                out.ids[base + k + j] = marker;
                marker += 1;
                out.weights[base + k + j] = shared_w as f32;
            }
        }
    }
    out
}

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(11)
}

fn reports(preset: &str, bug: Bug) -> Vec<CaseReport> {
    let cfg = MoeConfig::preset(preset).unwrap();
    cases(&cfg, &mut rng(), false)
        .iter()
        .map(|c| judge(&cfg, conventions(bug), c, &stand_in(&cfg, c, bug)))
        .collect()
}

fn stages(reports: &[CaseReport]) -> Vec<(FailStage, FailClass)> {
    let mut v: Vec<_> = reports
        .iter()
        .flat_map(|r| r.failures.iter().map(|f| (f.stage, f.class)))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn the_correct_stand_in_passes_every_case_of_every_preset() {
    for &preset in PRESET_NAMES {
        for r in reports(preset, Bug::None) {
            assert!(
                r.failures.is_empty(),
                "{preset} {}: {:?}",
                r.case,
                r.failures
            );
            assert_eq!(r.agreement, 1.0, "{preset} {}", r.case);
            assert!(r.contract.ok, "{preset} {}", r.case);
        }
    }
}

#[test]
fn cases_cover_ties_near_ties_odd_and_single_tokens() {
    let cfg = MoeConfig::preset("deepseek-v3").unwrap();
    let cs = cases(&cfg, &mut rng(), false);
    let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "T=1",
        "odd",
        "bf16",
        "exact ties (expert)",
        "exact ties (group and expert)",
        "near ties",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no {want} case in {names:?}"
        );
    }
    let paired = cs
        .iter()
        .find(|c| c.name.contains("group and expert"))
        .unwrap();
    let row = &paired.logits[..256];
    assert_eq!(row[0], row[1]);
    assert_eq!(&row[0..32], &row[32..64], "group 1 copies group 0");
    let near = cs.iter().find(|c| c.name.contains("near")).unwrap();
    let d = near.logits[1].to_bits() as i64 - near.logits[0].to_bits() as i64;
    assert_eq!(d.abs(), 1, "one ulp apart");
    let bf16 = cs.iter().find(|c| c.dtype == LogitsDtype::Bf16).unwrap();
    assert!(bf16.logits.iter().all(|&v| round_bf16(v) == v));
}

#[test]
fn shared_inv_rsf_is_a_scaling_error_on_the_shared_weight() {
    let r = reports("deepseek-v3", Bug::SharedInvRsf);
    assert_eq!(stages(&r), vec![(FailStage::Scaling, FailClass::RealError)]);
    let f = &r[2].failures[0];
    match f.example {
        Finding::SharedWeight { got, expected, .. } => {
            assert!(
                (got - 0.4).abs() < 1e-6 && expected == 1.0,
                "{got} {expected}"
            )
        }
        ref other => panic!("{other:?}"),
    }
    assert!(!r[2].contract.ok);
}

#[test]
fn rsf_twice_and_rsf_ignored_are_scaling_errors_on_the_routed_sum() {
    for (bug, factor) in [(Bug::RsfTwice, 2.5), (Bug::RsfIgnored, 1.0 / 2.5)] {
        let r = reports("deepseek-v3", bug);
        assert_eq!(
            stages(&r),
            vec![(FailStage::Scaling, FailClass::RealError)],
            "{bug:?}"
        );
        match r[2].failures[0].example {
            Finding::RoutedSum { got, expected } => assert!(
                (got / expected - factor).abs() < 1e-5,
                "{bug:?} {got} {expected}"
            ),
            ref other => panic!("{bug:?}: {other:?}"),
        }
    }
}

#[test]
fn hardcoded_2_5_passes_where_rsf_is_2_5_and_fails_elsewhere() {
    assert!(stages(&reports("deepseek-v3", Bug::Hardcoded2_5)).is_empty());
    assert_eq!(
        stages(&reports("kimi-k2", Bug::Hardcoded2_5)),
        vec![(FailStage::Scaling, FailClass::RealError)]
    );
}

#[test]
fn shared_dropped_and_marker_twice_are_shared_slot_errors() {
    let r = reports("deepseek-v3", Bug::SharedDropped);
    assert_eq!(
        stages(&r),
        vec![(FailStage::SharedSlot, FailClass::RealError)]
    );
    assert!(matches!(
        r[0].failures[0].example,
        Finding::WrongSharedColumn {
            column: 8,
            expected: 256,
            ..
        }
    ));
    let r = reports("deepseek-v3", Bug::MarkerTwice);
    assert_eq!(
        stages(&r),
        vec![(FailStage::SharedSlot, FailClass::RealError)]
    );
    assert!(
        matches!(
            r[0].failures[0].example,
            Finding::IdOutOfRange {
                column: 8,
                id: 257,
                limit: 257
            }
        ),
        "{:?}",
        r[0].failures
    );
}

#[test]
fn the_group_tie_bug_is_a_tie_rule_difference_in_group_selection_only_on_ties() {
    let r = reports("deepseek-v3", Bug::GroupTie);
    for rep in &r {
        // One-ulp logits often give exactly equal scores: the near-tie case has exact ties too.
        let tie_case = rep.case.contains("ties");
        if !tie_case {
            assert!(rep.failures.is_empty(), "{}: {:?}", rep.case, rep.failures);
        }
    }
    let paired = r
        .iter()
        .find(|x| x.case.contains("group and expert"))
        .unwrap();
    assert!(
        paired.agreement < 0.9,
        "the bug changes many tie tokens: {}",
        paired.agreement
    );
    for f in &paired.failures {
        assert_eq!(
            (f.stage, f.class),
            (FailStage::GroupSelection, FailClass::TieRule),
            "{f:?}"
        );
    }
}

#[test]
fn a_float_order_within_one_ulp_is_a_near_tie_not_an_error() {
    let cfg = MoeConfig {
        n_group: 1,
        topk_group: 1,
        ..MoeConfig::preset("qwen3-30b-a3b").unwrap()
    };
    let case = cases(&cfg, &mut rng(), false)
        .into_iter()
        .find(|c| c.name.contains("near"))
        .unwrap();
    let mut out = stand_in(&cfg, &case, Bug::None);
    // Swap the last chosen expert of token 0 for its one-ulp partner.
    let k = cfg.num_experts_per_tok;
    let last = out.ids[k - 1];
    let partner = last ^ 1;
    if !out.ids[..k].contains(&partner) {
        out.ids[k - 1] = partner;
        let r = judge(&cfg, conventions(Bug::None), &case, &out);
        let f = &r.failures[0];
        assert_eq!(f.stage, FailStage::ExpertSelection);
        assert!(
            matches!(f.class, FailClass::NearTie | FailClass::TieRule),
            "{f:?}"
        );
        assert!(!r.failed(false) || f.class == FailClass::TieRule);
        assert!(r.failed(true));
    }
}

#[test]
fn unwritten_outputs_and_guard_writes_are_output_errors() {
    let cfg = MoeConfig::preset("deepseek-v3").unwrap();
    let case = &cases(&cfg, &mut rng(), false)[1];
    let mut out = stand_in(&cfg, case, Bug::None);
    out.weights[3] = f32::from_bits(POISON_WEIGHT);
    out.guard_hits.push(("ids", -1));
    let r = judge(&cfg, conventions(Bug::None), case, &out);
    assert_eq!(
        stages(std::slice::from_ref(&r)),
        vec![(FailStage::Outputs, FailClass::RealError)]
    );
    assert_eq!(r.failures[0].tokens, 2, "the guard hit and token 0");
    assert!(r.failed(false));
}

#[test]
fn a_wrong_expert_is_a_real_error_with_its_token() {
    let cfg = MoeConfig::preset("deepseek-v3").unwrap();
    let case = &cases(&cfg, &mut rng(), false)[2];
    let mut out = stand_in(&cfg, case, Bug::None);
    let stride = 9;
    // Token 5: replace its best expert by the worst expert of the same group not chosen.
    let ids = &out.ids[5 * stride..5 * stride + 8];
    let g = ids[0] / 32;
    let sel = sel_of(&cfg, case, 5);
    let worst = (g * 32..g * 32 + 32)
        .filter(|e| !ids.contains(e))
        .min_by(|a, b| sel[*a as usize].total_cmp(&sel[*b as usize]))
        .unwrap();
    out.ids[5 * stride] = worst;
    let r = judge(&cfg, conventions(Bug::None), case, &out);
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    let f = &r.failures[0];
    assert_eq!(
        (f.stage, f.class, f.token, f.tokens),
        (FailStage::ExpertSelection, FailClass::RealError, Some(5), 1)
    );
}
