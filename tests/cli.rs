//! The binary as a user runs it: headless output, and a clear error with a non-zero exit (never a
//! panic) for every bad input.

use std::path::Path;
use std::process::{Command, Output};

fn moescope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .output()
        .unwrap()
}

fn assert_fails_naming(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks `{n}`: {stderr}");
    }
}

fn golden(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name)
        .display()
        .to_string()
}

/// A headless CPU run of a small layer (hidden 64, intermediate 32) that must succeed; returns
/// its stdout.
fn headless_small(args: &[&str]) -> String {
    let mut all = vec![
        "--headless",
        "--backend",
        "cpu",
        "--hidden",
        "64",
        "--intermediate",
        "32",
    ];
    all.extend_from_slice(args);
    let out = moescope(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn headless_run_prints_one_step_record_per_line() {
    let text = headless_small(&["--preset", "glm-4.5", "--steps", "3", "--tokens", "8"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        let rec: moescope::engine::step::StepRecord = serde_json::from_str(line).unwrap();
        assert_eq!(rec.step, i as u64);
        assert_eq!(rec.tokens, 8);
        assert_eq!(rec.paths.len(), 2);
        assert!(rec.paths.iter().all(|p| p.contract.ok));
    }
}

#[test]
fn headless_run_with_a_bug_variant_reports_it() {
    let text = headless_small(&[
        "--preset",
        "kimi-k2",
        "--steps",
        "1",
        "--tokens",
        "4",
        "--variant",
        "shared-inv-rsf",
    ]);
    let rec: moescope::engine::step::StepRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(
        moescope::session::words::verdict(&rec.paths[1].contract),
        "shared weight 0.354, expected 1.000"
    );
}

#[test]
fn unknown_preset_is_named_with_the_choices() {
    let out = moescope(&["--headless", "--backend", "cpu", "--preset", "llama-3"]);
    assert_fails_naming(&out, &["preset", "llama-3", "deepseek-v3"]);
}

#[test]
fn unknown_variant_lists_the_variants() {
    let out = moescope(&["--headless", "--backend", "cpu", "--variant", "oops"]);
    assert_fails_naming(&out, &["oops", "shared-inv-rsf"]);
}

#[test]
fn zero_tokens_is_refused() {
    let out = moescope(&["--headless", "--backend", "cpu", "--tokens", "0"]);
    assert_fails_naming(&out, &["--tokens"]);
}

#[test]
fn invalid_config_names_field_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"model_type":"deepseek_v3","n_routed_experts":256,"n_shared_experts":1,"num_experts_per_tok":8,"n_group":7,"topk_group":4,"topk_method":"noaux_tc","scoring_func":"sigmoid","norm_topk_prob":true,"routed_scaling_factor":2.5,"hidden_size":64,"moe_intermediate_size":32}"#).unwrap();
    let out = moescope(&[
        "--headless",
        "--backend",
        "cpu",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_fails_naming(&out, &["n_group", "must divide n_routed_experts"]);
    std::fs::write(&cfg, "{not json").unwrap();
    let out = moescope(&[
        "--headless",
        "--backend",
        "cpu",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_fails_naming(&out, &["not valid JSON"]);
    let out = moescope(&[
        "--headless",
        "--backend",
        "cpu",
        "--config",
        "/nonexistent/config.json",
    ]);
    assert_fails_naming(&out, &["cannot read config file"]);
}

#[test]
fn route_rejects_bad_logits_files() {
    let dir = tempfile::tempdir().unwrap();
    // Wrong expert count for the preset.
    let out = moescope(&[
        "route",
        "--backend",
        "cpu",
        "--preset",
        "kimi-k2",
        "--logits",
        &golden("deepseek-v3-random.safetensors"),
    ]);
    assert_fails_naming(&out, &["256 experts", "384"]);
    // A model with a bias needs the bias tensor.
    let out = moescope(&[
        "route",
        "--backend",
        "cpu",
        "--preset",
        "deepseek-v3",
        "--logits",
        &golden("qwen3-30b-a3b-random.safetensors"),
    ]);
    assert_fails_naming(&out, &["128 experts"]);
    // Not a safetensors file.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage").unwrap();
    let out = moescope(&[
        "route",
        "--backend",
        "cpu",
        "--preset",
        "deepseek-v3",
        "--logits",
        junk.to_str().unwrap(),
    ]);
    assert_fails_naming(&out, &["not a valid safetensors file"]);
    // Missing file; and no output file is left behind on failure.
    let target = dir.path().join("out.json");
    let out = moescope(&[
        "route",
        "--backend",
        "cpu",
        "--logits",
        "/nonexistent.safetensors",
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_fails_naming(&out, &["cannot read logits file"]);
    assert!(!target.exists());
}
