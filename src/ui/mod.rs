//! The ratatui app: state, input, views. It draws StepRecords; it never computes them.

use crate::cli::RunArgs;
use anyhow::{bail, Result};

/// Opens the TUI on a live engine.
pub fn run_tui(_args: RunArgs) -> Result<()> {
    bail!("the TUI is not built yet; use --headless")
}

/// Opens the TUI on a recorded session (`moescope replay FILE`).
pub fn run_replay(_path: &std::path::Path) -> Result<()> {
    bail!("the replay TUI is not built yet")
}
