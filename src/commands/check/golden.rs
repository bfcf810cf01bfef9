//! The golden routing files (PyTorch reference, tests/data/golden) through the fused router.

use super::{max_rel, Table, WEIGHT_REL};
use crate::commands::route::RouteOutput;
use crate::engine::config::MoeConfig;
use crate::engine::cuda::gpu::Gpu;
use crate::engine::inputs::tensor_to_f32;
use crate::engine::BackendKind;
use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// Where `check` looks for the golden routing files by default (the repository's own).
pub const GOLDEN_DIR: &str = "tests/data/golden";

/// The golden routing files (PyTorch reference) in `dir`, routed by the fused kernel: every
/// `NAME.json` with its `NAME.safetensors`. A missing directory is one skipped row, not a
/// failure (the files live in the repository, not in the binary).
pub(super) fn check_golden(gpu: &Gpu, dir: &Path, table: &mut Table) -> Result<()> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect(),
        Err(_) => {
            println!(
                "golden files: {} not found (run from the repository root or pass --golden DIR); skipped",
                dir.display()
            );
            return Ok(());
        }
    };
    names.sort();
    for name in &names {
        check_file(gpu, dir, name, table)?;
    }
    Ok(())
}

/// One golden file `dir/NAME.json` (+ `.safetensors`): ids and weights.
fn check_file(gpu: &Gpu, dir: &Path, name: &str, table: &mut Table) -> Result<()> {
    let json_path = dir.join(format!("{name}.json"));
    let json = std::fs::read_to_string(&json_path)
        .with_context(|| format!("cannot read golden file {}", json_path.display()))?;
    let tensors_path = dir.join(format!("{name}.safetensors"));
    let tensors = std::fs::read(&tensors_path)
        .with_context(|| format!("cannot read golden file {}", tensors_path.display()))?;
    let want: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("golden file {name}.json"))?;
    let preset = want["preset"]
        .as_str()
        .ok_or_else(|| anyhow!("golden file {name}.json names no preset"))?;
    let cfg = MoeConfig::preset(preset)?;
    let st = safetensors::SafeTensors::deserialize(&tensors)
        .with_context(|| format!("golden file {name}.safetensors"))?;
    let logits = tensor_to_f32("router_logits", &st.tensor("router_logits")?)?;
    let bias = match st.tensor("e_score_correction_bias") {
        Ok(v) if cfg.has_bias => Some(tensor_to_f32("e_score_correction_bias", &v)?),
        _ => None,
    };
    let e = cfg.n_routed_experts;
    let t = logits.len() / e;
    let routing = crate::engine::cuda::route_logits(
        gpu,
        &cfg,
        &logits,
        bias.as_deref(),
        cfg.num_experts_per_tok,
        t,
    )?;
    let out = RouteOutput::new(&cfg, BackendKind::Cuda, e, &routing);
    let want_ids: Vec<Vec<u32>> = serde_json::from_value(want["topk_ids"].clone())
        .with_context(|| format!("golden file {name}.json: topk_ids"))?;
    let want_w: Vec<Vec<f64>> = serde_json::from_value(want["topk_weights"].clone())
        .with_context(|| format!("golden file {name}.json: topk_weights"))?;
    let differ = want_ids
        .iter()
        .zip(&out.topk_ids)
        .filter(|(a, b)| a != b)
        .count()
        + want_ids.len().abs_diff(out.topk_ids.len());
    table.add(
        "router_fused golden",
        format!("{name} T={t} ids"),
        differ as f64,
        differ == 0,
        "",
    );
    let err = max_rel(
        out.topk_weights.iter().flatten().copied(),
        want_w.iter().flatten().copied(),
    );
    table.add(
        "router_fused golden",
        format!("{name} T={t} weights"),
        err,
        err <= WEIGHT_REL,
        "",
    );
    Ok(())
}
