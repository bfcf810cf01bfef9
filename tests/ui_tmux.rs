//! Runs the tmux scripts against the built binary: the real TUI in a real (tmux) terminal. The
//! scripts skip with a message where tmux is missing.

use std::process::Command;

fn script(name: &str) {
    script_with(name, &[]);
}

/// Runs tests/NAME with the binary and `args`.
fn script_with(name: &str, args: &[&str]) {
    let path = format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&path)
        .arg(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK:") || stdout.contains("SKIP:"),
        "{stdout}"
    );
}

#[test]
fn tmux_drives_the_real_tui() {
    script("tui_tmux.sh");
}

/// SIGTERM, SIGHUP and SIGINT: exit 128+N, terminal restored, the session whole.
#[test]
fn signals_restore_the_terminal() {
    script("tui_signals.sh");
}

/// A replay of a three-path session (path C a user kernel) through every view, and a live run
/// with path B on bf16 router logits.
#[test]
fn tmux_replays_three_paths_through_every_view() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let session = dir.path().join("three.jsonl");
    let paths = moescope::ui::fixtures::three_paths(moescope::engine::paths::Variant::Correct);
    moescope::ui::fixtures::write_session(&session, "deepseek-v3", &paths, 12)
        .expect("writing the session");
    script_with(
        "tui_tmux_three.sh",
        &[session.to_str().expect("a UTF-8 path")],
    );
}
