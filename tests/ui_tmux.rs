//! Runs tests/tui_tmux.sh against the built binary: the real TUI in a real (tmux) terminal.
//! The script skips with a message where tmux is missing.

use std::process::Command;

#[test]
fn tmux_drives_the_real_tui() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tui_tmux.sh"))
        .arg(env!("CARGO_BIN_EXE_moescope"))
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "tmux script failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("OK:") || stdout.contains("SKIP:"),
        "{stdout}"
    );
}
