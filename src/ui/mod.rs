//! The ratatui app: state, input, views. It draws StepRecords; it never computes them.
//!
//! `source` is the protocol with a step source on its own thread (`SourceEvent`s in,
//! `Command`s out); `app` holds the state and turns keys into `Command`s; `views` draws the
//! state; `term` owns the terminal and the async loop between them. Sources are built by
//! `commands`: the UI never builds an engine or opens a file.

pub mod app;
pub mod fixtures;
pub mod keys;
pub mod signals;
pub mod source;
pub mod tabs;
mod term;
pub mod views;

use anyhow::Result;
pub use app::{App, Mode};
pub use signals::{Interrupted, SignalFlag};

/// Opens the TUI on a step source (a live engine or a session, see `commands`) until quit. The
/// terminal is restored on every way out.
pub fn run(mode: Mode, source: source::SourceHandle) -> Result<()> {
    term::run(App::new(mode), source)
}

/// Refuses to start without a terminal; call before building a source.
pub fn require_terminal() -> Result<()> {
    term::require_terminal()
}
