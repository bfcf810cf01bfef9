//! On a GPU: router logits in bf16 as a path option. The CUDA routers read the gate GEMM's
//! output rounded to bf16 and move some tokens to other experts than the f64 reference (which
//! routes the f32 logits), about as many as the CPU backend on the same layer; f32 paths move
//! none. Skips (and says so) without a GPU.

use moescope::engine::paths::{LogitsDtype, PathLogits, PathSpec, Variant};
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec};
use moescope::engine::step::StepRecord;
use moescope::engine::{cuda, BackendChoice};

fn spec(backend: BackendChoice, logits: &str) -> RunSpec {
    RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".to_string()),
            hidden: Some(256),
            intermediate: Some(128),
            backend,
            ..LayerSpec::default()
        },
        tokens: 1024,
        paths: vec![
            PathSpec::unfused_baseline(),
            PathSpec::fused(Variant::Correct),
        ],
        hidden_states: None,
        trace: Default::default(),
        kernel: None,
        router_logits: PathLogits::parse(logits).unwrap(),
    }
}

fn steps(backend: BackendChoice, logits: &str, n: usize) -> Vec<StepRecord> {
    let (mut engine, _) = spec(backend, logits).build_engine().unwrap();
    (0..n).map(|_| engine.step().unwrap()).collect()
}

/// Tokens of path `p` whose expert set is not the reference's, over all steps.
fn moved(recs: &[StepRecord], p: usize) -> f64 {
    recs.iter()
        .map(|r| (1.0 - r.comparison.routing_agreement_ref[p]) * r.tokens as f64)
        .sum()
}

#[test]
fn bf16_logits_move_tokens_on_the_gpu_as_on_the_cpu() {
    if let Err(why) = cuda::probe() {
        println!("skipped: no CUDA: {why}");
        return;
    }
    let gpu = steps(BackendChoice::Cuda, "A=bf16", 3);
    let cpu = steps(BackendChoice::Cpu, "A=bf16", 3);
    for r in &gpu {
        assert_eq!(r.comparison.sampled_tokens, 1024, "every token compared");
        assert_eq!(r.paths[0].spec.logits, LogitsDtype::Bf16);
        assert!(r.paths.iter().all(|p| p.contract.ok));
        let ties = r.comparison.ties_ref[0];
        let counted = (ties.exact + ties.near + ties.real) as f64;
        let frac = (1.0 - r.comparison.routing_agreement_ref[0]) * 1024.0;
        assert!((counted - frac).abs() < 0.5, "{ties:?} vs {frac}");
    }
    let (g, c) = (moved(&gpu, 0), moved(&cpu, 0));
    assert_eq!(
        moved(&gpu, 1),
        0.0,
        "path B on f32 logits routes as the reference"
    );
    assert!(
        (1.0..0.3 * 3072.0).contains(&g),
        "GPU, bf16: {g} of 3072 tokens moved"
    );
    // The GPU's gate GEMM sums in another order than the CPU's: a logit at a bf16 rounding
    // boundary may round the other way, so the counts agree closely, not exactly.
    assert!(
        (g - c).abs() <= 0.01 * 3072.0 + 2.0,
        "GPU {g} vs CPU {c} tokens moved by bf16 logits"
    );
}

#[test]
fn bf16_on_both_routers_agrees_between_them() {
    if let Err(why) = cuda::probe() {
        println!("skipped: no CUDA: {why}");
        return;
    }
    for r in steps(BackendChoice::Cuda, "bf16", 2) {
        let c = &r.comparison;
        // Unfused and fused read the same rounded logits and select exactly.
        assert!(c.routing_agreement_ab >= 0.99, "{c:?}");
        assert!(c.routing_agreement_ref[0] < 1.0, "{c:?}");
    }
}
