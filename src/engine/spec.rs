//! What to run, in the engine's own words: which layer (a preset, a Hugging Face config or a
//! checkpoint layer, with size overrides, seed and skew), on which backend, and a run of it
//! (tokens per step, paths, captured activations). `commands` builds these from the CLI; nothing
//! below it sees an argument.

use super::config::MoeConfig;
use super::ep::{EpSpec, EpTracker};
use super::memory::{self, Fp8Copies, WeightDtype};
use super::paths::{PathId, PathLogits, PathSpec};
use super::trace::RoutingTrace;
use super::weights::synthetic::SyntheticWeights;
use super::weights::{checkpoint, WeightSource};
use super::{open_backend, resolve_backend, Backend, BackendChoice, BackendKind, Engine};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Hidden/intermediate sizes the CPU backend uses for synthetic layers unless told otherwise:
/// the routing shape is the model's, the expert matrices small enough to stay lively.
pub const CPU_HIDDEN: usize = 512;
pub const CPU_INTERMEDIATE: usize = 256;

/// Where a layer's shape and weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSource {
    /// A model preset by name (`MoeConfig::preset`), synthetic weights.
    Preset(String),
    /// A Hugging Face config.json, synthetic weights in its shape.
    HfConfig(PathBuf),
    /// A checkpoint directory's MoE layer (`None`: the first MoE layer), its real weights.
    Checkpoint { dir: PathBuf, layer: Option<usize> },
}

/// One MoE layer to run.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub source: LayerSource,
    /// Tensor-parallel size: expert intermediate sizes divided by it, as one rank holds them.
    pub tp: usize,
    /// Synthetic weights only: hidden and routed-expert intermediate size overrides.
    pub hidden: Option<usize>,
    pub intermediate: Option<usize>,
    /// Seed of the synthetic weights and hidden states.
    pub seed: u64,
    /// Routing skew toward hot experts (synthetic weights).
    pub skew: f32,
    pub backend: BackendChoice,
}

impl Default for LayerSpec {
    fn default() -> Self {
        LayerSpec {
            source: LayerSource::Preset("deepseek-v3".to_string()),
            tp: 1,
            hidden: None,
            intermediate: None,
            seed: 7,
            skew: 0.0,
            backend: BackendChoice::Auto,
        }
    }
}

impl LayerSpec {
    /// The layer's config before size overrides and tensor parallelism.
    pub fn base_config(&self) -> Result<MoeConfig> {
        match &self.source {
            LayerSource::Preset(name) => Ok(MoeConfig::preset(name)?),
            LayerSource::HfConfig(path) => MoeConfig::from_hf_file(path),
            LayerSource::Checkpoint { dir, .. } => checkpoint::read_config(dir),
        }
    }

    /// The same spec on another backend.
    pub fn on(&self, backend: BackendChoice) -> LayerSpec {
        LayerSpec {
            backend,
            ..self.clone()
        }
    }

