//! The smaller cases of issue 17, each as a user meets it: a file given as a checkpoint
//! directory, a header-only session's CSV export, `--tokens` values clap used to misread.

use std::path::Path;
use std::process::{Command, Output};

fn moescope(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_file_given_as_a_checkpoint_directory_is_named_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("model.safetensors"), b"not a directory").unwrap();
    for args in [
        &[
            "run",
            "--headless",
            "--backend",
            "cpu",
            "--model",
            "model.safetensors",
        ][..],
        &["inspect", "model.safetensors"][..],
    ] {
        let o = moescope(args, d);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains("model.safetensors is a file; expected a checkpoint directory"),
            "{args:?}: {err}"
        );
    }
    let o = moescope(&["inspect", "missing"], d);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn a_header_only_session_exports_a_csv_with_its_header_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = moescope(
        &[
            "run",
            "--headless",
            "--backend",
            "cpu",
            "--hidden",
            "64",
            "--intermediate",
            "64",
            "--tokens",
            "4",
            "--steps",
            "1",
            "--record",
            "s.jsonl",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(d.join("s.jsonl")).unwrap();
    let header = text.lines().next().unwrap();
    std::fs::write(d.join("h.jsonl"), format!("{header}\n")).unwrap();
    let o = moescope(&["export", "h.jsonl", "--format", "csv"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{}\n", moescope::session::export::CSV_HEADER)
    );
}
