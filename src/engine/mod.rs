//! Everything that computes; no terminal code. `Engine::step` runs one batch through both paths
//! on a backend and turns what the backend measured into a `StepRecord`.

pub mod compare;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod finite;
pub mod inputs;
pub mod memory;
pub mod paths;
pub mod routing;
pub mod spec;
pub mod stats;
pub mod step;
pub mod telemetry;
pub mod weights;

use anyhow::Result;
use config::MoeConfig;
use paths::{PathSpec, Variant};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use step::{KernelTiming, OutputStats, StepRecord};
use weights::{ExpertWeights, WeightSource};

/// What the engine asks a backend to compute for one step.
#[derive(Clone, Debug)]
pub struct StepInput {
    pub step: u64,
    pub tokens: usize,
    /// Seed of the synthetic hidden states (see `weights::synthetic::hidden_row`).
    pub seed: u64,
    /// Real activations [tokens × H] instead of synthetic ones, where given.
    pub hidden: Option<Arc<Vec<f32>>>,
    /// Tokens whose output rows come back for the comparisons.
    pub sample_tokens: Vec<usize>,
}

/// What one path computed, as the kernels applied it.
#[derive(Clone, Debug, Default)]
pub struct PathRun {
    /// Slots per token: the routed experts (selection order), then any fused shared slots.
    pub slots_per_token: usize,
    /// [tokens × slots_per_token] slot ids; shared slots are E..E+S-1.
    pub slot_ids: Vec<u32>,
    /// [tokens × slots_per_token] the weight each slot's output was multiplied by, before
    /// `out_scale`.
    pub slot_weights: Vec<f32>,
    /// Factor applied to the sum of the slots.
    pub out_scale: f64,
    /// [tokens] weight on the separate shared MLP's output (gate included), added after
    /// `out_scale`; empty when the path runs no separate shared MLP.
    pub separate_shared_weight: Vec<f32>,
    /// [samples × H] output rows of `StepInput::sample_tokens`.
    pub sample_outputs: Vec<f32>,
    /// Over all tokens.
    pub output: OutputStats,
    pub timings: Vec<KernelTiming>,
    /// Uninstrumented path time, where the backend measures it.
    pub clean_us: Option<f64>,
    /// Non-finite values counted in this path's own stages (router, experts, combine).
    pub finite: finite::FiniteCounts,
}

/// What a backend returns for one step.
#[derive(Clone, Debug, Default)]
pub struct BackendStep {
    /// [tokens × E] router logits as the router saw them (logit offset included).
    pub router_logits: Vec<f32>,
    /// [samples × H] hidden states of the sampled tokens as the backend held them.
    pub sample_hidden: Vec<f32>,
    /// [tokens] shared gate g (1 where the model has no gate); empty without shared experts.
    pub shared_gate: Vec<f32>,
    /// One per requested path, in order.
    pub paths: Vec<PathRun>,
    /// Non-finite values counted in the stages all paths share (input, weights).
    pub finite: finite::FiniteCounts,
}

/// The kind of backend; serialised as `cpu` / `cuda` in StepRecords and session headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which backend runs, and on what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub kind: BackendKind,
    /// e.g. "NVIDIA H100 80GB HBM3 (sm_90)" or "CPU, 2 threads".
    pub device: String,
}

/// A compute backend: CPU (rayon) or CUDA.
pub trait Backend: Send {
    fn info(&self) -> BackendInfo;
    /// Runs one batch through every path.
    fn step(&mut self, input: &StepInput, paths: &[PathSpec]) -> Result<BackendStep>;
    /// The weights, for the f64 reference on sampled tokens.
    fn weights(&self) -> &dyn WeightSource;
    /// Slot `slot`'s MLP (routed < E, then shared slots) for the f64 reference. Backends that
    /// already hold the weights on the host override this to skip regenerating or re-reading.
    fn reference_slot(&self, slot: usize) -> Result<Arc<ExpertWeights>> {
        let w = self.weights();
        let e = w.config().n_routed_experts;
        Ok(Arc::new(if slot < e {
            w.expert(slot)?
        } else {
            w.shared_slot(slot - e)?
        }))
    }
}

/// Which backend to open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendChoice {
    #[default]
    /// CUDA when a driver and a device exist, else the CPU with a notice.
    Auto,
    Cuda,
    Cpu,
}

impl BackendChoice {
    /// The names `FromStr` takes.
    pub const NAMES: &'static [&'static str] = &["auto", "cuda", "cpu"];
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cuda" => Ok(BackendChoice::Cuda),
            "cpu" => Ok(BackendChoice::Cpu),
            other => Err(format!(
                "unknown backend `{other}`; expected auto, cuda or cpu"
            )),
        }
    }
}

