//! The CUDA backend against the CPU reference. Every test skips (and says so) where there is no
//! CUDA driver, device or NVRTC; without a GPU the CLI must fail cleanly instead.

mod gpu_support;
use gpu_support::gpu;

use moescope::engine::config::MoeConfig;
use moescope::engine::cpu::CpuBackend;
use moescope::engine::paths::{PathSpec, Variant};
use moescope::engine::weights::synthetic::SyntheticWeights;
use moescope::engine::{compare, cuda, routing, Backend, StepInput};
use rand::{Rng, SeedableRng};

#[test]
fn probe_reports_instead_of_panicking() {
    // Where CUDA is missing this must be an Err with a reason, never a panic.
    if let Err(why) = cuda::probe() {
        assert!(!why.is_empty());
    }
}

#[test]
fn fused_router_matches_the_reference_router_exactly() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for preset in [
        "deepseek-v3",
        "deepseek-v2",
        "kimi-k2",
        "qwen3-next-80b-a3b",
        "mixtral-8x7b",
    ] {
        let cfg = MoeConfig::preset(preset).unwrap();
        let e = cfg.n_routed_experts;
        let t = 333;
        let logits: Vec<f32> = (0..t * e).map(|_| rng.random_range(-5.0f32..5.0)).collect();
        let bias: Option<Vec<f32>> = cfg
            .has_bias
            .then(|| (0..e).map(|_| rng.random_range(-0.05f32..0.05)).collect());
        let k = cfg.num_experts_per_tok;
        let want = routing::route(&cfg, &logits, bias.as_deref(), k);
        let got = cuda::route_logits(&gpu, &cfg, &logits, bias.as_deref(), k, t).unwrap();
        assert_eq!(got.ids, want.ids, "{preset}: ids");
        for (g, w) in got.probs.iter().zip(&want.probs) {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1e-12),
                "{preset}: prob {g} vs {w}"
            );
        }
    }
}

/// At 100 tokens the expert GEMMs run 16-row tiles, at 500 and 2000 64-row tiles, at 8000
/// 128-row tiles (the last two on wgmma on a Hopper card).
#[test]
fn layer_step_matches_the_cpu_backend_and_the_f64_reference() {
    if gpu().is_none() {
        return;
    }
    for t in [100, 500, 2000, 8000] {
        layer_step_matches_at(t);
    }
}

fn layer_step_matches_at(t: usize) {
    let mut cfg = MoeConfig::preset("deepseek-v3").unwrap();
    cfg.hidden_size = 256;
    cfg.moe_intermediate_size = 128;
    cfg.shared_intermediate_size = 128;
    let weights = || Box::new(SyntheticWeights::new(cfg.clone(), 5, 0.5));
    let mut gpu_backend = cuda::open(weights()).unwrap();
    let mut cpu_backend = CpuBackend::new(weights()).unwrap();
    let paths = vec![
        PathSpec::unfused_baseline(),
        PathSpec::fused(Variant::Correct),
    ];
    let input = StepInput {
        step: 3,
        tokens: t,
        seed: 9,
        hidden: None,
        sample_tokens: compare::sample_tokens(&cfg, t, 3),
    };
    let g = gpu_backend.step(&input, &paths).unwrap();
    let c = cpu_backend.step(&input, &paths).unwrap();
    assert_eq!(
        g.sample_hidden, c.sample_hidden,
        "hidden states bit for bit"
    );
    let rec = compare::assemble(
        &cfg,
        gpu_backend.as_ref(),
        &input,
        &paths,
        &g,
        moescope::engine::BackendKind::Cuda,
    )
    .unwrap();
    assert_eq!(rec.comparison.routing_agreement_ref, vec![1.0, 1.0]);
    assert!(rec.paths.iter().all(|p| p.contract.ok));
    for e in &rec.comparison.output_rel_l2_ref {
        assert!(*e < 1e-2, "rel L2 vs f64 reference {e}");
    }
    assert!(rec.comparison.output_rel_l2_ab < 1e-2);
    // Counted on the device: nothing non-finite, as on the CPU.
    assert_eq!(g.finite, c.finite, "input and weight counts");
    for (gp, cp) in g.paths.iter().zip(&c.paths) {
        assert_eq!(gp.finite, cp.finite, "per-path non-finite counts");
        assert_eq!(gp.output.nonfinite, 0);
        // The clean (one event pair) timing runs on every CLEAN_EVERY-th step only.
        assert_eq!(
            gp.clean_us.is_some(),
            input
                .step
                .is_multiple_of(moescope::engine::cuda::layer::CLEAN_EVERY)
        );
        assert!(!gp.timings.is_empty());
        let (mut d, mut n) = (0.0f64, 0.0f64);
        for (a, b) in gp.sample_outputs.iter().zip(&cp.sample_outputs) {
            d += ((a - b) as f64).powi(2);
            n += (*b as f64).powi(2);
        }
        assert!(
            (d / n).sqrt() < 1e-2,
            "GPU vs CPU rel L2 {}",
            (d / n).sqrt()
        );
    }
}

