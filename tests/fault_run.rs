//! The scripted fault run (tests/fault_run.sh) in CI: kill -9 at random points while recording
//! and exporting, then replay and export what is left; no finished step may be lost. A few cases
//! a mode here; docs/reliability.md has the figures of a longer run.

use std::process::Command;

#[test]
fn kill_9_while_recording_and_exporting_loses_no_finished_step() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fault_run.sh"))
        .arg(env!("CARGO_BIN_EXE_moescope"))
        .arg("5")
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "fault run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK:"), "{stdout}");
}
