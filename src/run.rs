//! `moescope run`: the TUI by default, or headless StepRecords as JSON lines.

use crate::cli::RunArgs;
use anyhow::{Context, Result};
use std::io::Write;

/// Steps of a headless run when --steps is not given.
pub const DEFAULT_HEADLESS_STEPS: u64 = 10;

pub fn run(args: RunArgs) -> Result<()> {
    if !args.headless {
        return crate::ui::run_tui(args);
    }
    let (mut engine, notices) = args.build_engine()?;
    for n in &notices {
        eprintln!("moescope: {n}");
    }
    let telemetry = crate::engine::telemetry::Telemetry::start(0, args.telemetry_hz);
    if let (Some(why), "cuda") = (telemetry.unavailable(), engine.info().kind.as_str()) {
        eprintln!("moescope: {why}");
    }
    let steps = args.steps.unwrap_or(DEFAULT_HEADLESS_STEPS);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for _ in 0..steps {
        let mut record = engine.step()?;
        record.telemetry = telemetry.latest();
        serde_json::to_writer(&mut out, &record).context("writing a StepRecord to stdout")?;
        writeln!(out).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    Ok(())
}
