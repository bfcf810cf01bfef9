//! Headless runs under signals: SIGTERM, SIGHUP or SIGINT during `run --export -o` ends after the
//! step in flight with every finished step exported, exit 128+N and no temporary file; SIGKILL
//! leaves the recorded steps beside the output, from which `moescope export` recovers them.

use moescope::session::SessionReader;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LAYER: &[&str] = &[
    "--backend",
    "cpu",
    "--preset",
    "deepseek-v3",
    "--hidden",
    "64",
    "--intermediate",
    "64",
    "--tokens",
    "8",
    "--telemetry-hz",
    "0",
];

fn start(dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(["run", "--headless", "--steps", "1000000"])
        .args(LAYER)
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `path` holds at least `steps` step lines.
fn wait_for_steps(path: &Path, steps: usize) {
    let t = Instant::now();
    loop {
        let lines = std::fs::read(path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if lines > steps {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no steps in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal}");
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_signal_during_an_export_keeps_every_finished_step() {
    for (signal, code) in [("TERM", 143), ("HUP", 129), ("INT", 130)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let child = start(d, &["--export", "csv", "-o", "out.csv"]);
        wait_for_steps(&d.join("out.csv.partial.jsonl"), 3);
        kill(&child, signal);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: {err}");
        assert!(
            err.contains(&format!("interrupted by SIG{signal}")),
            "{err}"
        );
        assert_eq!(files(d), ["out.csv"], "SIG{signal}");
        let csv = std::fs::read_to_string(d.join("out.csv")).unwrap();
        let steps: std::collections::BTreeSet<u64> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        let n = steps.len() as u64;
        assert!(n >= 3, "SIG{signal}: {n} steps");
        // Every step from 0, none missing; the run said how many it finished.
        assert_eq!(
            steps.into_iter().collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>()
        );
        assert!(err.contains(&format!("moescope: {n} steps")), "{err}");
    }
}

#[test]
fn sigkill_during_an_export_leaves_the_steps_to_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = start(d, &["--export", "json", "-o", "out.json"]);
    let partial = d.join("out.json.partial.jsonl");
    wait_for_steps(&partial, 3);
    child.kill().unwrap();
    child.wait().unwrap();
    // No temporary file: only the recording, which opens (at most the step in flight lost).
    assert_eq!(files(d), ["out.json.partial.jsonl"]);
    let (reader, _) = SessionReader::open(&partial).unwrap();
    assert!(reader.len() >= 3);
    // A new run refuses to overwrite it without --force, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args([
            "run",
            "--headless",
            "--steps",
            "1",
            "--export",
            "json",
            "-o",
            "out.json",
        ])
        .args(LAYER)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("moescope export"));
    let out = Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args([
            "export",
            "out.json.partial.jsonl",
            "--format",
            "json",
            "-o",
            "out.json",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out.json")).unwrap()).unwrap();
    assert_eq!(doc["steps"].as_array().unwrap().len(), reader.len());
}

#[test]
fn a_signal_ends_a_json_lines_run_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let child = start(d, &["--record", "s.jsonl"]);
    wait_for_steps(&d.join("s.jsonl"), 2);
    kill(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    let (reader, warnings) = SessionReader::open(&d.join("s.jsonl")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(reader.len() >= 2);
}
