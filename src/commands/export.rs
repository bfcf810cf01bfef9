//! `moescope export FILE --format F [-o OUT] [--force]`: a recorded session as one JSON
//! document, a Chrome/Perfetto trace, the EPLB load matrix, per-kernel CSV, or (sessions
//! recorded with --ep) the per-rank load CSV and the EPLB placement JSON.

use super::named;
use crate::session::export::{self, Output};
use crate::session::{print_warnings, ExportFormat, SessionReader};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Session file (JSONL) to export.
    pub file: PathBuf,
    #[arg(long, value_parser = named::<ExportFormat>(ExportFormat::NAMES))]
    pub format: ExportFormat,
    /// Output file (stdout when absent).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    if let Some(out) = &args.output {
        export::refuse_same_file(&args.file, out)?;
    }
    // Refuse an existing output before reading anything.
    let mut output = Output::create(args.output.as_deref(), args.force)?;
    // Damage is reported once, after every line has been read (some shows only when parsed).
    let (mut reader, _) = SessionReader::open(&args.file)?;
    let header = reader.header().clone();
    export::write(args.format, &header, reader.steps(), output.writer())?;
    print_warnings(&reader.report());
    reader.ensure_some_valid()?;
    output.commit()
}
