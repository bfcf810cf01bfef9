//! Runs the tmux scripts against the built binary: the real TUI in a real (tmux) terminal. The
//! scripts skip with a message where tmux is missing.

use std::process::Command;

fn script(name: &str) {
    let path = format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&path)
        .arg(env!("CARGO_BIN_EXE_moescope"))
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
