//! `moescope bench`: router and path timings as ratios within one run.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub layer: crate::cli::LayerArgs,
}

pub fn run(_args: BenchArgs) -> Result<()> {
    bail!("bench is not built yet")
}
