//! Everything that computes; no terminal code. `Engine::step` runs one batch through both paths
//! on a backend and turns what the backend measured into a `StepRecord`.

pub mod compare;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod ep;
mod ep_eplb;
pub mod finite;
pub mod format_numerics;
pub mod inputs;
pub mod kernel_check;
pub mod memory;
pub mod numerics;
pub mod paths;
pub mod routing;
pub mod spec;
pub mod stats;
pub mod step;
pub mod telemetry;
pub mod trace;
pub mod weights;

use anyhow::{ensure, Result};
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
    /// The step's numerics where the backend computed them itself (the CUDA backend's device
    /// reference); None: `compare` computes them on the host from the fields above.
    pub numerics: Option<numerics::StepNumerics>,
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
    /// Runs one batch through every path with the routing given (a trace's step): the router is
    /// skipped, every path applies these ids with its own contract's weights.
    fn step_routed(
        &mut self,
        input: &StepInput,
        paths: &[PathSpec],
        routed: &trace::RoutedBatch,
    ) -> Result<BackendStep> {
        let _ = (input, paths, routed);
        anyhow::bail!(
            "the {} backend cannot run a routing trace yet; pass --backend cpu",
            self.info().kind
        )
    }
    /// Time of one EP rank's share of the grouped expert GEMM: (logical expert, tokens) of each
    /// of its slots. None where the backend cannot tell.
    fn rank_gemm_time(&mut self, slots: &[(u32, u32)]) -> Result<Option<ep::GemmTime>> {
        let _ = slots;
        Ok(None)
    }
    /// The weights, for the f64 reference on sampled tokens.
    fn weights(&self) -> &dyn WeightSource;
    /// The engine routes the logits itself every step (EP tracking, saved routing): a backend
    /// that compares on the device returns them anyway.
    fn keep_router_logits(&mut self) {}
    /// Whether the backend compares every token against the f64 reference itself (returning
    /// `BackendStep::numerics`): the engine then asks it for no sampled rows.
    fn compares_on_device(&self) -> bool {
        false
    }
    /// Whether the backend's own numerics include the FP8 paths' `expert_formats` (else the
    /// engine computes them on the host from sampled rows).
    fn compares_fp8_on_device(&self, paths: &[PathSpec]) -> bool {
        let _ = paths;
        false
    }
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
    /// Slot `slot`'s MLP as an FP8 path multiplies it (dequantized), for the f64 reference of
    /// FP8 paths. Backends that hold the FP8 weights override this to return exactly those.
    fn reference_slot_fp8(&self, slot: usize) -> Result<Arc<ExpertWeights>> {
        let w = self.weights();
        let e = w.config().n_routed_experts;
        let m = if slot < e {
            weights::fp8::expert(w, slot)?
        } else {
            weights::fp8::shared_slot(w, slot - e)?
        };
        Ok(Arc::new(m.dequantize()))
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
    /// A routing trace stepped through instead of the router (`--routing`).
    trace: Option<Arc<trace::RoutingTrace>>,
    /// Expert-parallel placements evaluated per step (`--ep`).
    ep: Option<ep::EpTracker>,
    /// Each step's routing kept for `--save-routing`, when asked.
    saved_routing: Option<Vec<trace::RoutedBatch>>,
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
            trace: None,
            ep: None,
            saved_routing: None,
        }
    }

    /// Steps through `trace` instead of routing: its tokens per step replace the engine's.
    pub fn with_routing(mut self, trace: Arc<trace::RoutingTrace>) -> Engine {
        self.tokens = trace.tokens;
        self.trace = Some(trace);
        self
    }

    /// Evaluates expert-parallel placements every step.
    pub fn with_ep(mut self, tracker: ep::EpTracker) -> Engine {
        self.ep = Some(tracker);
        self.backend.keep_router_logits();
        self
    }

    /// Keeps every step's routing (the trace's, or the reference router's) for `saved_routing`.
    pub fn keep_routing(mut self) -> Engine {
        self.saved_routing = Some(Vec::new());
        self.backend.keep_router_logits();
        self
    }

    /// The routing of the steps run so far, where `keep_routing` asked for it.
    pub fn saved_routing(&self) -> Option<&[trace::RoutedBatch]> {
        self.saved_routing.as_deref()
    }

    pub fn routing_trace(&self) -> Option<&trace::RoutingTrace> {
        self.trace.as_deref()
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
        if self.hidden.is_none() && self.trace.is_none() {
            self.tokens = tokens.clamp(1, self.max_tokens);
        }
    }
    /// The variant of path B (the fused path), where known bugs are shown.
    pub fn set_variant(&mut self, variant: Variant) {
        // Path B is the second path (a user kernel, path C, may follow it).
        let b = self.paths.len().min(2).saturating_sub(1);
        if let Some(b) = self.paths.get_mut(b) {
            b.variant = variant;
        }
    }

    /// Runs the next step through both paths and analyses it.
    pub fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        let cfg = self.config().clone();
        // FP8 paths are compared on the host (format_numerics) where the device does not.
        let fp8_on_host = self.paths.iter().any(|p| p.uses_fp8())
            && !self.backend.compares_fp8_on_device(&self.paths);
        let sample_tokens = if self.backend.compares_on_device() && !fp8_on_host {
            Vec::new()
        } else {
            compare::sample_tokens(&cfg, self.tokens, self.next_step)
        };
        let input = StepInput {
            step: self.next_step,
            tokens: self.tokens,
            seed: self.seed,
            hidden: self.hidden.clone(),
            sample_tokens,
        };
        let given = self.trace.as_ref().map(|tr| tr.batch(self.next_step));
        let out = match &given {
            Some(batch) => {
                ensure!(
                    batch.tokens() == input.tokens,
                    "the routing holds {} tokens, the step {}",
                    batch.tokens(),
                    input.tokens
                );
                self.backend.step_routed(&input, &self.paths, batch)?
            }
            None => self.backend.step(&input, &self.paths)?,
        };
        let info = self.backend.info();
        let routing = match &given {
            Some(batch) => batch.clone(),
            None => self.own_routing(&cfg, &out)?,
        };
        let mut record = compare::assemble_given(
            &cfg,
            self.backend.as_ref(),
            &input,
            &self.paths,
            &out,
            info.kind,
            given.as_ref().map(|b| b.to_routing()).as_ref(),
        )?;
        // FP8 paths' errors (against the FP8 math and bf16), where the backend left them out.
        if record.comparison.expert_formats.is_empty() {
            record.comparison.expert_formats =
                format_numerics::expert_formats(self.backend.as_ref(), &input, &self.paths, &out)?;
        }
        if let Some(tracker) = &mut self.ep {
            let backend = &mut self.backend;
            record.ep = Some(tracker.step(&routing.ids, routing.k, &mut |slots| {
                backend.rank_gemm_time(slots)
            })?);
        }
        if let Some(saved) = &mut self.saved_routing {
            saved.push(routing);
        }
        record.wall_us = t0.elapsed().as_secs_f64() * 1e6;
        record.t_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.next_step += 1;
        Ok(record)
    }

    /// The reference router's routing of this step's logits (what the paths are checked
    /// against), for EP and `--save-routing`; empty when neither asks for it.
    fn own_routing(&self, cfg: &MoeConfig, out: &BackendStep) -> Result<trace::RoutedBatch> {
        let k = cfg.num_experts_per_tok;
        if self.ep.is_none() && self.saved_routing.is_none() {
            return Ok(trace::RoutedBatch {
                k,
                ids: Vec::new(),
                probs: Vec::new(),
            });
        }
        let bias = self.backend.weights().router_bias()?;
        let r = routing::route(cfg, &out.router_logits, bias.as_deref(), k);
        Ok(trace::RoutedBatch {
            k: r.k,
            ids: r.ids,
            probs: r.probs.iter().map(|&p| p as f32).collect(),
        })
    }
}
