//! Non-finite values are findings (issue 17): NaN in the gate weights, the correction bias or
//! the inputs makes the step invalid with the first stage and the count, never "contract holds";
//! float flags that must be finite are refused when parsed.

mod checkpoint_support;

use checkpoint_support::*;
use moescope::engine::config::MoeConfig;
use moescope::engine::finite::{FiniteStage, Verdict};
use moescope::engine::step::StepRecord;
use moescope::session::words;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::process::Command;

const H: usize = 32;
const I: usize = 16;

fn config() -> Value {
    json!({
        "model_type": "deepseek_v3", "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "hidden_size": H, "moe_intermediate_size": I, "num_hidden_layers": 1,
        "first_k_dense_replace": 0
    })
}

fn layer() -> Layer {
    Layer::random(&MoeConfig::from_hf_json(&config()).unwrap(), 3)
}

fn hidden(tokens: usize) -> Vec<f32> {
    (0..tokens * H)
        .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
        .collect()
}

fn step(layer: Layer, hidden: &[f32]) -> StepRecord {
    one_step(Box::new(Direct::new(layer, 1)), hidden)
}

fn assert_invalid(record: &StepRecord, first: FiniteStage) {
    for p in &record.paths {
        let verdict = p.finite.as_ref().expect("counted").verdict();
        match verdict {
            Verdict::Invalid { first: f, count } => {
                assert_eq!(f, first, "path {}", p.name);
                assert!(count > 0);
            }
            Verdict::Valid => panic!("path {} called valid", p.name),
        }
        assert!(
            !p.contract.ok,
            "path {}: {}",
            p.name,
            words::verdict(&p.contract)
        );
        assert!(
            words::verdict(&p.contract).starts_with("invalid"),
            "{}",
            words::verdict(&p.contract)
        );
    }
}

#[test]
fn a_finite_layer_is_valid() {
    let r = step(layer(), &hidden(8));
    for p in &r.paths {
        assert_eq!(p.finite.as_ref().unwrap().verdict(), Verdict::Valid);
        assert!(p.contract.ok, "{}", words::verdict(&p.contract));
    }
}

#[test]
fn nan_in_the_gate_weights_is_invalid_from_the_weights_on() {
    let mut l = layer();
    l.router[5] = f32::NAN;
    assert_invalid(&step(l, &hidden(8)), FiniteStage::Weights);
}

#[test]
fn nan_in_the_correction_bias_is_invalid() {
    let mut l = layer();
    l.bias.as_mut().unwrap()[1] = f32::NAN;
    assert_invalid(&step(l, &hidden(8)), FiniteStage::Weights);
}

#[test]
fn inf_in_an_expert_is_invalid() {
    let mut l = layer();
    l.experts[2].down[0] = f32::INFINITY;
    assert_invalid(&step(l, &hidden(8)), FiniteStage::Weights);
}

#[test]
fn nan_in_the_hidden_states_is_invalid_from_the_input_on() {
    let mut x = hidden(8);
    x[40] = f32::NAN;
    let r = step(layer(), &x);
    assert_invalid(&r, FiniteStage::Input);
    // The count covers the later stages too: the NaN token's logits and output row.
    let check = r.paths[0].finite.as_ref().unwrap();
    assert!(check
        .nonfinite
        .iter()
        .any(|n| n.stage == FiniteStage::Combine));
}

fn moescope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_nan_checkpoint_runs_headless_as_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = layer();
    l.router[0] = f32::NAN;
    let tensors = layer_tensors(&l, "model.layers.0.", Naming::DeepSeek, Dtype::BF16);
    write_checkpoint(tmp.path(), &config(), &tensors, 1);
    let dir = tmp.path().to_str().unwrap();
    let out = moescope(&[
        "run",
        "--headless",
        "--backend",
        "cpu",
        "--model",
        dir,
        "--steps",
        "2",
        "--tokens",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        let r: StepRecord = serde_json::from_str(line).unwrap();
        assert_invalid(&r, FiniteStage::Weights);
        assert!(line.contains(r#""stage":"weights""#), "{line}");
        assert!(!line.contains("contract holds"));
    }
}

#[test]
fn float_flags_must_be_finite() {
    for (flag, value) in [
        ("--skew", "NaN"),
        ("--skew", "inf"),
        ("--skew", "-1"),
        ("--telemetry-hz", "nan"),
    ] {
        let out = moescope(&["run", "--headless", "--backend", "cpu", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains("finite number"), "{err}");
    }
}

#[test]
fn the_token_count_is_checked_and_not_silently_ignored() {
    let out = moescope(&["run", "--headless", "--backend", "cpu", "--tokens", "-5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tokens") && err.contains("whole number ≥ 1"),
        "{err}"
    );
    let out = moescope(&["run", "--headless", "--tokens", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = moescope(&[
        "run",
        "--headless",
        "--tokens",
        "5",
        "--hidden-states",
        "h.safetensors",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tokens") && err.contains("--hidden-states"),
        "{err}"
    );
}
