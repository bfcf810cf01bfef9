//! Command line: `run` (default: the TUI) | replay | export | route | bench | check | inspect.
//! Parsing and wiring only; the work lives in `engine`, `session` and `ui`.

use crate::engine::config::MoeConfig;
use crate::engine::paths::{PathSpec, RsfPlacement, Variant, VARIANTS};
use crate::engine::weights::synthetic::SyntheticWeights;
use crate::engine::weights::WeightSource;
use crate::engine::{self, BackendChoice, Engine};
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

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
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a layer step by step: the TUI, or JSON lines with --headless (default subcommand).
    Run(RunArgs),
    /// Open a recorded session in the TUI, or print its summary.
    Replay(crate::session::ReplayArgs),
    /// Export a recorded session to json, chrome (Perfetto), eplb or csv.
    Export(crate::session::ExportArgs),
    /// Route logits from a safetensors file and print the top-k ids and weights as JSON.
    Route(RouteArgs),
    /// Time the routers and the layer's paths (clean and instrumented) over token counts.
    Bench(crate::engine::cuda::bench::BenchArgs),
    /// Run every kernel against the CPU reference and print a table; non-zero exit on failure.
    Check(crate::engine::cuda::check::CheckArgs),
    /// Show a checkpoint's MoE config, its MoE layers and one layer's tensors.
    Inspect(crate::engine::weights::checkpoint::InspectArgs),
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
    #[arg(long, default_value_t = 0.0)]
    pub skew: f32,
    /// Backend: auto (CUDA if present, else CPU), cuda or cpu.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

/// Hidden/intermediate sizes the CPU backend uses for synthetic layers unless told otherwise:
/// the routing shape is the model's, the expert matrices small enough to stay lively.
pub const CPU_HIDDEN: usize = 512;
pub const CPU_INTERMEDIATE: usize = 256;

impl LayerArgs {
    /// The config the flags describe, before any size overrides.
    pub fn base_config(&self) -> Result<MoeConfig> {
        if let Some(path) = &self.config {
            return MoeConfig::from_hf_file(path);
        }
        if let Some(dir) = &self.model {
            return crate::engine::weights::checkpoint::read_config(dir);
        }
        Ok(MoeConfig::preset(
            self.preset.as_deref().unwrap_or("deepseek-v3"),
        )?)
    }

    /// Opens the weights: a checkpoint layer, or synthetic weights in the config's shape.
    /// `cpu_sized` shrinks synthetic matrices to the CPU defaults where no size was given.
    pub fn weights(&self, cpu_sized: bool) -> Result<(Box<dyn WeightSource>, Vec<String>)> {
        let mut notices = Vec::new();
        if let Some(dir) = &self.model {
            if self.hidden.is_some() || self.intermediate.is_some() {
                bail!("--hidden and --intermediate apply to synthetic weights, not to --model");
            }
            let w = crate::engine::weights::checkpoint::open(dir, self.layer, self.tp)?;
            return Ok((w, notices));
        }
        let mut cfg = self.base_config()?.with_tensor_parallel(self.tp)?;
        let shared_per_slot = cfg.shared_slot_intermediate();
        let slots_like_experts = cfg.shared_fusable();
        if let Some(h) = self.hidden {
            cfg.hidden_size = h;
        }
        if let Some(i) = self.intermediate {
            cfg.moe_intermediate_size = i;
        }
        if cpu_sized && self.hidden.is_none() && self.intermediate.is_none() {
            cfg.hidden_size = CPU_HIDDEN.min(cfg.hidden_size);
            cfg.moe_intermediate_size = CPU_INTERMEDIATE.min(cfg.moe_intermediate_size);
            notices.push(format!(
                "CPU backend: expert matrices shrunk to hidden {}, intermediate {} (set --hidden/--intermediate to change)",
                cfg.hidden_size, cfg.moe_intermediate_size
            ));
        }
        // Keep the shared experts' size in proportion to the routed experts'.
        if cfg.n_shared_experts > 0 && (self.intermediate.is_some() || cpu_sized) {
            cfg.shared_intermediate_size = if slots_like_experts {
                cfg.n_shared_experts * cfg.moe_intermediate_size
            } else {
                shared_per_slot.min(cfg.moe_intermediate_size) * cfg.n_shared_experts
            };
        }
        cfg.validate()?;
        Ok((
            Box::new(SyntheticWeights::new(cfg, self.seed, self.skew)),
            notices,
        ))
    }

