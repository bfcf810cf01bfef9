//! The CPU layer forward against a naive f64 implementation, and the scaling contract's verdicts
//! for the default paths and every known-bug variant.

// The naive reference is written as plain indexed loops on purpose.
#![allow(clippy::needless_range_loop)]
use moescope::engine::config::MoeConfig;
use moescope::engine::cpu::CpuBackend;
use moescope::engine::paths::{PathSpec, Variant, VARIANTS};
use moescope::engine::routing;
use moescope::engine::step::ContractViolation;
use moescope::engine::weights::synthetic::{hidden_row, SyntheticWeights};
use moescope::engine::weights::{ExpertWeights, WeightSource};
use moescope::engine::{Backend, Engine, StepInput};

fn small(preset: &str) -> MoeConfig {
    let mut cfg = MoeConfig::preset(preset).unwrap();
    cfg.hidden_size = 64;
    cfg.moe_intermediate_size = 32;
    cfg.shared_intermediate_size = 32 * cfg.n_shared_experts;
    cfg
}

/// Written independently of the crate's MLP code: plain loops, f64 throughout.
fn naive_mlp(w: &ExpertWeights, x: &[f64]) -> Vec<f64> {
    let mut act = vec![0.0; w.intermediate];
    for r in 0..w.intermediate {
        let (mut g, mut u) = (0.0, 0.0);
        for c in 0..w.hidden {
            g += w.gate[r * w.hidden + c] as f64 * x[c];
            u += w.up[r * w.hidden + c] as f64 * x[c];
        }
        act[r] = g * (1.0 / (1.0 + (-g).exp())) * u;
    }
    let mut y = vec![0.0; w.hidden];
    for r in 0..w.hidden {
        for c in 0..w.intermediate {
            y[r] += w.down[r * w.intermediate + c] as f64 * act[c];
        }
    }
    y
}

fn naive_layer(cfg: &MoeConfig, src: &dyn WeightSource, x: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let (e, h) = (cfg.n_routed_experts, cfg.hidden_size);
    let gate = src.router_gate().unwrap();
    let offset = src.logit_offset().unwrap();
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let logits: Vec<f32> = (0..e)
        .map(|j| {
            ((0..h).map(|c| gate[j * h + c] as f64 * xd[c]).sum::<f64>() + offset[j] as f64) as f32
        })
        .collect();
    let bias = src.router_bias().unwrap();
    let r = routing::route_token(cfg, &logits, bias.as_deref(), cfg.num_experts_per_tok);
    let mut y = vec![0.0; h];
    for (&id, &p) in r.ids.iter().zip(&r.probs) {
        let o = naive_mlp(&src.expert(id as usize).unwrap(), &xd);
        (0..h).for_each(|i| y[i] += p * cfg.routed_scaling_factor * o[i]);
    }
    let g = match src.shared_gate().unwrap() {
        Some(w) => 1.0 / (1.0 + (-(0..h).map(|c| w[c] as f64 * xd[c]).sum::<f64>()).exp()),
        None => 1.0,
    };
    for j in 0..cfg.n_shared_experts {
        let o = naive_mlp(&src.shared_slot(j).unwrap(), &xd);
        (0..h).for_each(|i| y[i] += g * o[i]);
    }
    (logits, y)
}

fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n).sqrt()
}

#[test]
fn cpu_forward_matches_naive_f64_layer_for_every_preset() {
    for preset in [
        "deepseek-v3",
        "deepseek-v2",
        "kimi-k2",
        "glm-4.5",
        "qwen3-30b-a3b",
        "qwen3-next-80b-a3b",
        "mixtral-8x7b",
    ] {
        let cfg = small(preset);
        let tokens = 12;
        let mut backend =
            CpuBackend::new(Box::new(SyntheticWeights::new(cfg.clone(), 11, 0.5))).unwrap();
        let input = StepInput {
            step: 3,
            tokens,
            seed: 5,
            hidden: None,
            sample_tokens: (0..tokens).collect(),
        };
        let paths = [
            PathSpec::unfused_baseline(),
            PathSpec::fused(Variant::Correct),
        ];
        let paths: Vec<PathSpec> = if cfg.n_shared_experts == 0 {
            paths[..1].to_vec()
        } else {
            paths.to_vec()
        };
        let out = backend.step(&input, &paths).unwrap();
        let src = SyntheticWeights::new(cfg.clone(), 11, 0.5);
        for t in 0..tokens {
            let x = hidden_row(5, 3, t, cfg.hidden_size);
            assert_eq!(
                &out.sample_hidden[t * cfg.hidden_size..(t + 1) * cfg.hidden_size],
                &x[..]
            );
            let (logits, want) = naive_layer(&cfg, &src, &x);
            let got_logits =
                &out.router_logits[t * cfg.n_routed_experts..(t + 1) * cfg.n_routed_experts];
            let logit_err = got_logits
                .iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                logit_err < 1e-4,
                "{preset} token {t}: logits differ by {logit_err}"
            );
            for (p, run) in out.paths.iter().enumerate() {
                let got = &run.sample_outputs[t * cfg.hidden_size..(t + 1) * cfg.hidden_size];
                let err = rel_l2(got, &want);
                assert!(err < 1e-2, "{preset} path {p} token {t}: rel L2 {err}");
            }
        }
    }
}