/// Resolves `auto`: CUDA when a driver, a device and NVRTC are present, else the CPU with a notice
/// saying why. The one place the driver is probed.
pub fn resolve_backend(choice: BackendChoice) -> (BackendChoice, Option<String>) {
    match choice {
        BackendChoice::Auto => match cuda::probe() {
            Ok(()) => (BackendChoice::Cuda, None),
            Err(why) => (
                BackendChoice::Cpu,
                Some(format!("no CUDA: {why}; running on the CPU")),
            ),
        },
        other => (other, None),
    }
}

/// Opens the chosen backend (resolving `auto` first). Returns a notice to show when `auto` fell
/// back to the CPU.
pub fn open_backend(
    choice: BackendChoice,
    weights: Box<dyn WeightSource>,
) -> Result<(Box<dyn Backend>, Option<String>)> {
    let (choice, notice) = resolve_backend(choice);
    let backend: Box<dyn Backend> = match choice {
        BackendChoice::Cuda => cuda::open(weights)?,
        _ => Box::new(cpu::CpuBackend::new(weights)?),
    };
    Ok((backend, notice))
}

/// Runs steps: owns the backend, the two paths and the batch settings.
pub struct Engine {
    backend: Box<dyn Backend>,
    paths: Vec<PathSpec>,
    tokens: usize,
    seed: u64,
    hidden: Option<Arc<Vec<f32>>>,
    next_step: u64,
    /// Most tokens per step that fit this machine's memory (`memory::max_tokens`).
    max_tokens: usize,
    started: Instant,
    /// Where the weights and inputs come from, for session headers.
    description: String,
}

impl Engine {
    /// `paths` are A and B. `hidden`, where given, is the captured batch [T × H] every step uses.
    pub fn new(
        backend: Box<dyn Backend>,
        paths: Vec<PathSpec>,
        tokens: usize,
        seed: u64,
        hidden: Option<Arc<Vec<f32>>>,
    ) -> Engine {
        let tokens = hidden
            .as_ref()
            .map(|h| h.len() / backend.weights().config().hidden_size)
            .unwrap_or(tokens);
        let description = backend.weights().describe();
        Engine {
            backend,
            paths,
            tokens,
            seed,
            hidden,
            next_step: 0,
            max_tokens: usize::MAX,
            started: Instant::now(),
            description,
        }
    }

    /// Sets the description session headers carry (see `spec::RunSpec::build_engine`).
    pub fn described_as(mut self, description: String) -> Engine {
        self.description = description;
        self
    }

    /// Sets the most tokens per step this machine's memory allows (see `memory`).
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Engine {
        self.max_tokens = max_tokens.max(1);
        self
    }

    /// The most tokens per step that fit (usize::MAX where no limit is known).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn config(&self) -> &MoeConfig {
        self.backend.weights().config()
    }
    /// Where the weights and inputs come from ("synthetic, seed 7", "checkpoint DIR, layer 3").
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn info(&self) -> BackendInfo {
        self.backend.info()
    }
    pub fn paths(&self) -> &[PathSpec] {
        &self.paths
    }
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    /// Tokens per step, at most `max_tokens`; ignored (stays the captured batch's size) when
    /// running captured inputs.
    pub fn set_tokens(&mut self, tokens: usize) {
        if self.hidden.is_none() {
            self.tokens = tokens.clamp(1, self.max_tokens);
        }
    }
    /// The variant of path B (the fused path), where known bugs are shown.
    pub fn set_variant(&mut self, variant: Variant) {
        if let Some(b) = self.paths.last_mut() {
            b.variant = variant;
        }
    }

    /// Runs the next step through both paths and analyses it.
    pub fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        let cfg = self.config().clone();
        let sample_tokens = compare::sample_tokens(&cfg, self.tokens, self.next_step);
        let input = StepInput {
            step: self.next_step,
            tokens: self.tokens,
            seed: self.seed,
            hidden: self.hidden.clone(),
            sample_tokens,
        };
        let out = self.backend.step(&input, &self.paths)?;
        let info = self.backend.info();
        let mut record = compare::assemble(
            &cfg,
            self.backend.as_ref(),
            &input,
            &self.paths,
            &out,
            info.kind,
        )?;
        record.wall_us = t0.elapsed().as_secs_f64() * 1e6;
        record.t_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.next_step += 1;
        Ok(record)
    }
}
