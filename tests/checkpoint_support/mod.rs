//! Shared by the checkpoint tests: tiny layers as plain arrays, a `WeightSource` that serves
//! them directly (sliced by its own loops for tensor parallelism), and writers that lay them
//! out in each family's real tensor naming, single-file or sharded with an index.
#![allow(dead_code)]

use moescope::engine::config::MoeConfig;
use moescope::engine::cpu::CpuBackend;
use moescope::engine::step::StepRecord;
use moescope::engine::weights::{round_bf16, ExpertWeights, WeightSource};
use moescope::engine::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One MoE layer's whole weights (no TP split), values as f32.
#[derive(Clone)]
pub struct Layer {
    pub cfg: MoeConfig,
    /// [E × H]
    pub router: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub experts: Vec<ExpertWeights>,
    /// The whole shared MLP [S·I].
    pub shared: Option<ExpertWeights>,
    /// [H]
    pub shared_gate: Option<Vec<f32>>,
}

fn random(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|_| round_bf16(rng.random_range(-amp..amp)))
        .collect()
}

fn random_mlp(rng: &mut StdRng, h: usize, i: usize) -> ExpertWeights {
    let (a_in, a_down) = ((3.0 / h as f32).sqrt(), (3.0 / i as f32).sqrt());
    ExpertWeights {
        hidden: h,
        intermediate: i,
        gate: random(rng, i * h, a_in),
        up: random(rng, i * h, a_in),
        down: random(rng, h * i, a_down),
    }
}

pub fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("test decoder has no {other}"),
    }
}

/// The values a `dtype` file holds for `values`.
pub fn stored(values: &[f32], dtype: Dtype) -> Vec<f32> {
    decode(&encode(values, dtype), dtype)
}

impl Layer {
    /// The layer as a checkpoint of `dtype` holds it (the bias stays F32).
    pub fn stored_as(mut self, dtype: Dtype) -> Layer {
        self.router = stored(&self.router, dtype);
        let mlp = |w: &mut ExpertWeights| {
            w.gate = stored(&w.gate, dtype);
            w.up = stored(&w.up, dtype);
            w.down = stored(&w.down, dtype);
        };
        self.experts.iter_mut().for_each(mlp);
        self.shared.iter_mut().for_each(mlp);
        if let Some(g) = &mut self.shared_gate {
            *g = stored(g, dtype);
        }
        self
    }

    /// Random bf16-exact weights in the config's shape.
    pub fn random(cfg: &MoeConfig, seed: u64) -> Layer {
        let mut rng = StdRng::seed_from_u64(seed);
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        Layer {
            router: random(&mut rng, e * h, (3.0 / h as f32).sqrt()),
            bias: cfg
                .has_bias
                .then(|| (0..e).map(|_| rng.random_range(-0.05..0.05)).collect()),
            experts: (0..e).map(|_| random_mlp(&mut rng, h, i)).collect(),
            shared: (cfg.n_shared_experts > 0)
                .then(|| random_mlp(&mut rng, h, cfg.shared_intermediate_size)),
            shared_gate: cfg
                .shared_expert_gate
                .then(|| random(&mut rng, h, (3.0 / h as f32).sqrt())),
            cfg: cfg.clone(),
        }
    }
}

/// Intermediate rows `rows` of an MLP: gate/up rows, down columns.
/// Rounded to bf16, as `ExpertWeights` hold them.
pub fn slice_mlp(w: &ExpertWeights, start: usize, len: usize) -> ExpertWeights {
    let h = w.hidden;
    let mut down = Vec::with_capacity(h * len);
    for r in 0..h {
        for c in start..start + len {
            down.push(w.down[r * w.intermediate + c]);
        }
    }
    let round = |v: &[f32]| v.iter().map(|&x| round_bf16(x)).collect();
    ExpertWeights {
        hidden: h,
        intermediate: len,
        gate: round(&w.gate[start * h..(start + len) * h]),
        up: round(&w.up[start * h..(start + len) * h]),
        down: round(&down),
    }
}

/// The layer served straight from the arrays, as rank 0 of `tp`.
pub struct Direct {
    pub layer: Layer,
    pub cfg: MoeConfig,
}

impl Direct {
    pub fn new(layer: Layer, tp: usize) -> Direct {
        let cfg = layer.cfg.clone().with_tensor_parallel(tp).unwrap();
        Direct { layer, cfg }
    }
}

