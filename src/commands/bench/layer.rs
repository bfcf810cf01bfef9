//! The whole layer through both paths, per token count: clean vs instrumented step time, and the
//! expert GEMMs against the floor of streaming the active experts' weights once; then the same
//! paths with FP8 experts (A: FP8 routed beside the bf16 shared expert, B: all FP8), against
//! their own (halved) floor and the dense FP8 rate of the same kernel measured in this run.

use super::report::PathRow;
use super::{say, BenchArgs, Progress};
use crate::engine::config::MoeConfig;
use crate::engine::cuda::fp8::{self as dfp8, Fp8Sum};
use crate::engine::cuda::gpu::Gpu;
use crate::engine::cuda::layer::gemm;
use crate::engine::cuda::layer::CudaBackend;
use crate::engine::paths::{ExpertFormat, PathId, PathSpec};
use crate::engine::stats::gb_per_s;
use crate::engine::step::Stage;
use crate::engine::{Backend, BackendChoice, PathRun, StepInput};
use anyhow::Result;
use std::sync::Arc;

/// The full layer through both paths: clean vs instrumented, and the expert GEMMs; with FP8
/// rows where the layer's sizes allow them (their dense FP8 rate is returned beside the rows).
/// The path rows and the dense rates they were measured against.
pub struct BenchPaths {
    pub rows: Vec<PathRow>,
    /// The FP8 kernel's dense rate on the tensor cores' sums, and summed in fp32 (`Fp8Sum`).
    pub fp8_dense_tflops: Option<f64>,
    pub fp8_fp32_dense_tflops: Option<f64>,
    pub bf16_dense_tflops: f64,
}

pub fn bench_paths(
    gpu: &Arc<Gpu>,
    args: &BenchArgs,
    copy_gbs: f64,
    progress: &Progress,
) -> Result<BenchPaths> {
    progress.measuring("the layer's weights and the dense rates".to_string());
    let (weights, _) = args.layer.spec().on(BackendChoice::Cuda).weights(false)?;
    let cfg = weights.config().clone();
    let started = std::time::Instant::now();
    let mut backend = CudaBackend::new(gpu.clone(), weights)?;
    say!(progress, "");
    say!(
        progress,
        "layer {} (H={}, I={}, E={}, S={}), weights on the device in {:.1} s",
        cfg.name,
        cfg.hidden_size,
        cfg.moe_intermediate_size,
        cfg.n_routed_experts,
        cfg.n_shared_experts,
        started.elapsed().as_secs_f64()
    );
    let paths = vec![
        PathSpec::unfused_baseline(),
        PathSpec::fused(crate::engine::paths::Variant::Correct),
    ];
    let (fp8, bf16) = (ExpertFormat::Fp8, ExpertFormat::Bf16);
    let fp8_paths = vec![
        paths[0].clone().with_formats(fp8, bf16),
        paths[1].clone().with_formats(fp8, fp8),
    ];
    let bf16_dense = gemm::dense_tflops(gpu, super::REPEATS)?;
    say!(
        progress,
        "dense bf16 GEMM (the grouped kernel, 8192 × 4096 × 7168): {bf16_dense:.0} TFLOP/s"
    );
    let (dense, fp32_dense) = match crate::engine::weights::fp8::check_sizes(&cfg, true, true) {
        Ok(()) => {
            let tflops = dfp8::dense_tflops(gpu, super::REPEATS, Fp8Sum::TensorCore)?;
            let fp32 = dfp8::dense_tflops(gpu, super::REPEATS, Fp8Sum::Fp32)?;
            say!(
                progress,
                "dense FP8 GEMM (the FP8 kernel, 8192 × 4096 × 7168): {tflops:.0} TFLOP/s on the tensor cores' sums (the down projection's), {fp32:.0} summed in fp32 (the up projection's)"
            );
            (Some(tflops), Some(fp32))
        }
        Err(why) => {
            say!(progress, "no FP8 rows: {why:#}");
            (None, None)
        }
    };
    say!(
        progress,
        "{:>6}  {:>6}  {:>11}  {:>11}  {:>6}  {:>10}  {:>10}  {:>7}  {:>9}  {:>8}",
        "tokens",
        "path",
        "clean µs",
        "instr. µs",
        "ratio",
        "gemm up µs",
        "gemm dn µs",
        "GB/s",
        "of floor",
        "of dense"
    );
    let mut rows = Vec::new();
    for &t in args.path_tokens.iter().filter(|&&t| t > 0) {
        progress.measuring(format!("the layer's paths at T={t}"));
        let input = StepInput {
            step: 0,
            tokens: t,
            seed: 7,
            hidden: None,
            sample_tokens: vec![0],
        };
        backend.step(&input, &paths)?; // warm-up: workspace, first launches
        let out = backend.step(&input, &paths)?;
        for (&path, run) in PathId::ALL.iter().zip(&out.paths) {
            let row = path_row(t, path, run, copy_gbs, ExpertFormat::Bf16, &cfg, bf16_dense);
            print_row(progress, &row);
            rows.push(row);
        }
        if let Some(dense) = dense {
            backend.step(&input, &fp8_paths)?; // warm-up: the FP8 weights and buffers
            let out = backend.step(&input, &fp8_paths)?;
            for (&path, run) in PathId::ALL.iter().zip(&out.paths) {
                let row = path_row(t, path, run, copy_gbs, ExpertFormat::Fp8, &cfg, dense);
                print_row(progress, &row);
                rows.push(row);
            }
        }
        let b = &out.paths[1];
        let detail: Vec<String> = b
            .timings
            .iter()
            .map(|k| format!("{} {:.1}", k.stage, k.us))
            .collect();
        say!(progress, "        B stages (µs): {}", detail.join(", "));
        live_row(&mut backend, &paths, t, progress)?;
        progress.measured();
    }
    Ok(BenchPaths {
        rows,
        fp8_dense_tflops: dense,
        fp8_fp32_dense_tflops: fp32_dense,
        bf16_dense_tflops: bf16_dense,
    })
}

