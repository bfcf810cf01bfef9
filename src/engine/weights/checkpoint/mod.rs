//! Hugging Face safetensors checkpoints: one MoE layer, memory-mapped; `inspect`; captured
//! hidden states.
//!
//! `files` parses the index and safetensors headers and reads tensor blocks (FP8 block scales
//! dequantized); `layer` knows which layers are MoE and each family's tensor names, checks
//! them against config.json and serves the layer as a `WeightSource`.

pub mod files;
pub mod layer;

use super::WeightSource;
use crate::engine::config::MoeConfig;
use crate::engine::inputs::tensor_to_f32;
use anyhow::{anyhow, bail, ensure, Context, Result};
use files::{Files, DEFAULT_BLOCK};
pub use layer::ranges;
use layer::{CheckpointLayer, LayerNames, LayerPlan};
use safetensors::SafeTensors;
use std::path::Path;

/// The MoE config of a checkpoint directory.
pub fn read_config(dir: &Path) -> Result<MoeConfig> {
    ensure_dir(dir)?;
    MoeConfig::from_hf_file(&dir.join("config.json"))
}

/// A checkpoint is a directory: a file or a missing path is named as such.
fn ensure_dir(dir: &Path) -> Result<()> {
    ensure!(
        !dir.exists() || dir.is_dir(),
        "{} is a file; expected a checkpoint directory (config.json and safetensors files)",
        dir.display()
    );
    ensure!(
        dir.is_dir(),
        "checkpoint directory {} does not exist",
        dir.display()
    );
    Ok(())
}

/// config.json as JSON, and its MoE config.
fn load_config(dir: &Path) -> Result<(serde_json::Value, MoeConfig)> {
    ensure_dir(dir)?;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("config file {} is not valid JSON", path.display()))?;
    let cfg = MoeConfig::from_hf_json(&json)
        .with_context(|| format!("config file {}", path.display()))?;
    Ok((json, cfg))
}

/// FP8 block size from `quantization_config.weight_block_size`, else 128×128.
fn block_size(json: &serde_json::Value) -> Result<[usize; 2]> {
    let q = json
        .get("quantization_config")
        .or_else(|| layer::text_config(json).get("quantization_config"));
    let Some(b) = q.and_then(|q| q.get("weight_block_size")) else {
        return Ok(DEFAULT_BLOCK);
    };
    let dims: Option<Vec<usize>> = b
        .as_array()
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect());
    match dims.as_deref() {
        Some(&[r, c]) if r > 0 && c > 0 => Ok([r, c]),
        _ => bail!("config.json `quantization_config.weight_block_size` is {b}; expected [rows, cols] of positive integers"),
    }
}

/// Opens MoE layer `layer` (default: the first) of a checkpoint, as rank 0 of `tp` holds it.
pub fn open(dir: &Path, layer: Option<usize>, tp: usize) -> Result<Box<dyn WeightSource>> {
    Ok(Box::new(open_layer(dir, layer, tp)?))
}

/// `open`, with the concrete type (for `inspect` and tests).
pub fn open_layer(dir: &Path, layer: Option<usize>, tp: usize) -> Result<CheckpointLayer> {
    let (json, full) = load_config(dir)?;
    let cfg = full
        .clone()
        .with_tensor_parallel(tp)
        .with_context(|| format!("--tp {tp} with checkpoint {}", dir.display()))?;
    let mut files = Files::scan(dir, block_size(&json)?)?;
    let plan = LayerPlan::from_config(&json, &files)
        .with_context(|| format!("checkpoint {}", dir.display()))?;
    let layer = plan
        .pick(layer)
        .with_context(|| format!("checkpoint {}", dir.display()))?;
    let context = || format!("checkpoint {}, layer {layer}", dir.display());
    let mut names = LayerNames::resolve(&files, layer).with_context(context)?;
    // The router's shape first: it bounds E before any per-expert name is built.
    files
        .open_for([names.router.as_str()])
        .and_then(|()| {
            files.check(
                &names.router,
                &[full.n_routed_experts, full.hidden_size],
                "router gate [E, H]",
            )
        })
        .with_context(context)?;
    let wanted = names.tensor_names(&full);
    files
        .open_for(wanted.iter().map(String::as_str))
        .with_context(context)?;
    names.validate(&files, &full).with_context(context)?;
    Ok(CheckpointLayer {
        files,
        names,
        cfg,
        full,
        layer,
        tp,
    })
}

/// Reads `hidden_states` [T, H] from a safetensors file.
pub fn read_hidden_states(path: &Path, hidden: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read hidden states file {}", path.display()))?;
    parse_hidden_states(&bytes, hidden).with_context(|| format!("{}", path.display()))
}