impl WeightSource for Direct {
    fn config(&self) -> &MoeConfig {
        &self.cfg
    }
    fn router_gate(&self) -> anyhow::Result<Vec<f32>> {
        Ok(self.layer.router.clone())
    }
    fn router_bias(&self) -> anyhow::Result<Option<Vec<f32>>> {
        Ok(self.layer.bias.clone())
    }
    fn logit_offset(&self) -> anyhow::Result<Vec<f32>> {
        Ok(vec![0.0; self.cfg.n_routed_experts])
    }
    fn expert(&self, e: usize) -> anyhow::Result<ExpertWeights> {
        Ok(slice_mlp(
            &self.layer.experts[e],
            0,
            self.cfg.moe_intermediate_size,
        ))
    }
    fn shared_slot(&self, j: usize) -> anyhow::Result<ExpertWeights> {
        let per = self.cfg.shared_intermediate_size / self.cfg.n_shared_experts;
        Ok(slice_mlp(self.layer.shared.as_ref().unwrap(), j * per, per))
    }
    fn shared_gate(&self) -> anyhow::Result<Option<Vec<f32>>> {
        Ok(self.layer.shared_gate.clone())
    }
    fn describe(&self) -> String {
        "direct arrays".into()
    }
}

/// A tensor to write.
#[derive(Clone, Debug)]
pub struct T {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("test encoder has no {other}"),
    }
}

pub fn t(values: &[f32], shape: &[usize], dtype: Dtype) -> T {
    T {
        dtype,
        shape: shape.to_vec(),
        data: encode(values, dtype),
    }
}

/// How a family names and stores the layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Naming {
    /// DeepSeek-V2/V3, Kimi-K2, GLM-4.5: `mlp.experts.E.*_proj`, `mlp.shared_experts.*`.
    DeepSeek,
    /// Qwen3-MoE / Qwen3-Next: `mlp.experts.E.*_proj`, `mlp.shared_expert.*`,
    /// `mlp.shared_expert_gate.weight`.
    Qwen,
    /// `block_sparse_moe.experts.E.w1/w3/w2`.
    Mixtral,
    /// `mlp.experts.gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I].
    Fused,
    /// `mlp.experts.gate_up_proj` [E, H, 2I] and `down_proj` [E, I, H].
    FusedTransposed,
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// The layer's tensors in a family's naming under `prefix` (e.g. `model.layers.3.`).
pub fn layer_tensors(
    layer: &Layer,
    prefix: &str,
    naming: Naming,
    dtype: Dtype,
) -> BTreeMap<String, T> {
    let cfg = &layer.cfg;
    let (e, h, i) = (
        cfg.n_routed_experts,
        cfg.hidden_size,
        cfg.moe_intermediate_size,
    );
    let moe = match naming {
        Naming::Mixtral => format!("{prefix}block_sparse_moe."),
        _ => format!("{prefix}mlp."),
    };
    let mut out = BTreeMap::new();
    out.insert(
        format!("{moe}gate.weight"),
        t(&layer.router, &[e, h], dtype),
    );
    if let Some(b) = &layer.bias {
        out.insert(
            format!("{moe}gate.e_score_correction_bias"),
            t(b, &[e], Dtype::F32),
        );
    }
    match naming {
        Naming::DeepSeek | Naming::Qwen | Naming::Mixtral => {
            let names = if naming == Naming::Mixtral {
                ["w1", "w3", "w2"]
            } else {
                ["gate_proj", "up_proj", "down_proj"]
            };
            for (x, w) in layer.experts.iter().enumerate() {
                let p = format!("{moe}experts.{x}.");
                out.insert(
                    format!("{p}{}.weight", names[0]),
                    t(&w.gate, &[i, h], dtype),
                );
                out.insert(format!("{p}{}.weight", names[1]), t(&w.up, &[i, h], dtype));
                out.insert(
                    format!("{p}{}.weight", names[2]),
                    t(&w.down, &[h, i], dtype),
                );
            }
        }
        Naming::Fused => {
            let gate_up: Vec<f32> = layer
                .experts
                .iter()
                .flat_map(|w| w.gate.iter().chain(&w.up).copied())
                .collect();
            let down: Vec<f32> = layer.experts.iter().flat_map(|w| w.down.clone()).collect();
            out.insert(
                format!("{moe}experts.gate_up_proj"),
                t(&gate_up, &[e, 2 * i, h], dtype),
            );
            out.insert(
                format!("{moe}experts.down_proj"),
                t(&down, &[e, h, i], dtype),
            );
        }
        Naming::FusedTransposed => {
            let mut gate_up = Vec::new();
            let mut down = Vec::new();
            for w in &layer.experts {
                // [H, 2I]: row h is gate[:, h] then up[:, h].
                let (gt, ut) = (transpose(&w.gate, i, h), transpose(&w.up, i, h));
                for r in 0..h {
                    gate_up.extend_from_slice(&gt[r * i..(r + 1) * i]);
                    gate_up.extend_from_slice(&ut[r * i..(r + 1) * i]);
                }
                down.extend(transpose(&w.down, h, i));
            }
            out.insert(
                format!("{moe}experts.gate_up_proj"),
                t(&gate_up, &[e, h, 2 * i], dtype),
            );
            out.insert(
                format!("{moe}experts.down_proj"),
                t(&down, &[e, i, h], dtype),
            );
        }
    }
    if let Some(s) = &layer.shared {
        let p = match naming {
            Naming::Qwen => format!("{moe}shared_expert."),
            _ => format!("{moe}shared_experts."),
        };
        let si = s.intermediate;
        out.insert(format!("{p}gate_proj.weight"), t(&s.gate, &[si, h], dtype));
        out.insert(format!("{p}up_proj.weight"), t(&s.up, &[si, h], dtype));
        out.insert(format!("{p}down_proj.weight"), t(&s.down, &[h, si], dtype));
    }
    if let Some(g) = &layer.shared_gate {
        out.insert(
            format!("{moe}shared_expert_gate.weight"),
            t(g, &[1, h], dtype),
        );
    }
    // Attention and norms the loader must leave alone.
    out.insert(
        format!("{prefix}input_layernorm.weight"),
        t(&vec![1.0; h], &[h], dtype),
    );
    out.insert(
        format!("{prefix}self_attn.o_proj.weight"),
        t(&vec![0.5; h * h], &[h, h], dtype),
    );
    out
}

