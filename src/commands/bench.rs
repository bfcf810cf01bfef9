//! `moescope bench`: router and path timings as ratios within one run, on one named card.
//!
//! Routers: small T as the device time per call of a CUDA-graph replay of many calls (what
//! serving engines run); large T with CUDA events over rotated inputs (more than L2 holds), each
//! against the measured device copy bandwidth. Paths: the full layer's clean and instrumented
//! times per token count, and the expert GEMMs against the floor of streaming the active weights.

use super::LayerArgs;
use crate::engine::cuda::gpu::{cuda_err, Gpu, Timer};
use crate::engine::cuda::kernels::{CopyArgs, DevPtr, FillArgs};
use crate::engine::cuda::layer::CudaBackend;
use crate::engine::cuda::router::{self, FusedKernel, RouterIo, RouterShape, UnfusedBufs};
use crate::engine::paths::{PathId, PathSpec};
use crate::engine::stats::gb_per_s;
use crate::engine::step::Stage;
use crate::engine::{Backend, BackendChoice, StepInput};
use anyhow::{anyhow, Context, Result};
use clap::Args;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    /// Router token counts.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 64, 512, 2048, 8192, 40000])]
    pub router_tokens: Vec<usize>,
    /// Token counts of the whole-layer path timings (0 tokens: skip the layer).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 64, 512, 2048])]
    pub path_tokens: Vec<usize>,
    /// Only the routers.
    #[arg(long)]
    pub router_only: bool,
}

/// Router calls per graph, graph replays, timed repetitions (median taken).
const CALLS_PER_GRAPH: usize = 50;
const REPLAYS: usize = 20;
const REPEATS: usize = 7;
/// Inputs rotated through at large T: together more than the 50 MB L2 of an H100.
const ROTATE_BYTES: usize = 256 << 20;
/// Graph replay below this many tokens, rotated events from here on.
const GRAPH_MAX_TOKENS: usize = 2048;

