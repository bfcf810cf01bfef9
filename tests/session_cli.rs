//! The session commands as a user runs them: `run --headless --record`, `replay --summary`,
//! `export`, and `run --headless --export`.

mod session_util;

use moescope::session::SessionReader;
use session_util::validate_chrome_trace;
use std::path::Path;
use std::process::{Command, Output};

/// The small DeepSeek-V3-shaped layer on the CPU (see `session_util::small_args`).
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
];

fn moescope(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn run(extra: &[&str], dir: &Path) -> Output {
    let mut args = vec!["run", "--headless"];
    args.extend_from_slice(LAYER);
    args.extend_from_slice(extra);
    moescope(&args, dir)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in `dir`, to check that nothing half-written or temporary is left behind.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn record_replay_and_export_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = run(&["--steps", "3", "--record", "s.jsonl"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    // The run still prints its StepRecords as JSON lines.
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
    let (reader, warnings) = SessionReader::open(&d.join("s.jsonl")).unwrap();
    assert_eq!((reader.len(), warnings.len()), (3, 0));
    assert_eq!(reader.header().config.name, "deepseek-v3");

    // Recording over an existing session needs --force.
    let o = run(&["--steps", "1", "--record", "s.jsonl"], d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(SessionReader::open(&d.join("s.jsonl")).unwrap().0.len(), 3);
    let o = run(&["--steps", "2", "--record", "s.jsonl", "--force"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(SessionReader::open(&d.join("s.jsonl")).unwrap().0.len(), 2);

    let o = moescope(&["replay", "s.jsonl", "--summary"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "steps    2",
        "A gate_gemm",
        "B router_fused",
        "holds on all 2 steps",
    ] {
        assert!(text.contains(needle), "summary lacks `{needle}`:\n{text}");
    }

    let o = moescope(
        &["export", "s.jsonl", "--format", "chrome", "-o", "t.json"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    validate_chrome_trace(&std::fs::read_to_string(d.join("t.json")).unwrap());
    // An existing output is refused unless --force, and left alone.
    let before = std::fs::read(d.join("t.json")).unwrap();
    let o = moescope(&["export", "s.jsonl", "--format", "csv", "-o", "t.json"], d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("t.json")).unwrap(), before);
    let o = moescope(
        &[
            "export", "s.jsonl", "--format", "csv", "-o", "t.json", "--force",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(d.join("t.json"))
        .unwrap()
        .starts_with("step,"));
    // Without -o the export goes to stdout.
    let o = moescope(&["export", "s.jsonl", "--format", "eplb"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["steps"], 2);
    // A session is never exported onto itself, even with --force.
    let o = moescope(
        &[
            "export", "s.jsonl", "--format", "json", "-o", "s.jsonl", "--force",
        ],
        d,
    );
    assert!(!o.status.success());
    assert_eq!(SessionReader::open(&d.join("s.jsonl")).unwrap().0.len(), 2);
    assert_eq!(files(d), ["s.jsonl", "t.json"]);
}

#[test]
fn a_headless_run_exports_directly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = run(
        &["--steps", "2", "--export", "chrome", "-o", "trace.json"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "the export replaces the JSON lines");
    let t = validate_chrome_trace(&std::fs::read_to_string(d.join("trace.json")).unwrap());
    assert_eq!(t.slices[&(1, 0)], ["step 0", "step 1"]);

    // Record and export in one run; the export matches an export of the recording.
    let o = run(
        &[
            "--steps",
            "2",
            "--record",
            "r.jsonl",
            "--export",
            "eplb",
            "-o",
            "live.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = moescope(
        &[
            "export",
            "r.jsonl",
            "--format",
            "eplb",
            "-o",
            "replayed.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let live: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("live.json")).unwrap()).unwrap();
    let replayed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("replayed.json")).unwrap()).unwrap();
    assert_eq!(live, replayed);

    // An existing output is refused before the run starts.
    let o = run(&["--steps", "2", "--export", "csv", "-o", "trace.json"], d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(
        files(d),
        ["live.json", "r.jsonl", "replayed.json", "trace.json"]
    );
}

#[test]
fn a_failed_export_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = run(&["--steps", "3", "--record", "s.jsonl"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    // Every step line unreadable (found only when parsed): the export is refused at the end.
    let text = std::fs::read_to_string(d.join("s.jsonl")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    for l in &mut lines[1..] {
        *l = r#"{"step":"two"}"#;
    }
    std::fs::write(d.join("bad.jsonl"), lines.join("\n") + "\n").unwrap();
    for format in ["json", "chrome", "eplb", "csv"] {
        let o = moescope(&["export", "bad.jsonl", "--format", format, "-o", "out"], d);
        assert!(!o.status.success(), "{format}");
        let err = stderr(&o);
        assert!(
            err.contains("no valid step") && err.contains("line 4") && !err.contains("panicked"),
            "{err}"
        );
    }
    let o = moescope(&["replay", "bad.jsonl", "--summary"], d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 4"), "{}", stderr(&o));
    assert_eq!(files(d), ["bad.jsonl", "s.jsonl"]);
}
