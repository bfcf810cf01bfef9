//! The whole layer through both paths, per token count: clean vs instrumented step time, and the
//! expert GEMMs against the floor of streaming the active experts' weights once.

use super::report::PathRow;
use super::BenchArgs;
use crate::engine::cuda::gpu::Gpu;
use crate::engine::cuda::layer::CudaBackend;
use crate::engine::paths::{PathId, PathSpec};
use crate::engine::stats::gb_per_s;
use crate::engine::step::Stage;
use crate::engine::{Backend, BackendChoice, PathRun, StepInput};
use anyhow::Result;
use std::sync::Arc;

/// The full layer through both paths: clean vs instrumented, and the expert GEMMs.
pub fn bench_paths(gpu: &Arc<Gpu>, args: &BenchArgs, copy_gbs: f64) -> Result<Vec<PathRow>> {
    let (weights, _) = args.layer.spec().on(BackendChoice::Cuda).weights(false)?;
    let cfg = weights.config().clone();
    let started = std::time::Instant::now();
    let mut backend = CudaBackend::new(gpu.clone(), weights)?;
    println!();
    println!(
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
    println!(
        "{:>6}  {:>4}  {:>11}  {:>11}  {:>6}  {:>10}  {:>10}  {:>7}  {:>10}",
        "tokens",
        "path",
        "clean µs",
        "instr. µs",
        "ratio",
        "gemm up µs",
        "gemm dn µs",
        "GB/s",
        "of floor"
    );
    let mut rows = Vec::new();
    for &t in args.path_tokens.iter().filter(|&&t| t > 0) {
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
            let row = path_row(t, path, run, copy_gbs);
            print_row(&row);
            rows.push(row);
        }
        let b = &out.paths[1];
        let detail: Vec<String> = b
            .timings
            .iter()
            .map(|k| format!("{} {:.1}", k.stage, k.us))
            .collect();
        println!("        B stages (µs): {}", detail.join(", "));
        live_row(&mut backend, &paths, t)?;
    }
    Ok(rows)
}

/// Live steps as `run` makes them (every token against the device reference, the clean timing
/// every CLEAN_EVERY-th step): steps/s, and the reference's device time next to the paths'.
fn live_row(backend: &mut CudaBackend, paths: &[PathSpec], t: usize) -> Result<()> {
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
    println!(
        "        live step: {rate:.1} steps/s; reference {:.0} µs, paths {:.0} µs (ratio {:.2})",
        ref_us / STEPS as f64,
        path_us / STEPS as f64,
        ref_us / path_us
    );
    backend.device_numerics = false;
    Ok(())
}

fn path_row(t: usize, path: PathId, run: &PathRun, copy_gbs: f64) -> PathRow {
    let find = |st: Stage| run.timings.iter().find(|k| k.stage == st);
    let (up, down) = (find(Stage::ExpertGemmUp), find(Stage::ExpertGemmDown));
    let us = |k: Option<&crate::engine::step::KernelTiming>| k.map_or(0.0, |k| k.us);
    let bytes = up.and_then(|k| k.bytes).unwrap_or(0) + down.and_then(|k| k.bytes).unwrap_or(0);
    let gemm_gb_s = gb_per_s(bytes, us(up) + us(down));
    PathRow {
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

fn print_row(r: &PathRow) {
    let clean = r.clean_us.unwrap_or(f64::NAN);
    println!(
        "{:>6}  {:>4}  {clean:>11.1}  {:>11.1}  {:>6.3}  {:>10.1}  {:>10.1}  {:>7.0}  {:>9.0}%",
        r.tokens,
        r.path.name(),
        r.instrumented_us,
        r.instrumented_us / clean,
        r.gemm_up_us,
        r.gemm_down_us,
        r.gemm_gb_s.unwrap_or(f64::NAN),
        100.0 * r.gemm_of_copy.unwrap_or(f64::NAN)
    );
}
