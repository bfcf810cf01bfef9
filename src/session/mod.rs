//! Sessions: record (JSONL), replay reader, export (json, chrome trace, eplb, csv).
//!
//! The format is documented in docs/session-format.md: line 1 a [`SessionHeader`], then one
//! `StepRecord` per line. [`SessionWriter`] appends and flushes per step; [`SessionReader`]
//! indexes line offsets and parses a step only when asked, so large sessions open fast in
//! bounded memory. `summary` and `export` consume steps one at a time from any iterator, so a
//! headless run exports live with the same code that exports a recorded file.

pub mod export;
pub mod export_ep;
pub mod output;
pub mod reader;
pub mod summary;
pub mod words;
pub mod writer;

pub use reader::SessionReader;
pub use writer::SessionWriter;

use crate::engine::config::MoeConfig;
use crate::engine::paths::PathSpec;
use crate::engine::BackendKind;
use serde::{Deserialize, Serialize};

/// The `format` field of every session header.
pub const SESSION_FORMAT: &str = "moescope-session";
/// The session format version this build writes. Version 2 records contract violations as
/// typed values (`violations`) where version 1 wrote an English `message`.
pub const SESSION_VERSION: u32 = 2;
/// The oldest version this build still reads.
pub const SESSION_VERSION_MIN: u32 = 1;

/// The formats `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON document: the header and every step.
    Json,
    /// Chrome Trace Event Format (opens in Perfetto).
    Chrome,
    /// The expert-load matrix [steps × experts] EPLB takes.
    Eplb,
    /// Per-step per-kernel timings.
    Csv,
    /// Tokens per EP rank [steps × ranks] per placement, CSV (sessions recorded with --ep).
    EpLoad,
    /// The last step's EPLB placement (phy2log, log2phy, logcnt) as JSON.
    EpPlacement,
}

impl ExportFormat {
    /// The names `FromStr` takes.
    pub const NAMES: &'static [&'static str] =
        &["json", "chrome", "eplb", "csv", "ep-load", "ep-placement"];
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(ExportFormat::Json),
            "chrome" => Ok(ExportFormat::Chrome),
            "eplb" => Ok(ExportFormat::Eplb),
            "csv" => Ok(ExportFormat::Csv),
            "ep-load" => Ok(ExportFormat::EpLoad),
            "ep-placement" => Ok(ExportFormat::EpPlacement),
            other => Err(format!(
                "unknown export format `{other}`; expected json, chrome, eplb, csv, ep-load or ep-placement"
            )),
        }
    }
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
    pub backend: BackendKind,
    pub device: String,
    pub config: MoeConfig,
    /// Path A, path B.
    pub paths: Vec<PathSpec>,
    /// Where the weights came from ("synthetic, seed 7", a checkpoint).
    pub weights: String,
    /// Start time, RFC 3339 UTC.
    pub started: String,
}
