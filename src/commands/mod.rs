//! The command line and one module per subcommand: run (default: the TUI) | replay | export |
//! route | bench | check | inspect. This is the only layer that reads CLI arguments: each
//! command turns them into the engine's, session's and ui's own types and wires those together.

pub mod bench;
pub mod check;
pub mod check_kernel;
pub mod driver;
pub mod experts;
pub mod export;
pub mod inspect;
pub mod replay;
pub mod route;
pub mod run;

use crate::engine::paths::{Variant, VARIANTS};
use crate::engine::spec::{LayerSource, LayerSpec};
use crate::engine::BackendChoice;
use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Parser, Debug)]
#[command(
    name = "moescope",
    version,
    args_conflicts_with_subcommands = true,
    about = "Watch MoE routing, fused shared experts and their scaling contract, step by step"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, the default subcommand.
    #[command(flatten)]
    pub run: run::RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a layer step by step: the TUI, or JSON lines with --headless (default subcommand).
    Run(run::RunArgs),
    /// Open a recorded session in the TUI, or print its summary.
    Replay(replay::ReplayArgs),
    /// Export a recorded session to json, chrome (Perfetto), eplb, csv, ep-load or ep-placement.
    Export(export::ExportArgs),
    /// Route logits from a safetensors file and print the top-k ids and weights as JSON.
    Route(route::RouteArgs),
    /// Time the routers and the layer's paths (clean and instrumented) over token counts.
    Bench(bench::BenchArgs),
    /// Run every kernel against the CPU reference and print a table; non-zero exit on failure.
    Check(check::CheckArgs),
    /// Show a checkpoint's MoE config, its MoE layers and one layer's tensors.
    Inspect(inspect::InspectArgs),
}

/// Entry point after parsing.
pub fn main_with(cli: Cli) -> Result<()> {
    let result = dispatch(cli);
    if let Err(e) = &result {
        if e.downcast_ref::<crate::ui::Interrupted>().is_some() {
            // Exiting on a signal: let a session line being written finish, start no other.
            std::mem::forget(crate::session::writer::hold_writes());
        }
    }
    result
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        None => run::run(cli.run),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Replay(args)) => replay::run(args),
        Some(Command::Export(args)) => export::run(args),
        Some(Command::Route(args)) => route::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Check(args)) => check::run(args),
        Some(Command::Inspect(args)) => inspect::run(args),
    }
}

/// A clap parser for a type that names its values (`NAMES`) and parses them (`FromStr`): the
/// help lists the names, and the type stays free of clap.
pub fn named<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// Which layer to run: a preset, a Hugging Face config, or a checkpoint directory.
#[derive(Args, Debug, Clone, Default)]
pub struct LayerArgs {
    /// Model preset (deepseek-v3, deepseek-v2, deepseek-v2-lite, kimi-k2, glm-4.5, qwen3-30b-a3b,
    /// qwen3-next-80b-a3b, mixtral-8x7b).
    #[arg(long, conflicts_with_all = ["config", "model"])]
    pub preset: Option<String>,
    /// A Hugging Face config.json (synthetic weights in its shape).
    #[arg(long, conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// A Hugging Face checkpoint directory (config.json + safetensors): its real weights.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// MoE layer of --model (default: the first MoE layer).
    #[arg(long, requires = "model")]
    pub layer: Option<usize>,
    /// Tensor-parallel size: expert intermediate sizes divided by N, as one rank holds them.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Override the hidden size (synthetic weights only).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Override the routed experts' intermediate size (synthetic weights only).
    #[arg(long)]
    pub intermediate: Option<usize>,
    /// Seed of the synthetic weights and hidden states.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Routing skew toward hot experts (0 = none; 1 = strong Zipf-like skew).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true,
          value_parser = finite_non_negative::<f32>)]
    pub skew: f32,
    /// Backend: auto (CUDA if present, else CPU), cuda or cpu.
    #[arg(long, default_value = "auto", value_parser = named::<BackendChoice>(BackendChoice::NAMES))]
    pub backend: BackendChoice,
}

impl LayerArgs {
    /// The engine's description of the layer these flags choose.
    pub fn spec(&self) -> LayerSpec {
        let source = match (&self.model, &self.config, &self.preset) {
            (Some(dir), _, _) => LayerSource::Checkpoint {
                dir: dir.clone(),
                layer: self.layer,
            },
            (None, Some(path), _) => LayerSource::HfConfig(path.clone()),
            (None, None, preset) => {
                LayerSource::Preset(preset.clone().unwrap_or_else(|| "deepseek-v3".to_string()))
            }
        };
        LayerSpec {
            source,
            tp: self.tp,
            hidden: self.hidden,
            intermediate: self.intermediate,
            seed: self.seed,
            skew: self.skew,
            backend: self.backend,
        }
    }
}

/// A float flag that must be a finite number ≥ 0: NaN or infinity would run, and every number it
/// touched would then be non-finite, so it is refused before anything starts.
pub fn finite_non_negative<T>(s: &str) -> Result<T, String>
where
    T: FromStr + Into<f64> + Copy,
{
    let v: T = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    let x: f64 = v.into();
    if !x.is_finite() || x < 0.0 {
        return Err(format!("`{s}` must be a finite number ≥ 0"));
    }
    Ok(v)
}

/// A count flag that must be a whole number ≥ 1 (`--tokens -5` reaches this parser and is told
/// so, instead of being taken for an unknown flag).
pub fn positive_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("`{s}` is too large")),
        Ok(_) => Err(format!("`{s}` must be a whole number ≥ 1")),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// `--variant`: a name from `paths::VARIANTS`.
pub fn parse_variant(s: &str) -> Result<Variant, String> {
    Variant::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = VARIANTS.iter().map(|v| v.name()).collect();
        format!(
            "unknown variant `{s}`; expected one of {}",
            names.join(", ")
        )
    })
}
