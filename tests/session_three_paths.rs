//! A session with three paths (A, B and path C, a user kernel) keeps path C's kernel name
//! through recording, reading, the summary and every export.

use moescope::engine::paths::{PathId, Variant};
use moescope::session::SessionReader;
use moescope::ui::fixtures;
use std::path::Path;
use std::process::{Command, Output};

fn moescope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn session(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("three.jsonl");
    let paths = fixtures::three_paths(Variant::Correct);
    fixtures::write_session(&file, "deepseek-v3", &paths, 12).unwrap();
    file
}

#[test]
fn the_reader_gives_path_c_its_kernel_in_the_header_and_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reader, warnings) = SessionReader::open(&session(dir.path())).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let c = &reader.header().paths[2];
    assert_eq!(c.kernel.as_deref(), Some(fixtures::USER_KERNEL));
    assert_eq!(reader.len(), 12);
    for r in reader.steps() {
        let r = r.unwrap();
        assert_eq!(r.paths.len(), 3);
        let c = &r.paths[2];
        assert_eq!(c.name, PathId::C);
        assert_eq!(c.spec.title(c.name), "C fused_router.cu");
    }
}

#[test]
fn the_summary_and_every_export_carry_path_c() {
    let dir = tempfile::tempdir().unwrap();
    let file = session(dir.path());
    let f = file.to_str().unwrap();
    let summary = ok(&moescope(&["replay", f, "--summary"]));
    assert!(
        summary.contains("path C   user kernel fused_router.cu"),
        "{summary}"
    );
    let export = |format: &str| {
        let out = dir.path().join(format!("out.{format}"));
        ok(&moescope(&[
            "export",
            f,
            "--format",
            format,
            "-o",
            out.to_str().unwrap(),
        ]));
        std::fs::read_to_string(out).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&export("json")).unwrap();
    assert_eq!(json["header"]["paths"][2]["kernel"], "fused_router.cu");
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 12);
    assert!(steps
        .iter()
        .all(|s| s["paths"][2]["spec"]["kernel"] == "fused_router.cu"));
    let chrome = export("chrome");
    assert!(
        chrome.contains("path C: user kernel fused_router.cu"),
        "the path C track is named by its kernel"
    );
    assert!(
        chrome.contains("router_user"),
        "path C's kernels are laid out"
    );
    let csv = export("csv");
    assert!(csv.lines().any(|l| l.contains(",C,router_user,")), "{csv}");
}