#[test]
fn non_finite_values_are_counted_per_stage_as_on_the_cpu() {
    if gpu().is_none() {
        return;
    }
    use moescope::engine::finite::FiniteStage;
    let mut cfg = MoeConfig::preset("deepseek-v3").unwrap();
    cfg.hidden_size = 256;
    cfg.moe_intermediate_size = 128;
    cfg.shared_intermediate_size = 128;
    let weights = || Box::new(SyntheticWeights::new(cfg.clone(), 5, 0.5));
    let mut gpu_backend = cuda::open(weights()).unwrap();
    let mut cpu_backend = CpuBackend::new(weights()).unwrap();
    let paths = vec![
        PathSpec::unfused_baseline(),
        PathSpec::fused(Variant::Correct),
    ];
    let (t, h) = (40, cfg.hidden_size);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut hidden: Vec<f32> = (0..t * h).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // A NaN in token 3, an infinity in token 17, a finite value bf16 cannot hold in token 30.
    hidden[3 * h + 5] = f32::NAN;
    hidden[17 * h] = f32::INFINITY;
    hidden[30 * h + 9] = f32::MAX;
    let input = StepInput {
        step: 0,
        tokens: t,
        seed: 1,
        hidden: Some(std::sync::Arc::new(hidden)),
        sample_tokens: vec![0, 3],
    };
    let g = gpu_backend.step(&input, &paths).unwrap();
    let c = cpu_backend.step(&input, &paths).unwrap();
    assert_eq!(
        g.finite.get(FiniteStage::Input),
        3,
        "NaN, Inf and an overflow"
    );
    assert_eq!(g.finite, c.finite, "input and weight counts");
    for (p, (gp, cp)) in g.paths.iter().zip(&c.paths).enumerate() {
        for stage in [
            FiniteStage::Router,
            FiniteStage::Experts,
            FiniteStage::Combine,
        ] {
            assert!(
                gp.finite.get(stage) > 0,
                "path {p}: nothing counted in {stage}"
            );
        }
        assert_eq!(
            gp.finite, cp.finite,
            "path {p}: GPU vs CPU counts per stage"
        );
    }
}

#[test]
fn cli_without_a_gpu_fails_cleanly() {
    if cuda::probe().is_ok() {
        println!("skipped: a GPU is present");
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args([
            "route",
            "--backend",
            "cuda",
            "--preset",
            "deepseek-v3",
            "--logits",
        ])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/golden/deepseek-v3-ties.safetensors"
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no CUDA"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // `auto` falls back to the CPU and routes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(["route", "--preset", "deepseek-v3", "--logits"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/golden/deepseek-v3-ties.safetensors"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for cmd in ["check", "bench"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moescope"))
            .arg(cmd)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} without a GPU must fail");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no CUDA"),
            "{cmd}"
        );
    }
}

#[test]
fn weights_uploaded_from_the_host_equal_weights_generated_on_the_device() {
    if gpu().is_none() {
        return;
    }
    let mut cfg = MoeConfig::preset("qwen3-next-80b-a3b").unwrap();
    cfg.hidden_size = 256;
    cfg.moe_intermediate_size = 64;
    cfg.shared_intermediate_size = 64;
    let syn = || SyntheticWeights::new(cfg.clone(), 3, 0.0);
    let mut generated = cuda::open(Box::new(syn())).unwrap();
    let mut uploaded = cuda::open(Box::new(moescope::engine::weights::synthetic::HostOnly(
        syn(),
    )))
    .unwrap();
    let paths = vec![
        PathSpec::unfused_baseline(),
        PathSpec::fused(Variant::Correct),
    ];
    let input = StepInput {
        step: 0,
        tokens: 50,
        seed: 1,
        hidden: None,
        sample_tokens: vec![0, 17, 49],
    };
    let a = generated.step(&input, &paths).unwrap();
    let b = uploaded.step(&input, &paths).unwrap();
    assert_eq!(a.router_logits, b.router_logits);
    assert_eq!(a.shared_gate, b.shared_gate);
    for (x, y) in a.paths.iter().zip(&b.paths) {
        assert_eq!(x.slot_ids, y.slot_ids);
        assert_eq!(x.sample_outputs, y.sample_outputs);
    }
    // The f64 reference reads the same expert either way.
    assert_eq!(
        generated.weights().expert(7).unwrap(),
        uploaded.weights().expert(7).unwrap()
    );
}
