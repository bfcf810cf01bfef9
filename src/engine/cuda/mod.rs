//! CUDA backend (cudarc): module loading, buffers, launches, event timing.

pub mod bench;
pub mod check;

use super::weights::WeightSource;
use super::Backend;
use anyhow::{bail, Result};

/// Whether a CUDA driver and a device are present, without panicking where they are not.
pub fn probe() -> Result<(), String> {
    Err("the CUDA backend is not built yet".to_string())
}

/// Opens the CUDA backend on these weights.
pub fn open(_weights: Box<dyn WeightSource>) -> Result<Box<dyn Backend>> {
    bail!("the CUDA backend is not built yet")
}

/// Routes on the GPU with the fused router. `required`: fail where no GPU is present (for
/// `--backend cuda`) instead of returning None (for `auto`, which then routes on the CPU).
pub fn route_on_gpu(
    _cfg: &crate::engine::config::MoeConfig,
    _inputs: &crate::route::RouterInputs,
    required: bool,
) -> Result<Option<crate::engine::routing::Routing>> {
    if required {
        bail!("the CUDA backend is not built yet")
    }
    Ok(None)
}
