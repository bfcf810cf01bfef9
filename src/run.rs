//! `moescope run`: the TUI by default, or headless StepRecords as JSON lines.
//! Headless runs can record a session (`--record FILE`) and export directly (`--export FMT`).

use crate::cli::RunArgs;
use crate::session::export::{self, Output};
use crate::session::{SessionHeader, SessionWriter};
use anyhow::{bail, Context, Result};
use std::io::Write;

/// Steps of a headless run when --steps is not given.
pub const DEFAULT_HEADLESS_STEPS: u64 = 10;

pub fn run(args: RunArgs) -> Result<()> {
    if !args.headless {
        return crate::ui::run_tui(args);
    }
    // Refuse existing outputs before spending time on the engine.
    if let Some(path) = &args.record {
        if path.exists() && !args.force {
            bail!(
                "session file {} already exists; pass --force to overwrite it",
                path.display()
            );
        }
        if args.export.is_some() && args.output.as_ref() == Some(path) {
            bail!(
                "--record and -o name the same file {}; choose two files",
                path.display()
            );
        }
    }
    let mut output = match args.export {
        Some(_) => Some(Output::create(args.output.as_deref(), args.force)?),
        None => None,
    };
    let (mut engine, notices) = args.build_engine()?;
    for n in &notices {
        eprintln!("moescope: {n}");
    }
    let why_no_telemetry = engine.start_telemetry(args.telemetry_hz);
    if let (Some(why), "cuda") = (why_no_telemetry, engine.info().kind.as_str()) {
        eprintln!("moescope: {why}");
    }
    let header = SessionHeader::for_run(&engine, &args);
    let mut recorder = match &args.record {
        Some(path) => Some(SessionWriter::create(path, &header, args.force)?),
        None => None,
    };
    let steps = args.steps.unwrap_or(DEFAULT_HEADLESS_STEPS);
    // Each step is recorded (and flushed) as soon as it exists, whatever consumes it next.
    let records = (0..steps).map(|_| {
        let record = engine.step()?;
        if let Some(w) = recorder.as_mut() {
            w.write(&record)?;
        }
        Ok(record)
    });
    match (args.export, output.as_mut()) {
        (Some(format), Some(out)) => export::write(format, &header, records, out.writer())?,
        _ => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for record in records {
                serde_json::to_writer(&mut out, &record?)
                    .context("writing a StepRecord to stdout")?;
                writeln!(out).context("writing to stdout")?;
                out.flush().context("writing to stdout")?;
            }
        }
    }
    match output {
        Some(out) => out.commit(),
        None => Ok(()),
    }
}
