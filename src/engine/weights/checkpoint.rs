//! Hugging Face safetensors checkpoints: one MoE layer, memory-mapped; `inspect`; captured
//! hidden states.

use super::WeightSource;
use crate::engine::config::MoeConfig;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// Checkpoint directory (config.json plus safetensors).
    pub dir: PathBuf,
    /// MoE layer to list (default: the first MoE layer).
    #[arg(long)]
    pub layer: Option<usize>,
}

/// The MoE config of a checkpoint directory.
pub fn read_config(dir: &Path) -> Result<MoeConfig> {
    MoeConfig::from_hf_file(&dir.join("config.json"))
}

/// Opens one MoE layer of a checkpoint.
pub fn open(_dir: &Path, _layer: Option<usize>, _tp: usize) -> Result<Box<dyn WeightSource>> {
    bail!("--model is not built yet")
}

/// Reads `hidden_states` [T, H] from a safetensors file.
pub fn read_hidden_states(_path: &Path, _hidden: usize) -> Result<Vec<f32>> {
    bail!("--hidden-states is not built yet")
}

pub fn inspect(_args: InspectArgs) -> Result<()> {
    bail!("inspect is not built yet")
}
