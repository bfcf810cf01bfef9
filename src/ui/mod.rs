//! The ratatui app: state, input, views. It draws StepRecords; it never computes them.
//!
//! `source` runs the engine (or reads a session) on its own thread and sends `SourceEvent`s;
//! `app` holds the state and turns keys into `Command`s for the source; `views` draws the
//! state; `term` owns the terminal and the async loop between them.

pub mod app;
pub mod fixtures;
pub mod keys;
pub mod source;
mod term;
pub mod views;

use crate::cli::RunArgs;
use anyhow::Result;
use app::{App, Mode};

/// Opens the TUI on a live engine.
pub fn run_tui(args: RunArgs) -> Result<()> {
    term::require_terminal()?;
    let source = source::spawn_live(args)?;
    term::run(App::new(Mode::Live), source)
}

/// Opens the TUI on a recorded session (`moescope replay FILE`).
pub fn run_replay(path: &std::path::Path) -> Result<()> {
    term::require_terminal()?;
    let source = source::spawn_replay(path.to_path_buf())?;
    term::run(App::new(Mode::Replay), source)
}