    /// Opens the backend on these weights. Returns the backend and notices to show.
    pub fn open(&self) -> Result<(Box<dyn engine::Backend>, Vec<String>)> {
        let (choice, fallback) = engine::resolve_backend(self.backend);
        let (weights, mut notices) = self.weights(choice == BackendChoice::Cpu)?;
        notices.splice(0..0, fallback);
        let (backend, _) = engine::open_backend(choice, weights)?;
        Ok((backend, notices))
    }
}

/// `--b-rsf`: where path B applies the routed scaling factor.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RsfArg {
    InRouter,
    OnOutput,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    /// Tokens per step.
    #[arg(long, short = 't', default_value_t = 64)]
    pub tokens: usize,
    /// Scaling variant of path B (the fused path): correct, shared-inv-rsf, rsf-twice,
    /// hardcoded-2.5, shared-dropped.
    #[arg(long, default_value = "correct", value_parser = parse_variant)]
    pub variant: Variant,
    /// Where path B applies the routed scaling factor.
    #[arg(long, value_enum, default_value_t = RsfArg::OnOutput)]
    pub b_rsf: RsfArg,
    /// Captured hidden states (safetensors with `hidden_states` [T, H]) instead of synthetic ones.
    #[arg(long)]
    pub hidden_states: Option<PathBuf>,
    /// Print StepRecords as JSON lines instead of opening the TUI.
    #[arg(long)]
    pub headless: bool,
    /// Steps to run (headless: default 10; TUI: run until quit).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Record the session to this JSONL file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Overwrite an existing --record or -o file.
    #[arg(long)]
    pub force: bool,
    /// Headless: export the run directly in this format instead of printing JSON lines.
    #[arg(long, value_enum, requires = "headless")]
    pub export: Option<crate::session::ExportFormat>,
    /// Output file of --export.
    #[arg(short = 'o', long = "output", requires = "export")]
    pub output: Option<PathBuf>,
    /// NVML telemetry sampling rate, Hz (0 = off).
    #[arg(long, default_value_t = 10.0)]
    pub telemetry_hz: f64,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            layer: LayerArgs {
                tp: 1,
                seed: 7,
                backend: BackendChoice::Auto,
                ..LayerArgs::default()
            },
            tokens: 64,
            variant: Variant::Correct,
            b_rsf: RsfArg::OnOutput,
            hidden_states: None,
            headless: false,
            steps: None,
            record: None,
            force: false,
            export: None,
            output: None,
            telemetry_hz: 10.0,
        }
    }
}

pub fn parse_variant(s: &str) -> Result<Variant, String> {
    Variant::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = VARIANTS.iter().map(|v| v.name()).collect();
        format!(
            "unknown variant `{s}`; expected one of {}",
            names.join(", ")
        )
    })
}

impl RunArgs {
    /// Path A (the unfused baseline) and path B (fused, with the chosen variant).
    pub fn paths(&self) -> Vec<PathSpec> {
        let mut b = PathSpec::fused(self.variant);
        b.rsf = match self.b_rsf {
            RsfArg::InRouter => RsfPlacement::InRouter,
            RsfArg::OnOutput => RsfPlacement::OnOutput,
        };
        vec![PathSpec::unfused_baseline(), b]
    }

    /// Builds the engine these options describe. Returns it with notices to show the user.
    pub fn build_engine(&self) -> Result<(Engine, Vec<String>)> {
        if self.tokens == 0 {
            bail!("--tokens must be at least 1");
        }
        let (backend, notices) = self.layer.open()?;
        let hidden = match &self.hidden_states {
            Some(path) => {
                let h = backend.weights().config().hidden_size;
                let states = crate::engine::weights::checkpoint::read_hidden_states(path, h)?;
                Some(Arc::new(states))
            }
            None => None,
        };
        let engine = Engine::new(backend, self.paths(), self.tokens, self.layer.seed, hidden);
        Ok((engine, notices))
    }
}

#[derive(Args, Debug, Clone)]
pub struct RouteArgs {
    /// safetensors file with `router_logits` [T, E] (F32, BF16 or F16) and optionally
    /// `e_score_correction_bias` [E] (F32).
    #[arg(long)]
    pub logits: PathBuf,
    /// Write the JSON here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// Entry point after parsing.
pub fn main_with(cli: Cli) -> Result<()> {
    match cli.command {
        None => crate::run::run(cli.run),
        Some(Command::Run(args)) => crate::run::run(args),
        Some(Command::Replay(args)) => crate::session::replay(args),
        Some(Command::Export(args)) => crate::session::export_command(args),
        Some(Command::Route(args)) => crate::route::route_command(args),
        Some(Command::Bench(args)) => crate::engine::cuda::bench::run(args),
        Some(Command::Check(args)) => crate::engine::cuda::check::run(args),
        Some(Command::Inspect(args)) => crate::engine::weights::checkpoint::inspect(args),
    }
}
