//! Router precision as a path option (`--router-logits`): a path that routes on bf16 logits
//! moves some tokens to other experts than the f64 reference (which routes the f32 logits),
//! one on f32 logits moves none; the precision is in the path's spec and its title.

use moescope::engine::paths::{LogitsDtype, PathId, PathLogits, PathSpec, Variant};
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec};
use moescope::engine::step::StepRecord;
use moescope::engine::BackendChoice;
use std::process::{Command, Output};

/// DeepSeek-V3 routing (256 experts, sigmoid scores plus a correction bias: many near ties
/// between the 8th and 9th expert) with tiny expert matrices, on the CPU.
fn spec(logits: &str) -> RunSpec {
    RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".to_string()),
            hidden: Some(64),
            intermediate: Some(64),
            backend: BackendChoice::Cpu,
            ..LayerSpec::default()
        },
        tokens: 512,
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

fn steps(logits: &str, n: usize) -> Vec<StepRecord> {
    let (mut engine, _) = spec(logits).build_engine().unwrap();
    (0..n).map(|_| engine.step().unwrap()).collect()
}

#[test]
fn bf16_logits_change_some_tokens_experts_and_f32_none() {
    let recs = steps("B=bf16", 3);
    let tokens: usize = recs.iter().map(|r| r.tokens).sum();
    let moved = |p: usize| -> f64 {
        recs.iter()
            .map(|r| (1.0 - r.comparison.routing_agreement_ref[p]) * r.tokens as f64)
            .sum()
    };
    assert_eq!(
        moved(0),
        0.0,
        "path A routes the f32 logits as the reference"
    );
    let b = moved(1);
    assert!(
        b >= 1.0 && b < 0.5 * tokens as f64,
        "path B on bf16 logits: {b} of {tokens} tokens changed experts"
    );
    // The A-B agreement shows the same tokens.
    let ab: f64 = recs
        .iter()
        .map(|r| (1.0 - r.comparison.routing_agreement_ab) * r.tokens as f64)
        .sum();
    assert!(
        (ab - b).abs() < 0.5,
        "A-B disagreement {ab}, B-reference {b}"
    );
    // Every step says which precision each path read.
    for r in &recs {
        assert_eq!(r.paths[0].spec.logits, LogitsDtype::F32);
        assert_eq!(r.paths[1].spec.logits, LogitsDtype::Bf16);
        assert_eq!(r.paths[1].spec.title(PathId::B), "B bf16");
        assert!(
            r.paths.iter().all(|p| p.contract.ok),
            "weights still sum right"
        );
    }
}

#[test]
fn f32_logits_match_the_reference_exactly() {
    for r in steps("f32", 3) {
        assert_eq!(r.comparison.routing_agreement_ref, vec![1.0, 1.0]);
        assert_eq!(r.comparison.routing_agreement_ab, 1.0);
        assert!(r.paths.iter().all(|p| p.spec.logits == LogitsDtype::F32));
    }
}

#[test]
fn bf16_on_every_path_moves_both_and_the_same_tokens() {
    let recs = steps("bf16", 2);
    for r in &recs {
        // Both read the same rounded logits: they agree with each other exactly.
        assert_eq!(r.comparison.routing_agreement_ab, 1.0);
        assert_eq!(
            r.comparison.routing_agreement_ref[0],
            r.comparison.routing_agreement_ref[1]
        );
    }
    assert!(recs
        .iter()
        .any(|r| r.comparison.routing_agreement_ref[0] < 1.0));
}

#[test]
fn naming_path_c_without_a_kernel_is_refused() {
    let err = spec("C=bf16").build_engine().err().expect("refused");
    assert!(err.to_string().contains("--kernel"), "{err}");
}

fn moescope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .output()
        .unwrap()
}

const SMALL: &[&str] = &[
    "run",
    "--headless",
    "--backend",
    "cpu",
    "--preset",
    "deepseek-v3",
    "--hidden",
    "64",
    "--intermediate",
    "64",
    "--tokens",
    "64",
    "--steps",
    "1",
];

#[test]
fn the_flag_sets_each_path_and_says_so_in_help() {
    let out = moescope(&[SMALL, &["--router-logits", "A=bf16"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let rec: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(rec["paths"][0]["spec"]["logits"], "bf16");
    assert!(
        rec["paths"][1]["spec"].get("logits").is_none(),
        "f32 is the default"
    );
    let help = moescope(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--router-logits") && help.contains("A=bf16,B=f32"),
        "{help}"
    );
}

#[test]
fn a_bad_value_is_an_error_naming_the_flag_and_what_it_takes() {
    for (bad, says) in [
        ("fp16", "expected f32 or bf16"),
        ("A=bf16,D=f32", "expected A, B or C"),
        ("C=bf16", "--kernel"),
    ] {
        let out = moescope(&[SMALL, &["--router-logits", bad]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(err.contains(says), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        if bad != "C=bf16" {
            assert!(err.contains("--router-logits"), "{bad}: {err}");
        }
    }
}

#[test]
fn a_routing_trace_leaves_no_router_to_set() {
    let trace = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/routing/deepseek-v3-skew.safetensors"
    );
    let out = moescope(&[SMALL, &["--routing", trace, "--router-logits", "bf16"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--routing") && err.contains("--router-logits"),
        "{err}"
    );
}

/// Three paths on the CPU (a third fused path stands in for a user kernel): C on bf16 moves
/// tokens, A and B on f32 none.
#[test]
fn a_third_path_on_the_cpu_takes_its_own_precision() {
    let mut s = spec("C=bf16");
    s.paths.push(PathSpec::fused(Variant::Correct));
    let (mut engine, _) = s.build_engine().unwrap();
    let r = engine.step().unwrap();
    assert_eq!(r.paths.len(), 3);
    assert_eq!(r.paths[2].name, PathId::C);
    assert_eq!(r.paths[2].spec.logits, LogitsDtype::Bf16);
    let agree = &r.comparison.routing_agreement_ref;
    assert_eq!((agree[0], agree[1]), (1.0, 1.0));
    assert!(agree[2] < 1.0, "{agree:?}");
    assert_eq!(r.comparison.routing_agreement_ab, 1.0);
}