pub fn run(args: BenchArgs) -> Result<()> {
    let gpu = Arc::new(Gpu::open().context("moescope bench needs a CUDA device")?);
    let cfg = args
        .layer
        .spec()
        .base_config()?
        .with_tensor_parallel(args.layer.tp)?;
    println!(
        "moescope bench on {} ({} SMs), {}",
        gpu.describe(),
        gpu.sms,
        cfg.name
    );
    let copy_gbs = copy_bandwidth(&gpu)?;
    println!("device copy bandwidth: {copy_gbs:.0} GB/s (bytes read + written)");
    bench_routers(&gpu, &cfg, &args.router_tokens, copy_gbs)?;
    if !args.router_only && !args.path_tokens.iter().all(|&t| t == 0) {
        bench_paths(&gpu, &args, copy_gbs)?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `f` (which enqueues work) with an event pair, `REPEATS` times; the median in µs.
fn time_us(gpu: &Gpu, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    f(0)?; // warm-up
    gpu.sync("warm-up")?;
    let mut times = Vec::with_capacity(REPEATS);
    for r in 0..REPEATS {
        let a = gpu.event()?;
        f(r + 1)?;
        let b = gpu.event()?;
        gpu.sync("timed work")?;
        times.push(
            a.elapsed_ms(&b)
                .map_err(cuda_err("reading an event time"))? as f64
                * 1e3,
        );
    }
    Ok(median(times))
}

/// Device-to-device copy of 1 GiB by a plain kernel: the bandwidth ceiling, read + write bytes.
fn copy_bandwidth(gpu: &Gpu) -> Result<f64> {
    let n = 1usize << 30;
    let src = gpu.alloc::<u8>(n, "copy source")?;
    let dst = gpu.alloc::<u8>(n, "copy destination")?;
    let copy = CopyArgs {
        src: gpu.ptr(&src).cast(),
        dst: gpu.ptr(&dst).cast(),
        n: (n / 16) as u64,
    };
    let us = time_us(gpu, |_| gpu.launch(copy))?;
    gb_per_s(2 * n as u64, us).ok_or_else(|| anyhow!("the copy kernel took no measurable time"))
}

/// Fused vs unfused router over token counts.
fn bench_routers(
    gpu: &Gpu,
    cfg: &crate::engine::config::MoeConfig,
    tokens: &[usize],
    copy_gbs: f64,
) -> Result<()> {
    let e = cfg.n_routed_experts;
    let rsf = cfg.routed_scaling_factor;
    let s = cfg.n_shared_experts;
    let k = cfg.num_experts_per_tok;
    // Path B's router: fused shared slots, rsf on the output.
    let sh = RouterShape::new(cfg, k, s, 1.0, 1.0 / rsf)?;
    let spt = sh.spt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let bias: Vec<f32> = (0..e).map(|_| rng.random_range(-0.05f32..0.05)).collect();
    let d_bias = gpu.upload(&bias, "bias")?;
    // The floor of a graph-replayed launch: a one-thread kernel that writes one word.
    let word = gpu.alloc::<u32>(1, "word")?;
    let floor = graph_us(gpu, &|_| {
        gpu.launch(FillArgs {
            out: gpu.ptr(&word),
            n: 1,
            value: 0,
        })
    })?;
    println!();
    println!("graph-replay floor per launch (one-word kernel): {floor:.2} µs");
    println!(
        "router, {} shape, f32 logits, top-{k} + {s} shared slots; fused = the kernel callers get \
         (lane-contiguous where it covers the shape), general = the kernel for every shape",
        cfg.name
    );
    println!(
        "{:>7}  {:>12}  {:>12}  {:>12}  {:>8}  {:>10}  {:>9}  method",
        "tokens", "fused µs", "general µs", "unfused µs", "speedup", "fused GB/s", "of copy",
    );
    for &t in tokens {
        if t == 0 {
            continue;
        }
        let logits_bytes = t * e * 4;
        let sets = if t >= GRAPH_MAX_TOKENS {
            (ROTATE_BYTES / logits_bytes).clamp(2, 16)
        } else {
            1
        };
        let mut logits = Vec::with_capacity(sets);
        for _ in 0..sets {
            let host: Vec<f32> = (0..t * e).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            logits.push(gpu.upload(&host, "bench logits")?);
        }
        let ids = gpu.alloc::<u32>(t * spt, "ids")?;
        let weights = gpu.alloc::<f32>(t * spt, "weights")?;
        let bufs = UnfusedBufs::new(gpu, t, e, cfg.n_group, k)?;
        let io = |set: usize| RouterIo {
            logits: gpu.ptr(&logits[set % sets]).cast(),
            logits_bf16: false,
            bias: if cfg.has_bias {
                gpu.ptr(&d_bias)
            } else {
                DevPtr::NULL
            },
            gate: DevPtr::NULL,
            ids: gpu.ptr(&ids),
            weights: gpu.ptr(&weights),
            probs: DevPtr::NULL,
        };
        let fused = |set: usize| router::fused(gpu, &sh, &io(set), t);
        // The general kernel (the only one for other shapes), timed on this shape too.
        let general = |set: usize| router::fused_with(gpu, &sh, &io(set), t, FusedKernel::General);
        let unfused =
            |set: usize| router::unfused(gpu, &sh, &io(set), t, &bufs, &mut Timer::new(false));
        let (f_us, g_us, u_us, method) = if t < GRAPH_MAX_TOKENS {
            (
                graph_us(gpu, &fused)?,
                graph_us(gpu, &general)?,
                graph_us(gpu, &unfused)?,
                "graph replay",
            )
        } else {
            (
                time_us(gpu, fused)?,
                time_us(gpu, general)?,
                time_us(gpu, unfused)?,
                "events, rotated inputs",
            )
        };
        let bytes = (logits_bytes + t * spt * 8) as u64;
        let gbs = gb_per_s(bytes, f_us).unwrap_or(f64::NAN);
        println!(
            "{t:>7}  {f_us:>12.2}  {g_us:>12.2}  {u_us:>12.2}  {:>7.1}x  {gbs:>10.0}  {:>8.0}%  {method}",
            u_us / f_us,
            100.0 * gbs / copy_gbs
        );
    }
    Ok(())
}

/// Device time per call of a graph holding CALLS_PER_GRAPH calls, replayed REPLAYS times.
fn graph_us(gpu: &Gpu, call: &dyn Fn(usize) -> Result<()>) -> Result<f64> {
    call(0)?;
    gpu.sync("warm-up")?;
    gpu.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(cuda_err("starting a graph capture"))?;
    let captured = (0..CALLS_PER_GRAPH).try_for_each(call);
    let graph = gpu
        .stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(cuda_err("ending a graph capture"));
    captured?;
    let graph = graph?.ok_or_else(|| anyhow!("the graph capture was empty"))?;
    let us = time_us(gpu, |_| {
        for _ in 0..REPLAYS {
            graph.launch().map_err(cuda_err("replaying a graph"))?;
        }
        Ok(())
    })?;
    Ok(us / (REPLAYS * CALLS_PER_GRAPH) as f64)
}

/// The full layer through both paths: clean vs instrumented, and the expert GEMMs.
fn bench_paths(gpu: &Arc<Gpu>, args: &BenchArgs, copy_gbs: f64) -> Result<()> {
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
    for &t in &args.path_tokens {
        if t == 0 {
            continue;
        }
        let input = StepInput {
            step: 0,
            tokens: t,
            seed: 7,
            hidden: None,
            sample_tokens: vec![0],
        };
        backend.step(&input, &paths)?; // warm-up: workspace, first launches
        let out = backend.step(&input, &paths)?;
        for (name, run) in PathId::ALL.iter().zip(&out.paths) {
            let instr: f64 = run.timings.iter().map(|k| k.us).sum();
            let clean = run.clean_us.unwrap_or(f64::NAN);
            let find = |st: Stage| run.timings.iter().find(|k| k.stage == st);
            let (up, down) = (find(Stage::ExpertGemmUp), find(Stage::ExpertGemmDown));
            let us = up.map(|k| k.us).unwrap_or(0.0) + down.map(|k| k.us).unwrap_or(0.0);
            let bytes =
                up.and_then(|k| k.bytes).unwrap_or(0) + down.and_then(|k| k.bytes).unwrap_or(0);
            let gbs = gb_per_s(bytes, us).unwrap_or(f64::NAN);
            println!(
                "{t:>6}  {:>4}  {clean:>11.1}  {instr:>11.1}  {:>6.3}  {:>10.1}  {:>10.1}  {gbs:>7.0}  {:>9.0}%",
                name.name(),
                instr / clean,
                up.map(|k| k.us).unwrap_or(0.0),
                down.map(|k| k.us).unwrap_or(0.0),
                100.0 * gbs / copy_gbs
            );
        }
        let b = &out.paths[1];
        let detail: Vec<String> = b
            .timings
            .iter()
            .map(|k| format!("{} {:.1}", k.stage, k.us))
            .collect();
        println!("        B stages (µs): {}", detail.join(", "));
    }
    Ok(())
}
