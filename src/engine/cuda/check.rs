//! `moescope check`: every kernel against the CPU reference.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub layer: crate::cli::LayerArgs,
    /// Check every preset.
    #[arg(long)]
    pub all: bool,
}

pub fn run(_args: CheckArgs) -> Result<()> {
    bail!("check is not built yet")
}
