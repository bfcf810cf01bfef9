//! Inputs read from files the engine is given: router logits (and the correction bias) for
//! `route`, and the tensor conversion every safetensors reader shares.

use super::config::MoeConfig;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Router inputs read from a file.
pub struct RouterInputs {
    pub tokens: usize,
    pub experts: usize,
    /// [tokens × experts]
    pub logits: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// Converts a safetensors tensor of F32, BF16, F16 (or BF16 bits stored as U16) to f32.
pub fn tensor_to_f32(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    let bytes = view.data();
    let words = |n: usize| bytes.chunks_exact(n);
    Ok(match view.dtype() {
        Dtype::F32 => words(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 | Dtype::U16 => words(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::F16 => words(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        other => bail!("tensor `{name}` has dtype {other:?}; expected F32, BF16 or F16"),
    })
}

/// Reads `router_logits` [T, E] and the optional `e_score_correction_bias` [E] from a file.
pub fn read_router_inputs(path: &Path, cfg: &MoeConfig) -> Result<RouterInputs> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read logits file {}", path.display()))?;
    parse_router_inputs(&bytes, cfg).with_context(|| format!("logits file {}", path.display()))
}

/// The same from a safetensors file's bytes.
pub fn parse_router_inputs(bytes: &[u8], cfg: &MoeConfig) -> Result<RouterInputs> {
    let st = SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
    let logits_view = st
        .tensor("router_logits")
        .context("no tensor `router_logits` [tokens, experts]")?;
    let shape = logits_view.shape().to_vec();
    if shape.len() != 2 {
        bail!("`router_logits` has shape {shape:?}; expected [tokens, experts]");
    }
    let (tokens, experts) = (shape[0], shape[1]);
    if experts != cfg.n_routed_experts {
        bail!(
            "`router_logits` has {} experts; the config ({}) has n_routed_experts {}",
            experts,
            cfg.name,
            cfg.n_routed_experts
        );
    }
    let logits = tensor_to_f32("router_logits", &logits_view)?;
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        bail!(
            "`router_logits` holds a non-finite value at token {}, expert {}",
            i / experts,
            i % experts
        );
    }
    let bias = match st.tensor("e_score_correction_bias") {
        Ok(view) => {
            if view.shape() != [experts] {
                bail!(
                    "`e_score_correction_bias` has shape {:?}; expected [{}]",
                    view.shape(),
                    experts
                );
            }
            let b = tensor_to_f32("e_score_correction_bias", &view)?;
            if let Some(i) = b.iter().position(|v| !v.is_finite()) {
                bail!("`e_score_correction_bias` holds a non-finite value at expert {i}");
            }
            Some(b)
        }
        Err(_) => None,
    };
    if cfg.has_bias && bias.is_none() {
        bail!(
            "no `e_score_correction_bias` [{}], which the {} router needs",
            experts,
            cfg.name
        );
    }
    Ok(RouterInputs {
        tokens,
        experts,
        logits,
        bias: if cfg.has_bias { bias } else { None },
    })
}
