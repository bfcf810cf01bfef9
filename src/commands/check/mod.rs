//! `moescope check`: every kernel against the CPU reference.
//!
//! Fresh random inputs each run. Bars: routing ids equal the reference exactly (random inputs,
//! inputs with exact ties, bf16 logits, the golden files); weights within 1e-5 relative;
//! device-initialized weights and hidden states bit for bit the host's; layer output relative L2
//! against the f64 reference ≤ 1e-2 for both paths, and between the paths; every output element
//! written (outputs are poisoned with NaN before each run).

//!
//! By part: `routers` (fused, general and unfused router kernels against routing::route),
//! `golden` (the PyTorch reference files), `layer` (device init, both paths through every
//! variant, uploads, captured hidden states, the CPU backend).
//!
//! Every registered kernel runs under `check --all`: the init kernels in the init and captured
//! checks (fill_u32 poisons before every run); the lane-contiguous routers as `router_fused` on
//! the sigmoid presets with E = 256 and 384, the general ones as `router_fused general` on every
//! preset (e512 on those with E > 256); the unfused router's kernels as `router_unfused` and in
//! path A; the expert kernels in both paths (splitk_reduce at small T, shared_gate on the
//! Qwen3-Next preset); count_nonfinite every step and against known counts; copy_u4 alone.

mod golden;
mod layer;
mod routers;

use super::LayerArgs;
use crate::engine::config::PRESET_NAMES;
use crate::engine::cuda::gpu::Gpu;
use crate::engine::spec::LayerSource;
use crate::engine::spec::LayerSpec;
use anyhow::{bail, Context, Result};
use clap::Args;
use golden::GOLDEN_DIR;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    /// Check every preset.
    #[arg(long)]
    pub all: bool,
    /// Directory of the golden routing files.
    #[arg(long, default_value = GOLDEN_DIR)]
    pub golden: PathBuf,
    /// Check a router kernel of yours instead (a .cu for NVRTC or a .so; docs/kernel-abi.md).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// With --kernel: also write the report as JSON to this file.
    #[arg(long, requires = "kernel")]
    pub json: Option<PathBuf>,
    /// With --json: overwrite an existing file.
    #[arg(long, requires = "json")]
    pub force: bool,
    /// With --kernel: near ties (rounding-level differences) fail too.
    #[arg(long, requires = "kernel")]
    pub strict: bool,
}

/// Token counts of the layer checks on small expert matrices, and on the full layer.
const SMALL_LAYER_TOKENS: &[usize] = &[1, 7, 64, 1000];
const FULL_LAYER_TOKENS: &[usize] = &[1, 64, 512];
/// Tolerances (see the module doc).
pub(super) const WEIGHT_REL: f64 = 1e-5;
pub(super) const OUTPUT_REL_L2: f64 = 1e-2;

/// One row of the table.
struct Row {
    kernel: String,
    shape: String,
    error: f64,
    ok: bool,
    note: String,
}

#[derive(Default)]
pub(super) struct Table {
    rows: Vec<Row>,
}

impl Table {
    pub(super) fn add(
        &mut self,
        kernel: &str,
        shape: String,
        error: f64,
        ok: bool,
        note: impl Into<String>,
    ) {
        let row = Row {
            kernel: kernel.to_string(),
            shape,
            error,
            ok,
            note: note.into(),
        };
        println!(
            "{:<22} {:<46} {:>11.3e}  {}{}",
            row.kernel,
            row.shape,
            row.error,
            if row.ok { "ok" } else { "FAIL" },
            if row.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", row.note)
            }
        );
        self.rows.push(row);
    }
    fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.ok).count()
    }
}

pub fn run(args: CheckArgs) -> Result<()> {
    if let Some(kernel) = &args.kernel {
        return super::check_kernel::run(&super::check_kernel::KernelCheck {
            kernel: kernel.clone(),
            layer: args.layer.spec(),
            all: args.all,
            golden: args.golden.clone(),
            json: args.json.clone(),
            force: args.force,
            strict: args.strict,
        });
    }
    let gpu = Arc::new(Gpu::open().context("moescope check needs a CUDA device")?);
    println!("moescope check on {}", gpu.describe());
    let presets: Vec<String> = if args.all {
        PRESET_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![args
            .layer
            .preset
            .clone()
            .unwrap_or_else(|| "deepseek-v3".to_string())]
    };
    let mut table = Table::default();
    println!(
        "{:<22} {:<46} {:>11}  verdict",
        "kernel", "shape", "max error"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::rng().random());
    golden::check_golden(&gpu, &args.golden, &mut table)?;
    check_copy(&gpu, &mut table)?;
    for name in &presets {
        let layer = LayerSpec {
            source: LayerSource::Preset(name.clone()),
            ..args.layer.spec()
        };
        let base = layer.base_config()?.with_tensor_parallel(layer.tp)?;
        routers::check_routers(&gpu, &base, &mut rng, &mut table)?;
        // Small expert matrices: compared with the CPU backend and the f64 reference.
        let (small, _) = layer.weights(true)?;
        layer::check_layer(&gpu, small, SMALL_LAYER_TOKENS, true, &mut rng, &mut table)?;
        // The full layer: against the f64 reference on sampled tokens.
        let (full, _) = layer
            .on(crate::engine::BackendChoice::Cuda)
            .weights(false)?;
        layer::check_layer(&gpu, full, FULL_LAYER_TOKENS, false, &mut rng, &mut table)?;
    }
    let failed = table.failures();
    println!("{} checks, {} failed", table.rows.len(), failed);
    if failed > 0 {
        bail!("{failed} of {} checks failed", table.rows.len());
    }
    Ok(())
}

/// bench's bandwidth probe copies every byte.
fn check_copy(gpu: &Gpu, table: &mut Table) -> Result<()> {
    let words = 100_003usize;
    let host: Vec<u8> = (0..16 * words).map(|i| (i * 131 % 251) as u8).collect();
    let src = gpu.upload(&host, "copy source")?;
    let dst = gpu.alloc::<u8>(host.len(), "copy destination")?;
    gpu.launch(crate::engine::cuda::kernels::CopyArgs {
        src: gpu.ptr(&src).cast(),
        dst: gpu.ptr(&dst).cast(),
        n: words as u64,
    })?;
    let back = gpu.download(&dst, host.len(), "copy destination")?;
    let differ = back.iter().zip(&host).filter(|(a, b)| a != b).count();
    let shape = format!("{words} × 16 bytes");
    table.add(
        "copy_u4",
        shape,
        differ as f64,
        differ == 0,
        "bench's copy probe",
    );
    Ok(())
}

/// Largest relative difference, |a−b| / max(|b|, floor).
pub(super) fn max_rel(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) -> f64 {
    a.zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f64::INFINITY
            } else {
                (x - y).abs() / y.abs().max(1e-12)
            }
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_rel_treats_nan_as_failure() {
        assert_eq!(max_rel([1.0].into_iter(), [1.0].into_iter()), 0.0);
        assert!(max_rel([f64::NAN].into_iter(), [1.0].into_iter()).is_infinite());
    }
}
