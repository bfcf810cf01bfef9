//! `moescope bench`: router and path timings as ratios within one run, on one named card.
//!
//! One method at every token count: a CUDA graph of many calls over rotated inputs (together
//! larger than L2 where the batch allows), replayed several times, the median taken after a
//! warm-up; each router against the device copy bandwidth measured in the same run. Paths: the
//! full layer's clean and instrumented times per token count, and the expert GEMMs against the
//! floor of streaming the active weights, in bf16 and in FP8 (against the dense FP8 rate of the
//! same kernel, same run). `--json` writes every figure with the card, driver and
//! commit; `--compare` prints the ratios to an earlier run's JSON.

mod layer;
mod report;
mod routers;

use super::LayerArgs;
use crate::engine::cuda::gpu::{cuda_err, Gpu};
use crate::engine::cuda::kernels::FillArgs;
use crate::engine::cuda::timing;
use anyhow::{anyhow, Context, Result};
use clap::Args;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use indicatif::{ProgressBar, ProgressStyle};
use report::BenchReport;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    /// Router token counts.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 64, 512, 2048, 8192, 40000, 131072])]
    pub router_tokens: Vec<usize>,
    /// Token counts of the whole-layer path timings (0 tokens: skip the layer).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 64, 512, 2048])]
    pub path_tokens: Vec<usize>,
    /// Only the routers.
    #[arg(long)]
    pub router_only: bool,
    /// Write every figure, with the card, driver and commit, to this JSON file.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
    /// Overwrite the --json file if it exists.
    #[arg(long)]
    pub force: bool,
    /// An earlier run's --json file: print each figure's ratio to it.
    #[arg(long, value_name = "OLD")]
    pub compare: Option<PathBuf>,
}

/// Prints a table line through the progress bar (so the bar never tears it).
macro_rules! say {
    ($progress:expr, $($fmt:tt)*) => { $progress.say(format!($($fmt)*)) };
}
use say;

/// A progress bar on stderr while bench measures (indicatif hides it where stderr is not a
/// terminal); the tables go to stdout through `say`, which lifts the bar for the line.
pub struct Progress(ProgressBar);

impl Progress {
    fn new(measurements: u64) -> Progress {
        let bar = ProgressBar::new(measurements);
        let style = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress(bar)
    }

    pub fn say(&self, line: String) {
        self.0.suspend(|| println!("{line}"));
    }

    /// What is being measured now.
    pub fn measuring(&self, what: String) {
        self.0.set_message(what);
    }

    /// One measurement of the total done.
    pub fn measured(&self) {
        self.0.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Timed repetitions of a measurement (the median is taken).
const REPEATS: usize = 7;

pub fn run(args: BenchArgs) -> Result<()> {
    // Bad files are refused before minutes of measuring, not after.
    if let Some(out) = &args.json {
        if out.exists() && !args.force {
            anyhow::bail!(
                "output file {} already exists; pass --force to overwrite it",
                out.display()
            );
        }
    }
    let old = args.compare.as_deref().map(BenchReport::read).transpose()?;
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
    let copy_gbs = timing::copy_bandwidth(&gpu, REPEATS)?;
    println!("device copy bandwidth: {copy_gbs:.0} GB/s (bytes read + written)");
    let mut report = BenchReport::new(&gpu, &cfg.name, copy_gbs);
    report.launch_floor_us = launch_floor(&gpu)?;
    println!(
        "graph-replay floor per launch (one-word kernel): {:.2} µs",
        report.launch_floor_us
    );
    let router_tokens = args.router_tokens.iter().filter(|&&t| t > 0).count();
    let path_tokens = if args.router_only {
        0
    } else {
        args.path_tokens.iter().filter(|&&t| t > 0).count()
    };
    let progress = Progress::new((2 * router_tokens + path_tokens) as u64);
    report.routers = routers::bench_routers(&gpu, &cfg, &args.router_tokens, copy_gbs, &progress)?;
    if path_tokens > 0 {
        let paths = layer::bench_paths(&gpu, &args, copy_gbs, &progress)?;
        report.paths = paths.rows;
        report.fp8_dense_tflops = paths.fp8_dense_tflops;
        report.fp8_fp32_dense_tflops = paths.fp8_fp32_dense_tflops;
        report.bf16_dense_tflops = Some(paths.bf16_dense_tflops);
    }
    if let Some(old) = &old {
        report.print_comparison(old);
    }
    if let Some(out) = &args.json {
        report.write(out, args.force)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// Median µs of `REPEATS` event-timed runs of `f` (see `cuda::timing`).
fn time_us(gpu: &Gpu, f: impl FnMut() -> Result<()>) -> Result<f64> {
    timing::median_us(gpu, REPEATS, f)
}

/// How a call is replayed: calls captured into one graph, replays of the graph per timing.
#[derive(Clone, Copy, Debug)]
pub struct Replay {
    pub calls: usize,
    pub replays: usize,
}

/// Device time per call of a graph holding `r.calls` calls (call `i` gets `i`, to pick its
/// rotated input), replayed `r.replays` times per timing.
fn graph_us(gpu: &Gpu, r: Replay, call: &dyn Fn(usize) -> Result<()>) -> Result<f64> {
    call(0)?;
    gpu.sync("warm-up")?;
    gpu.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(cuda_err("starting a graph capture"))?;
    let captured = (0..r.calls).try_for_each(call);
    let graph = gpu
        .stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(cuda_err("ending a graph capture"));
    captured?;
    let graph = graph?.ok_or_else(|| anyhow!("the graph capture was empty"))?;
    let us = time_us(gpu, || {
        for _ in 0..r.replays {
            graph.launch().map_err(cuda_err("replaying a graph"))?;
        }
        Ok(())
    })?;
    Ok(us / (r.replays * r.calls) as f64)
}

/// The floor of a graph-replayed launch: a kernel that writes one word.
fn launch_floor(gpu: &Gpu) -> Result<f64> {
    let word = gpu.alloc::<u32>(1, "word")?;
    let fill = FillArgs {
        out: gpu.ptr(&word),
        n: 1,
        value: 0,
    };
    let r = Replay {
        calls: 50,
        replays: 20,
    };
    graph_us(gpu, r, &|_| gpu.launch(fill))
}