fn engine_with(cfg: MoeConfig, variant: Variant) -> Engine {
    let backend = CpuBackend::new(Box::new(SyntheticWeights::new(cfg, 2, 0.0))).unwrap();
    Engine::new(
        Box::new(backend),
        vec![PathSpec::unfused_baseline(), PathSpec::fused(variant)],
        16,
        9,
        None,
    )
}

#[test]
fn default_paths_honour_the_contract_and_match_the_reference() {
    for preset in [
        "deepseek-v3",
        "deepseek-v2",
        "kimi-k2",
        "glm-4.5",
        "qwen3-next-80b-a3b",
    ] {
        let mut engine = engine_with(small(preset), Variant::Correct);
        let rec = engine.step().unwrap();
        for p in &rec.paths {
            assert!(
                p.contract.ok,
                "{preset} path {}: {:?}",
                p.name, p.contract.violations
            );
        }
        assert_eq!(rec.comparison.routing_agreement_ab, 1.0, "{preset}");
        assert!(
            rec.comparison
                .routing_agreement_ref
                .iter()
                .all(|&a| a == 1.0),
            "{preset}"
        );
        assert!(
            rec.comparison.output_rel_l2_ref.iter().all(|&e| e < 1e-2),
            "{preset}: {:?}",
            rec.comparison.output_rel_l2_ref
        );
        assert!(rec.comparison.output_rel_l2_ab < 1e-2, "{preset}");
        let shared_load = rec.paths[1].load[rec.paths[1].load.len() - 1];
        assert_eq!(
            shared_load as usize, rec.tokens,
            "{preset}: every token routes to the shared slot"
        );
    }
}

#[test]
fn every_bug_variant_is_reported_violated() {
    // rsf 2.827 (Kimi-K2) and 16 (DeepSeek-V2, no renormalization): every bug shows.
    for preset in ["kimi-k2", "deepseek-v2"] {
        let rsf = MoeConfig::preset(preset).unwrap().routed_scaling_factor;
        for &variant in VARIANTS.iter().filter(|v| **v != Variant::Correct) {
            let mut engine = engine_with(small(preset), variant);
            let rec = engine.step().unwrap();
            let b = &rec.paths[1];
            assert!(rec.paths[0].contract.ok, "{preset}: path A stays correct");
            assert!(
                !b.contract.ok,
                "{preset} {variant}: contract reported as holding"
            );
            assert!(
                rec.comparison.output_rel_l2_ref[1] > 1e-2,
                "{preset} {variant}: output looks right"
            );
            let shared = b.shared_weight.unwrap().mean;
            match variant {
                Variant::SharedInvRsf => assert!((shared - 1.0 / rsf).abs() < 1e-4, "{shared}"),
                Variant::Hardcoded2_5 => assert!((shared - rsf / 2.5).abs() < 1e-4, "{shared}"),
                Variant::SharedDropped => {
                    assert_eq!(shared, 0.0);
                    assert_eq!(
                        rec.comparison.routing_agreement_ref[1], 0.0,
                        "an extra routed expert replaces the shared one"
                    );
                }
                Variant::RsfTwice => {
                    assert!(
                        b.contract
                            .violations
                            .iter()
                            .any(|v| matches!(v, ContractViolation::RoutedSum { .. })),
                        "{:?}",
                        b.contract.violations
                    );
                }
                Variant::Correct => unreachable!(),
            }
        }
    }
}

#[test]
fn hardcoded_2_5_is_right_only_where_rsf_is_2_5() {
    let mut engine = engine_with(small("deepseek-v3"), Variant::Hardcoded2_5);
    let rec = engine.step().unwrap();
    assert!(
        rec.paths[1].contract.ok,
        "{:?}",
        rec.paths[1].contract.violations
    );
}

#[test]
fn contract_violation_carries_the_deviation() {
    let mut engine = engine_with(small("deepseek-v3"), Variant::SharedInvRsf);
    let rec = engine.step().unwrap();
    let c = &rec.paths[1].contract;
    let [ContractViolation::SharedWeight { got, expected }] = c.violations[..] else {
        panic!("{:?}", c.violations);
    };
    assert!(
        (got - 0.4).abs() < 1e-6 && expected == 1.0,
        "{got} {expected}"
    );
    assert_eq!(
        moescope::session::words::verdict(c),
        "shared weight 0.400, expected 1.000"
    );
}

#[test]
fn step_record_round_trips_through_json() {
    let mut engine = engine_with(small("glm-4.5"), Variant::RsfTwice);
    let rec = engine.step().unwrap();
    let text = serde_json::to_string(&rec).unwrap();
    let back: moescope::engine::step::StepRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back, rec);
}
