//! `moescope route`: router logits from a safetensors file → top-k ids and weights as JSON.

use super::LayerArgs;
use crate::engine::config::MoeConfig;
use crate::engine::inputs::read_router_inputs;
use crate::engine::routing::{self, Routing};
use crate::engine::{BackendChoice, BackendKind};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct RouteArgs {
    /// safetensors file with `router_logits` [T, E] (F32, BF16 or F16) and optionally
    /// `e_score_correction_bias` [E] (F32).
    #[arg(long)]
    pub logits: PathBuf,
    /// Write the JSON here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing -o file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// The JSON `route` prints: the golden files' fields.
#[derive(Serialize)]
pub struct RouteOutput {
    pub config: MoeConfig,
    pub backend: BackendKind,
    pub tokens: usize,
    pub experts: usize,
    /// Per token, ascending expert id.
    pub topk_ids: Vec<Vec<u32>>,
    /// Aligned with the ids: renormalized if norm_topk_prob, times routed_scaling_factor.
    pub topk_weights: Vec<Vec<f64>>,
}

impl RouteOutput {
    pub fn new(
        cfg: &MoeConfig,
        backend: BackendKind,
        experts: usize,
        routing: &Routing,
    ) -> RouteOutput {
        let (mut ids, mut weights) = (Vec::new(), Vec::new());
        for t in 0..routing.tokens() {
            let (i, p) = routing.ascending(t);
            ids.push(i);
            weights.push(p.iter().map(|p| p * cfg.routed_scaling_factor).collect());
        }
        RouteOutput {
            config: cfg.clone(),
            backend,
            tokens: routing.tokens(),
            experts,
            topk_ids: ids,
            topk_weights: weights,
        }
    }
}

/// Writes `text` to `path` through a temporary file beside it, so a failure leaves nothing
/// half-written. An existing `path` is refused unless `force`.
pub fn write_atomically(path: &Path, text: &[u8], force: bool) -> Result<()> {
    use std::io::Write;
    if path.exists() && !force {
        bail!(
            "output file {} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(text)
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(args: RouteArgs) -> Result<()> {
    let cfg = args.layer.spec().base_config()?;
    let inputs = read_router_inputs(&args.logits, &cfg)?;
    let k = cfg.num_experts_per_tok;
    let (routing, backend) = match args.layer.backend {
        BackendChoice::Cpu => (
            routing::route(&cfg, &inputs.logits, inputs.bias.as_deref(), k),
            BackendKind::Cpu,
        ),
        choice => {
            match crate::engine::cuda::route_on_gpu(&cfg, &inputs, choice == BackendChoice::Cuda)? {
                Some(r) => (r, BackendKind::Cuda),
                None => (
                    routing::route(&cfg, &inputs.logits, inputs.bias.as_deref(), k),
                    BackendKind::Cpu,
                ),
            }
        }
    };
    let out = RouteOutput::new(&cfg, backend, inputs.experts, &routing);
    let mut text = serde_json::to_vec_pretty(&out).context("encoding the routing as JSON")?;
    text.push(b'\n');
    match &args.output {
        Some(path) => write_atomically(path, &text, args.force)?,
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&text)
                .context("writing to stdout")?;
        }
    }
    Ok(())
}