/// Live steps as `run` makes them (every token against the device reference, the clean timing
/// every CLEAN_EVERY-th step): steps/s, and the reference's device time next to the paths'.
fn live_row(
    backend: &mut CudaBackend,
    paths: &[PathSpec],
    t: usize,
    progress: &Progress,
) -> Result<()> {
    const STEPS: u64 = 16;
    backend.device_numerics = true;
    let input = |step| StepInput {
        step,
        tokens: t,
        seed: 7,
        hidden: None,
        sample_tokens: Vec::new(),
    };
    backend.step(&input(1), paths)?; // warm-up: the reference's buffers
    let (started, mut ref_us, mut path_us) = (std::time::Instant::now(), 0.0, 0.0);
    for step in 1..=STEPS {
        let out = backend.step(&input(step), paths)?;
        let c = out.numerics.as_ref().map(|n| &n.comparison);
        ref_us += c.and_then(|c| c.reference_us).unwrap_or(f64::NAN);
        path_us += out
            .paths
            .iter()
            .flat_map(|p| &p.timings)
            .map(|k| k.us)
            .sum::<f64>();
    }
    let rate = STEPS as f64 / started.elapsed().as_secs_f64();
    say!(
        progress,
        "        live step: {rate:.1} steps/s; reference {:.0} µs, paths {:.0} µs (ratio {:.2})",
        ref_us / STEPS as f64,
        path_us / STEPS as f64,
        ref_us / path_us
    );
    backend.device_numerics = false;
    Ok(())
}

/// One path's row, its expert GEMMs against `dense_tflops`, the dense rate of its format.
fn path_row(
    t: usize,
    path: PathId,
    run: &PathRun,
    copy_gbs: f64,
    experts: ExpertFormat,
    cfg: &MoeConfig,
    dense_tflops: f64,
) -> PathRow {
    let find = |st: Stage| run.timings.iter().find(|k| k.stage == st);
    let (up, down) = (find(Stage::ExpertGemmUp), find(Stage::ExpertGemmDown));
    let us = |k: Option<&crate::engine::step::KernelTiming>| k.map_or(0.0, |k| k.us);
    let bytes = up.and_then(|k| k.bytes).unwrap_or(0) + down.and_then(|k| k.bytes).unwrap_or(0);
    let gemm_us = us(up) + us(down);
    let gemm_gb_s = gb_per_s(bytes, gemm_us);
    // Multiply-adds of the up (2I × H) and down (H × I) GEMMs over every assignment.
    let (h, i) = (cfg.hidden_size as f64, cfg.moe_intermediate_size as f64);
    let tflops = 2.0 * run.slot_ids.len() as f64 * 3.0 * i * h / gemm_us / 1e6;
    PathRow {
        experts,
        gemm_of_dense: Some(tflops / dense_tflops),
        tokens: t,
        path,
        clean_us: run.clean_us,
        instrumented_us: run.timings.iter().map(|k| k.us).sum(),
        gemm_up_us: us(up),
        gemm_down_us: us(down),
        gemm_gb_s,
        gemm_of_copy: gemm_gb_s.map(|g| g / copy_gbs),
    }
}

fn print_row(progress: &Progress, r: &PathRow) {
    let clean = r.clean_us.unwrap_or(f64::NAN);
    let dense = r
        .gemm_of_dense
        .map_or_else(String::new, |d| format!("{:>7.1}%", 100.0 * d));
    say!(progress,
        "{:>6}  {:>6}  {clean:>11.1}  {:>11.1}  {:>6.3}  {:>10.1}  {:>10.1}  {:>7.0}  {:>8.0}%  {dense:>8}",
        r.tokens,
        format!("{}·{}", r.path.name(), r.experts),
        r.instrumented_us,
        r.instrumented_us / clean,
        r.gemm_up_us,
        r.gemm_down_us,
        r.gemm_gb_s.unwrap_or(f64::NAN),
        100.0 * r.gemm_of_copy.unwrap_or(f64::NAN)
    );
}
