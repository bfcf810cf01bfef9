//! What comes back to the host after a path: slot ids and weights, sampled outputs, the output
//! statistics (reduced on the device), the GEMMs' bytes; and the NaN poison a check writes first.

use super::super::gpu::Gpu;
use super::super::kernels::{OutputStatsArgs, STATS_BLOCKS};
use super::workspace::Workspace;
use crate::engine::config::MoeConfig;
use crate::engine::paths::ExpertFormat;
use crate::engine::step::{KernelTiming, OutputStats, Stage};
use anyhow::{ensure, Result};

/// One path's outputs, downloaded.
pub struct PathOutputs {
    pub slot_ids: Vec<u32>,
    pub slot_weights: Vec<f32>,
    /// [samples × H] rows of y.
    pub sample_outputs: Vec<f32>,
    pub output: OutputStats,
}

/// Downloads a path's slots [t × spt], the sampled output rows and the output statistics.
pub fn path_outputs(
    gpu: &Gpu,
    ws: &Workspace,
    h: usize,
    t: usize,
    spt: usize,
    samples: &[usize],
) -> Result<PathOutputs> {
    let slot_ids = gpu.download(&ws.router.ids, t * spt, "slot ids")?;
    let slot_weights = gpu.download(&ws.router.weights, t * spt, "slot weights")?;
    let mut sample_outputs = Vec::with_capacity(samples.len() * h);
    for &tok in samples {
        ensure!(tok < t, "sample token {tok} out of {t}");
        sample_outputs.extend(gpu.download_at(&ws.out.y, tok * h, h, "sampled outputs")?);
    }
    Ok(PathOutputs {
        slot_ids,
        slot_weights,
        sample_outputs,
        output: output_stats(gpu, ws, t * h)?,
    })
}

/// Output statistics over the first `n` values of y, reduced on the device.
pub fn output_stats(gpu: &Gpu, ws: &Workspace, n: usize) -> Result<OutputStats> {
    let b = &ws.out;
    gpu.launch(OutputStatsArgs {
        y: gpu.ptr(&b.y),
        n: n as u64,
        sumsq: gpu.ptr(&b.stats_sq),
        maxabs: gpu.ptr(&b.stats_max),
        nonfinite: gpu.ptr(&b.stats_bad),
    })?;
    let sq: f64 = gpu
        .download(&b.stats_sq, STATS_BLOCKS, "output statistics")?
        .iter()
        .sum();
    let max = gpu
        .download(&b.stats_max, STATS_BLOCKS, "output statistics")?
        .iter()
        .fold(0.0f32, |m, &v| m.max(v));
    let bad: u64 = gpu
        .download(&b.stats_bad, STATS_BLOCKS, "output statistics")?
        .iter()
        .sum();
    Ok(OutputStats {
        rms: if n == 0 { 0.0 } else { (sq / n as f64).sqrt() },
        max_abs: max as f64,
        nonfinite: bad,
    })
}

/// Poisons every output a path writes: unwritten elements then show in the checks.
pub fn poison_outputs(
    gpu: &Gpu,
    ws: &Workspace,
    cfg: &MoeConfig,
    t: usize,
    spt: usize,
) -> Result<()> {
    let nan = f32::NAN.to_bits();
    gpu.fill(gpu.ptr(&ws.gate.logits), t * cfg.n_routed_experts, nan)?;
    gpu.fill(gpu.ptr(&ws.router.ids), t * spt, u32::MAX)?;
    gpu.fill(gpu.ptr(&ws.router.weights), t * spt, nan)?;
    gpu.fill(gpu.ptr(&ws.out.y), t * cfg.hidden_size, nan)
}

/// Fills in the bytes of the expert GEMMs: the active slots' weights, read once, plus activations.
pub fn fill_weight_bytes(
    cfg: &MoeConfig,
    ids: &[u32],
    format: ExpertFormat,
    timings: &mut [KernelTiming],
) {
    let mut seen = vec![false; cfg.total_slots()];
    for &id in ids {
        if let Some(s) = seen.get_mut(id as usize) {
            *s = true;
        }
    }
    let active = seen.iter().filter(|&&s| s).count();
    let (h, i) = (cfg.hidden_size, cfg.moe_intermediate_size);
    let a = ids.len();
    // Bytes of a weight and of an activation element: e4m3 and its block and group scales.
    let (w, x) = match format {
        ExpertFormat::Bf16 => (2.0, 2.0),
        ExpertFormat::Fp8 => (1.0 + 4.0 / (128.0 * 128.0), 1.0 + 4.0 / 128.0),
    };
    let up = (active * 2 * i * h) as f64 * w + (a * h) as f64 * x + (a * 2 * i * 4) as f64;
    let down = (active * h * i) as f64 * w + (a * i) as f64 * x + (a * h * 4) as f64;
    for t in timings.iter_mut() {
        t.bytes = match t.stage {
            Stage::ExpertGemmUp => Some(up as u64),
            Stage::ExpertGemmDown => Some(down as u64),
            _ => t.bytes,
        };
    }
}
