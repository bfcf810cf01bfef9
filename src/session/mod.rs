//! Sessions: record (JSONL), replay reader, export (json, chrome trace, eplb, csv).
//!
//! The format is documented in docs/session-format.md: line 1 a [`SessionHeader`], then one
//! `StepRecord` per line. [`SessionWriter`] appends and flushes per step; [`SessionReader`]
//! indexes line offsets and parses a step only when asked, so large sessions open fast in
//! bounded memory. `summary` and `export` consume steps one at a time from any iterator, so a
//! headless run exports live with the same code that exports a recorded file.

pub mod export;
pub mod reader;
pub mod summary;
pub mod writer;

pub use reader::SessionReader;
pub use writer::SessionWriter;

use crate::engine::config::MoeConfig;
use crate::engine::paths::PathSpec;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The `format` field of every session header.
pub const SESSION_FORMAT: &str = "moescope-session";
/// The session format version this build writes and reads.
pub const SESSION_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Json,
    Chrome,
    Eplb,
    Csv,
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Session file (JSONL) to open.
    pub file: PathBuf,
    /// Print aggregate statistics instead of opening the TUI.
    #[arg(long)]
    pub summary: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Session file (JSONL) to export.
    pub file: PathBuf,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file (stdout when absent).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// `moescope replay FILE [--summary]`.
pub fn replay(args: ReplayArgs) -> Result<()> {
    if !args.summary {
        return crate::ui::run_replay(&args.file);
    }
    let (mut reader, warnings) = SessionReader::open(&args.file)?;
    print_warnings(&warnings);
    let header = reader.header().clone();
    let summary = summary::Summary::of_steps(&header, reader.steps())?;
    let text = summary.render(&args.file.display().to_string());
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the summary to stdout")?;
    Ok(())
}

/// `moescope export FILE --format F [-o OUT] [--force]`.
pub fn export_command(args: ExportArgs) -> Result<()> {
    if let Some(out) = &args.output {
        export::refuse_same_file(&args.file, out)?;
    }
    // Refuse an existing output before reading anything.
    let mut output = export::Output::create(args.output.as_deref(), args.force)?;
    let (mut reader, warnings) = SessionReader::open(&args.file)?;
    print_warnings(&warnings);
    let header = reader.header().clone();
    export::write(args.format, &header, reader.steps(), output.writer())?;
    output.commit()
}

/// Warnings go to stderr so stdout stays clean for exports.
pub fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("moescope: warning: {w}");
    }
}

/// Line 1 of a session file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionHeader {
    /// Always "moescope-session".
    pub format: String,
    pub version: u32,
    pub tool_version: String,
    /// `cpu` or `cuda`.
    pub backend: String,
    pub device: String,
    pub config: MoeConfig,
    /// Path A, path B.
    pub paths: Vec<PathSpec>,
    /// Where the weights came from ("synthetic, seed 7", a checkpoint).
    pub weights: String,
    /// Start time, RFC 3339 UTC.
    pub started: String,
}