    /// Opens the weights: the checkpoint layer, or synthetic weights in the config's shape.
    /// `cpu_sized` shrinks synthetic matrices to the CPU defaults where no size was given.
    /// Returns notices to show the user.
    pub fn weights(&self, cpu_sized: bool) -> Result<(Box<dyn WeightSource>, Vec<String>)> {
        let mut notices = Vec::new();
        if let LayerSource::Checkpoint { dir, layer } = &self.source {
            if self.hidden.is_some() || self.intermediate.is_some() {
                bail!("--hidden and --intermediate apply to synthetic weights, not to --model");
            }
            return Ok((checkpoint::open(dir, *layer, self.tp)?, notices));
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

    /// Opens the backend on these weights (resolving `auto` once). Returns notices to show.
    pub fn open(&self) -> Result<(Box<dyn Backend>, Vec<String>)> {
        self.open_for(1)
            .map(|(backend, _, notices)| (backend, notices))
    }

    /// Opens the backend for `tokens` per step, after checking that they fit this machine's
    /// memory (refused before anything is allocated). Also returns the most tokens that fit.
    pub fn open_for(&self, tokens: usize) -> Result<(Box<dyn Backend>, usize, Vec<String>)> {
        self.open_with(tokens, Fp8Copies::default())
    }

    /// `open_for`, the memory check counting the FP8 copies of the experts `fp8` asks for.
    pub fn open_with(
        &self,
        tokens: usize,
        fp8: Fp8Copies,
    ) -> Result<(Box<dyn Backend>, usize, Vec<String>)> {
        let (choice, fallback) = resolve_backend(self.backend);
        let (weights, mut notices) = self.weights(choice == BackendChoice::Cpu)?;
        notices.splice(0..0, fallback);
        let kind = match choice {
            BackendChoice::Cuda => BackendKind::Cuda,
            _ => BackendKind::Cpu,
        };
        let max_tokens = check_memory(weights.config(), kind, tokens, fp8)?;
        let (backend, _) = open_backend(choice, weights)?;
        Ok((backend, max_tokens, notices))
    }

    /// What only the spec knows about the weights, appended to the source's own description.
    fn describe_extras(&self) -> String {
        let mut s = String::new();
        if let LayerSource::HfConfig(path) = &self.source {
            s.push_str(&format!(", shape of {}", path.display()));
        }
        if self.tp > 1 && !matches!(self.source, LayerSource::Checkpoint { .. }) {
            s.push_str(&format!(", tp {} (one rank)", self.tp));
        }
        s
    }
}

/// Refuses `tokens` where the estimate does not fit this machine; returns the most that fit.
fn check_memory(
    cfg: &MoeConfig,
    kind: BackendKind,
    tokens: usize,
    fp8: Fp8Copies,
) -> Result<usize> {
    let est = memory::estimate(cfg, kind, WeightDtype::Bf16, fp8);
    let limits = memory::limits(kind == BackendKind::Cuda);
    memory::check(&est, tokens, &limits)?;
    Ok(memory::max_tokens(&est, &limits)
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)))
}

/// A backend, the most tokens per step that fit, the notices to show, and path C's spec where
/// the run has a user kernel.
type OpenedBackend = (Box<dyn Backend>, usize, Vec<String>, Option<PathSpec>);

/// A run of a layer: what `Engine::new` needs, before any backend is opened.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub layer: LayerSpec,
    /// Tokens per step (ignored with captured hidden states: their batch size counts).
    pub tokens: usize,
    /// Path A, path B (and more).
    pub paths: Vec<PathSpec>,
    /// Captured hidden states (safetensors `hidden_states` [T, H]) instead of synthetic ones.
    pub hidden_states: Option<PathBuf>,
    /// Routing traces and expert parallelism (all off by default).
    pub trace: TraceSpec,
    /// A user's router kernel (.cu or .so), run as path C (CUDA only).
    pub kernel: Option<PathBuf>,
    /// Each path's router logits precision (`--router-logits`).
    pub router_logits: PathLogits,
}

/// A routing trace to step through, expert-parallel placements to evaluate, and whether to keep
/// the routing for saving.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceSpec {
    /// `--routing FILE`: its routed ids replace the router (see `engine::trace`).
    pub routing: Option<PathBuf>,
    /// `--routing-layer L` of a [T, layers, K] trace or [layers, E] counts.
    pub routing_layer: Option<usize>,
    pub ep: Option<EpSpec>,
    /// Keep every step's routing (`--save-routing`).
    pub keep_routing: bool,
}

