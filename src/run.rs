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
    let steps = args.steps.unwrap_or(DEFAULT_HEADLESS_STEPS);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for _ in 0..steps {
        let record = engine.step()?;
        serde_json::to_writer(&mut out, &record).context("writing a StepRecord to stdout")?;
        writeln!(out).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    Ok(())
}
