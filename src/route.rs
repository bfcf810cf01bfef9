//! `moescope route`: router logits from a safetensors file → top-k ids and weights as JSON.

use crate::cli::RouteArgs;
use crate::engine::config::MoeConfig;
use crate::engine::routing::{self, Routing};
use crate::engine::BackendChoice;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;
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

/// Reads `router_logits` [T, E] and the optional `e_score_correction_bias` [E].
pub fn read_router_inputs(path: &Path, cfg: &MoeConfig) -> Result<RouterInputs> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read logits file {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let logits_view = st.tensor("router_logits").with_context(|| {
        format!(
            "{} has no tensor `router_logits` [tokens, experts]",
            path.display()
        )
    })?;
    let shape = logits_view.shape().to_vec();
    if shape.len() != 2 {
        bail!(
            "`router_logits` in {} has shape {:?}; expected [tokens, experts]",
            path.display(),
            shape
        );
    }
    let (tokens, experts) = (shape[0], shape[1]);
    if experts != cfg.n_routed_experts {
        bail!(
            "`router_logits` in {} has {} experts; the config ({}) has n_routed_experts {}",
            path.display(),
            experts,
            cfg.name,
            cfg.n_routed_experts
        );
    }
    let logits = tensor_to_f32("router_logits", &logits_view)?;
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        bail!(
            "`router_logits` in {} holds a non-finite value at token {}, expert {}",
            path.display(),
            i / experts,
            i % experts
        );
    }
    let bias = match st.tensor("e_score_correction_bias") {
        Ok(view) => {
            if view.shape() != [experts] {
                bail!(
                    "`e_score_correction_bias` in {} has shape {:?}; expected [{}]",
                    path.display(),
                    view.shape(),
                    experts
                );
            }
            Some(tensor_to_f32("e_score_correction_bias", &view)?)
        }
        Err(_) => None,
    };
    if cfg.has_bias && bias.is_none() {
        bail!(
            "{} has no `e_score_correction_bias` [{}], which the {} router needs",
            path.display(),
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

/// The JSON `route` prints: the golden files' fields.
#[derive(Serialize)]
pub struct RouteOutput {
    pub config: MoeConfig,
    pub backend: String,
    pub tokens: usize,
    pub experts: usize,
    /// Per token, ascending expert id.
    pub topk_ids: Vec<Vec<u32>>,
    /// Aligned with the ids: renormalized if norm_topk_prob, times routed_scaling_factor.
    pub topk_weights: Vec<Vec<f64>>,
}

impl RouteOutput {
    pub fn new(cfg: &MoeConfig, backend: &str, experts: usize, routing: &Routing) -> RouteOutput {
        let (mut ids, mut weights) = (Vec::new(), Vec::new());
        for t in 0..routing.tokens() {
            let (i, p) = routing.ascending(t);
            ids.push(i);
            weights.push(p.iter().map(|p| p * cfg.routed_scaling_factor).collect());
        }
        RouteOutput {
            config: cfg.clone(),
            backend: backend.to_string(),
            tokens: routing.tokens(),
            experts,
            topk_ids: ids,
            topk_weights: weights,
        }
    }
}

/// Writes `text` to `path` through a temporary file, so a failure leaves nothing half-written.
pub fn write_atomically(path: &Path, text: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("moescope-out")
    ));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

pub fn route_command(args: RouteArgs) -> Result<()> {
    let cfg = args.layer.base_config()?;
    let inputs = read_router_inputs(&args.logits, &cfg)?;
    let k = cfg.num_experts_per_tok;
    let (routing, backend) = match args.layer.backend {
        BackendChoice::Cpu => (
            routing::route(&cfg, &inputs.logits, inputs.bias.as_deref(), k),
            "cpu",
        ),
        choice => {
            match crate::engine::cuda::route_on_gpu(&cfg, &inputs, choice == BackendChoice::Cuda)? {
                Some(r) => (r, "cuda"),
                None => (
                    routing::route(&cfg, &inputs.logits, inputs.bias.as_deref(), k),
                    "cpu",
                ),
            }
        }
    };
    let out = RouteOutput::new(&cfg, backend, inputs.experts, &routing);
    let mut text = serde_json::to_vec_pretty(&out).context("encoding the routing as JSON")?;
    text.push(b'\n');
    match &args.output {
        Some(path) => write_atomically(path, &text)?,
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&text)
                .context("writing to stdout")?;
        }
    }
    Ok(())
}
