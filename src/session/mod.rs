//! Sessions: record (JSONL), replay reader, export (json, chrome trace, eplb, csv).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

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

pub fn replay(args: ReplayArgs) -> Result<()> {
    if !args.summary {
        return crate::ui::run_replay(&args.file);
    }
    bail!("replay --summary is not built yet")
}

pub fn export_command(_args: ExportArgs) -> Result<()> {
    bail!("export is not built yet")
}

use crate::engine::config::MoeConfig;
use crate::engine::paths::PathSpec;
use crate::engine::step::StepRecord;
use serde::{Deserialize, Serialize};
use std::path::Path;

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

/// Appends StepRecords to a session file, flushed per step.
pub struct SessionWriter {}

impl SessionWriter {
    /// Creates `path` (refused if it exists unless `force`) and writes the header.
    pub fn create(_path: &Path, _header: &SessionHeader, _force: bool) -> Result<SessionWriter> {
        bail!("recording is not built yet")
    }
    /// Appends one step and flushes it.
    pub fn write(&mut self, _record: &StepRecord) -> Result<()> {
        bail!("recording is not built yet")
    }
}

/// Random access to a session file's steps without loading them all.
pub struct SessionReader {}

impl SessionReader {
    /// Opens and indexes `path`; warnings (e.g. a skipped truncated last line) are returned.
    pub fn open(_path: &Path) -> Result<(SessionReader, Vec<String>)> {
        bail!("replay is not built yet")
    }
    pub fn header(&self) -> &SessionHeader {
        unreachable!("no reader can be opened yet")
    }
    /// Number of steps.
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Step `i` (0-based).
    pub fn read(&mut self, _i: usize) -> Result<StepRecord> {
        bail!("replay is not built yet")
    }
}
