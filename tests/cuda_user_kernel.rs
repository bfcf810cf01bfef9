//! On a GPU: `check --kernel` on every example kernel. The correct fused router passes on every
//! preset (and the 512-expert shape); each bug example fails and its output names the stage and
//! class of its bug. Skips (and says so) without a GPU.

use std::process::{Command, Output};

fn moescope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn gpu_or_skip() -> bool {
    match moescope::engine::cuda::probe() {
        Ok(()) => true,
        Err(why) => {
            println!("skipped: {why}");
            false
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_correct_example_passes_every_preset() {
    if !gpu_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = moescope(&[
        "check",
        "--kernel",
        "examples/kernels/fused_router.cu",
        "--all",
        "--json",
        json.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(", 0 failed"), "{text}");
    assert!(text.contains("moescope's fused"), "the timing line: {text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["failed_cases"], 0);
    assert_eq!(report["configs"].as_array().unwrap().len(), 9);
}

#[test]
fn each_bug_example_fails_with_its_class_named() {
    if !gpu_or_skip() {
        return;
    }
    let cases = [
        (
            "bug_shared_inv_rsf.cu",
            "deepseek-v3",
            "scaling · real error",
        ),
        ("bug_rsf_twice.cu", "deepseek-v3", "scaling · real error"),
        ("bug_hardcoded_2_5.cu", "kimi-k2", "scaling · real error"),
        (
            "bug_shared_dropped.cu",
            "deepseek-v3",
            "shared slot · real error",
        ),
        (
            "bug_group_tie.cu",
            "deepseek-v3",
            "group selection · tie-rule difference",
        ),
        (
            "bug_shared_marker_twice.cu",
            "deepseek-v3",
            "shared slot · real error",
        ),
        ("bug_rsf_ignored.cu", "deepseek-v3", "scaling · real error"),
    ];
    for (file, preset, want) in cases {
        let path = format!("examples/kernels/{file}");
        let out = moescope(&["check", "--kernel", &path, "--preset", preset]);
        let text = stdout(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} passed:\n{text}");
        assert!(
            err.contains(file) && !err.contains("panicked"),
            "{file}: {err}"
        );
        assert!(text.contains(want), "{file}: no `{want}` in\n{text}");
    }
}

#[test]
fn hardcoded_2_5_passes_on_deepseek_v3_whose_rsf_is_2_5() {
    if !gpu_or_skip() {
        return;
    }
    let out = moescope(&["check", "--kernel", "examples/kernels/bug_hardcoded_2_5.cu"]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn the_so_example_builds_with_nvcc_and_passes() {
    if !gpu_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libso_router.so");
    let built = Command::new("nvcc")
        .args([
            "-O3",
            "-std=c++17",
            "-arch=sm_90",
            "-shared",
            "-Xcompiler",
            "-fPIC",
        ])
        .args(["-I", "include", "-I", "examples/kernels", "-o"])
        .arg(&lib)
        .arg("examples/kernels/so_router.cu")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    match built {
        Ok(s) if s.success() => {}
        _ => {
            println!("skipped: nvcc is not installed (or failed) here");
            return;
        }
    }
    let out = moescope(&[
        "check",
        "--kernel",
        lib.to_str().unwrap(),
        "--preset",
        "kimi-k2",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One headless run; returns its StepRecords.
fn run_headless(args: &[&str]) -> Vec<serde_json::Value> {
    let out = moescope(&[&["run", "--headless"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a StepRecord line"))
        .collect()
}

#[test]
fn the_correct_example_runs_as_path_c_through_the_layer() {
    if !gpu_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("c.jsonl");
    let recs = run_headless(&[
        "--steps",
        "3",
        "--tokens",
        "256",
        "--kernel",
        "examples/kernels/fused_router.cu",
        "--record",
        session.to_str().unwrap(),
    ]);
    for rec in &recs {
        let paths = rec["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 3, "A, B and C");
        assert_eq!(paths[2]["name"], "C");
        assert_eq!(paths[2]["spec"]["router"], "user");
        assert_eq!(paths[2]["spec"]["kernel"], "fused_router.cu");
        assert_eq!(paths[2]["contract"]["ok"], true, "{}", paths[2]["contract"]);
        let c = &rec["comparison"];
        // Compared on the device: every token, the device reference's time reported.
        assert_eq!(c["sampled_tokens"], 256, "every token compared: {c}");
        assert!(c["reference_us"].as_f64().is_some(), "{c}");
        let agree = |p: usize| c["routing_agreement_ref"][p].as_f64().unwrap();
        assert_eq!(
            (agree(1), agree(2)),
            (1.0, 1.0),
            "B and C route as the reference"
        );
        let ties = &c["ties_ref"][2];
        assert_eq!(ties, &c["ties_ref"][1], "C's disagreements are B's (none)");
        let err = |p: usize| c["output_rel_l2_ref"][p].as_f64().unwrap();
        assert!(
            err(2) < 1e-2,
            "path C against the f64 reference: {}",
            err(2)
        );
        assert!(
            (err(2) - err(1)).abs() <= 0.1 * err(1),
            "C's output error {} is B's {} (same slots, same GEMMs)",
            err(2),
            err(1)
        );
        assert!(c["token_errors_ref"][2]["rel_l2"]["p99"].as_f64().is_some());
        let timed = paths[2]["timings"].as_array().unwrap();
        assert!(
            timed.iter().any(|t| t["name"] == "router_user"),
            "{timed:?}"
        );
    }
    // The session names path C's kernel in its header and in every record.
    let text = std::fs::read_to_string(&session).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["paths"][2]["kernel"], "fused_router.cu");
    let summary = moescope(&["replay", session.to_str().unwrap(), "--summary"]);
    assert!(
        stdout(&summary).contains("user kernel fused_router.cu"),
        "{}",
        stdout(&summary)
    );
}

#[test]
fn a_bug_example_as_path_c_shows_its_contract_violation() {
    if !gpu_or_skip() {
        return;
    }
    let recs = run_headless(&[
        "--steps",
        "1",
        "--tokens",
        "256",
        "--kernel",
        "examples/kernels/bug_shared_inv_rsf.cu",
    ]);
    let rec = recs.last().unwrap();
    let c = &rec["paths"][2];
    assert_eq!(c["spec"]["kernel"], "bug_shared_inv_rsf.cu");
    assert_eq!(c["contract"]["ok"], false, "{c}");
    let shared = c["shared_weight"]["mean"].as_f64().unwrap();
    assert!((shared - 0.4).abs() < 1e-3, "shared weight 1/rsf: {shared}");
    assert_eq!(
        c["contract"]["violations"][0]["kind"], "shared_weight",
        "{c}"
    );
    // On the device, over every token; A and B keep their contract.
    assert_eq!(rec["comparison"]["sampled_tokens"], 256);
    assert_eq!(rec["paths"][0]["contract"]["ok"], true);
    assert_eq!(rec["paths"][1]["contract"]["ok"], true);
    let err = rec["comparison"]["output_rel_l2_ref"][2].as_f64().unwrap();
    assert!(err > 0.1, "the wrong shared weight moves C's output: {err}");
}

#[test]
fn path_c_on_bf16_logits_changes_some_tokens_experts() {
    if !gpu_or_skip() {
        return;
    }
    let run = |logits: &str| {
        run_headless(&[
            "--steps",
            "2",
            "--tokens",
            "1024",
            "--kernel",
            "examples/kernels/fused_router.cu",
            "--router-logits",
            logits,
        ])
    };
    for rec in run("B=bf16,C=bf16") {
        let c = &rec["comparison"];
        let agree = |p: usize| c["routing_agreement_ref"][p].as_f64().unwrap();
        assert_eq!(
            agree(0),
            1.0,
            "A on f32 logits routes as the reference: {c}"
        );
        assert!(agree(1) < 1.0 && agree(1) > 0.5, "B on bf16: {c}");
        assert_eq!(agree(2), agree(1), "C on bf16 moves the tokens B does: {c}");
        assert_eq!(rec["paths"][2]["spec"]["logits"], "bf16");
        assert!(
            rec["paths"][0]["spec"].get("logits").is_none(),
            "A reads f32"
        );
    }
    // Every path on bf16, the unfused router's kernels too.
    for rec in run("bf16") {
        let c = &rec["comparison"];
        let agree = |p: usize| c["routing_agreement_ref"][p].as_f64().unwrap();
        assert!(agree(0) < 1.0 && (agree(0) - agree(1)).abs() <= 0.01, "{c}");
        assert_eq!(agree(2), agree(1), "{c}");
    }
}