impl RunSpec {
    /// The backend, with path C's kernel where the run has one (its PathSpec from what the
    /// kernel declares).
    fn open_backend(&self) -> Result<OpenedBackend> {
        let Some(path) = &self.kernel else {
            let fp8 = Fp8Copies::of(&self.paths);
            let (backend, max_tokens, notices) = self.layer.open_with(self.tokens, fp8)?;
            return Ok((backend, max_tokens, notices, None));
        };
        let file = crate::engine::cuda::user_kernel::KernelFile::new(path)?;
        if resolve_backend(self.layer.backend).0 != BackendChoice::Cuda {
            bail!(
                "--kernel {}: a user router kernel runs on the CUDA backend only (no CUDA device here, or --backend cpu)",
                file.name()
            );
        }
        let (weights, notices) = self.layer.weights(false)?;
        let fp8 = Fp8Copies::of(&self.paths);
        let max_tokens = check_memory(weights.config(), BackendKind::Cuda, self.tokens, fp8)?;
        let logits = self.router_logits.of(PathId::C);
        let name = file.name();
        let (backend, conv) = crate::engine::cuda::open_with_kernel(weights, file, logits)?;
        Ok((
            backend,
            max_tokens,
            notices,
            Some(PathSpec::user(&name, conv.rsf_in_router)),
        ))
    }

    /// Builds the engine. Returns it with notices to show the user.
    pub fn build_engine(&self) -> Result<(Engine, Vec<String>)> {
        if self.tokens == 0 {
            bail!("--tokens must be at least 1");
        }
        // Path C is the user kernel's (or a third path given here).
        if self.kernel.is_none() && self.paths.len() < 3 && self.router_logits.names(PathId::C) {
            bail!("--router-logits names path C, which runs only with --kernel FILE");
        }
        let (backend, max_tokens, notices, user_path) = self.open_backend()?;
        let hidden = match &self.hidden_states {
            Some(path) => {
                let h = backend.weights().config().hidden_size;
                let states = checkpoint::read_hidden_states(path, h)?;
                if states.len() / h > max_tokens {
                    bail!(
                        "{} holds {} tokens; at most {max_tokens} tokens per step fit this \
                         machine's memory",
                        path.display(),
                        states.len() / h
                    );
                }
                Some(Arc::new(states))
            }
            None => None,
        };
        let mut description = backend.weights().describe();
        description.push_str(&self.layer.describe_extras());
        if let Some(h) = &self.hidden_states {
            description.push_str(&format!(", hidden states from {}", h.display()));
        }
        if let Some(k) = self.kernel.as_ref().filter(|_| user_path.is_some()) {
            let name = k.file_name().unwrap_or(k.as_os_str()).to_string_lossy();
            description.push_str(&format!(", path C: kernel {name}"));
        }
        let cfg = backend.weights().config().clone();
        let routing = match &self.trace.routing {
            Some(path) => {
                let trace = RoutingTrace::read(path, &cfg, self.trace.routing_layer)?;
                if let Some(h) = &hidden {
                    let t = h.len() / cfg.hidden_size;
                    if t != trace.tokens {
                        bail!(
                            "routing file {} holds {} tokens per step, the hidden states {t}; expected the same T",
                            path.display(),
                            trace.tokens
                        );
                    }
                }
                description.push_str(&format!(", routing from {}", path.display()));
                Some(Arc::new(trace))
            }
            None => None,
        };
        let mut paths = self.paths.clone();
        paths.extend(user_path);
        // FP8 paths on a layer whose sizes cut the 128×128 blocks: refused before the first step.
        for p in paths.iter().filter(|p| p.uses_fp8()) {
            let (routed, shared) = (p.experts.is_fp8(), p.shared_experts.is_fp8());
            super::weights::fp8::check_sizes(&cfg, routed, shared)?;
        }
        for (spec, id) in paths.iter_mut().zip(PathId::ALL) {
            spec.logits = self.router_logits.of(id);
        }
        let mut engine = Engine::new(backend, paths, self.tokens, self.layer.seed, hidden)
            .described_as(description)
            .with_max_tokens(max_tokens);
        if let Some(trace) = routing {
            engine = engine.with_routing(trace);
        }
        if let Some(ep) = &self.trace.ep {
            let tracker = EpTracker::new(
                ep.clone(),
                cfg.n_routed_experts,
                cfg.n_group,
                cfg.hidden_size,
            )?;
            engine = engine.with_ep(tracker);
        }
        if self.trace.keep_routing {
            engine = engine.keep_routing();
        }
        Ok((engine, notices))
    }
}