/// A dense layer's MLP tensors.
pub fn dense_tensors(prefix: &str, h: usize, i: usize) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for (name, shape) in [
        ("gate_proj", [i, h]),
        ("up_proj", [i, h]),
        ("down_proj", [h, i]),
    ] {
        out.insert(
            format!("{prefix}mlp.{name}.weight"),
            t(&vec![0.25; i * h], &shape, Dtype::BF16),
        );
    }
    out
}

pub fn serialize(tensors: &BTreeMap<String, T>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Writes config.json and the tensors: `model.safetensors` when `shards` is 1, else that many
/// shard files (round-robin) with `model.safetensors.index.json`.
pub fn write_checkpoint(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &BTreeMap<String, T>,
    shards: usize,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    if shards == 1 {
        std::fs::write(dir.join("model.safetensors"), serialize(tensors)).unwrap();
        return;
    }
    let mut parts: Vec<BTreeMap<String, T>> = vec![BTreeMap::new(); shards];
    let mut weight_map = serde_json::Map::new();
    for (k, (name, tensor)) in tensors.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k % shards + 1, shards);
        weight_map.insert(name.clone(), file.into());
        parts[k % shards].insert(name.clone(), tensor.clone());
    }
    for (k, part) in parts.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
        std::fs::write(dir.join(file), serialize(part)).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// Random captured hidden states [T × H] written as BF16 `hidden_states`.
pub fn write_hidden(path: &Path, tokens: usize, hidden: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let values = random(&mut rng, tokens * hidden, 2.0);
    let mut map = BTreeMap::new();
    map.insert(
        "hidden_states".to_string(),
        t(&values, &[tokens, hidden], Dtype::BF16),
    );
    std::fs::write(path, serialize(&map)).unwrap();
    values
}

/// One engine step (paths A and B of `run`) on the CPU backend over `source`.
pub fn one_step(source: Box<dyn WeightSource>, hidden: &[f32]) -> StepRecord {
    let backend = CpuBackend::new(source).unwrap();
    let paths = moescope::engine::paths::PathSpec::default_pair();
    let mut engine = Engine::new(
        Box::new(backend),
        paths,
        0,
        7,
        Some(Arc::new(hidden.to_vec())),
    );
    let mut record = engine.step().unwrap();
    // Times differ from run to run; everything else must match.
    record.wall_us = 0.0;
    record.t_ms = 0.0;
    for p in &mut record.paths {
        p.total_us = 0.0;
        p.clean_us = None;
        p.timings.iter_mut().for_each(|k| k.us = 0.0);
    }
    record
}