/// `hidden_states` [T, H] or [B, T, H] (F32, BF16 or F16) from a safetensors file's bytes, as
/// [rows × H]. Never panics.
pub fn parse_hidden_states(bytes: &[u8], hidden: usize) -> Result<Vec<f32>> {
    // The header parse first, for its errors that say what is wrong.
    files::parse_header(bytes).context("not a valid safetensors file")?;
    let st = SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
    let view = st.tensor("hidden_states").map_err(|_| {
        anyhow!(
            "no tensor `hidden_states` [tokens, {hidden}] (has: {})",
            st.names().join(", ")
        )
    })?;
    let shape = view.shape();
    // [batch, tokens, H] as captured from a model's forward is taken as batch × tokens rows.
    ensure!(
        matches!(shape.len(), 2 | 3) && shape.last() == Some(&hidden) && shape.iter().all(|&d| d > 0),
        "`hidden_states` has shape {shape:?}; expected [tokens, {hidden}] (the layer's hidden_size; [batch, tokens, {hidden}] also works) with at least one token"
    );
    let values = tensor_to_f32("hidden_states", &view)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "`hidden_states` holds a non-finite value at token {}, element {}",
            i / hidden,
            i % hidden
        );
    }
    Ok(values)
}

/// One tensor of a listed layer.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorListing {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub bytes: usize,
    /// The file (shard) that holds it.
    pub file: String,
}

/// What `inspect` shows of a checkpoint: its MoE config, which layers are MoE, and one layer's
/// tensors, with whether that layer loads as an MoE layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing {
    /// Where the tensors come from (one file, or an index of shards).
    pub source: String,
    pub config: MoeConfig,
    pub num_layers: usize,
    pub moe_layers: Vec<usize>,
    pub dense_layers: Vec<usize>,
    /// The config field that decides which layers are MoE.
    pub rule: String,
    pub layer: usize,
    pub layer_is_moe: bool,
    /// In natural order (`experts.2` before `experts.10`).
    pub tensors: Vec<TensorListing>,
    /// For an MoE layer: Ok(the layout it loads as) or Err(why it does not load).
    pub loads: Option<std::result::Result<String, String>>,
}

/// Lists layer `layer` of a checkpoint (default: the first MoE layer; any layer, dense ones too).
pub fn list_layer(dir: &Path, layer: Option<usize>) -> Result<Listing> {
    let (json, cfg) = load_config(dir)?;
    let mut files = Files::scan(dir, block_size(&json)?)?;
    let plan = LayerPlan::from_config(&json, &files)?;
    let layer = match layer {
        Some(l) if l < plan.num_layers => l,
        other => plan.pick(other)?,
    };
    let prefix = layer::layer_prefix(&files, layer);
    let in_layer = |name: &&String| prefix.as_deref().is_some_and(|p| name.starts_with(p));
    let mut names: Vec<String> = files.names.keys().filter(in_layer).cloned().collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    files.open_for(names.iter().map(String::as_str))?;
    let mut tensors = Vec::with_capacity(names.len());
    for name in &names {
        let (shard, meta) = files.meta(name)?;
        tensors.push(TensorListing {
            name: name.clone(),
            shape: meta.shape.clone(),
            dtype: meta.dtype.to_string(),
            bytes: meta.len_bytes(),
            file: shard
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        });
    }
    let layer_is_moe = plan.is_moe(layer);
    let loads = layer_is_moe.then(|| match open_layer(dir, Some(layer), 1) {
        Ok(l) => Ok(l.names.layout()),
        Err(e) => Err(format!("{e:#}")),
    });
    Ok(Listing {
        source: files.source.clone(),
        config: cfg,
        num_layers: plan.num_layers,
        moe_layers: plan.moe_layers(),
        dense_layers: (0..plan.num_layers).filter(|&l| !plan.is_moe(l)).collect(),
        rule: plan.rule(),
        layer,
        layer_is_moe,
        tensors,
        loads,
    })
}

/// Orders names with their numbers compared as numbers (`experts.2` before `experts.10`).
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(&cb) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn natural_order_of_tensor_names() {
        let mut names = vec![
            "m.layers.1.mlp.experts.10.w1",
            "m.layers.1.mlp.experts.2.w1",
            "m.layers.1.mlp.gate.weight",
            "m.layers.1.mlp.experts.2.w",
            "",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "",
                "m.layers.1.mlp.experts.2.w",
                "m.layers.1.mlp.experts.2.w1",
                "m.layers.1.mlp.experts.10.w1",
                "m.layers.1.mlp.gate.weight",
            ]
        );
    }
}
