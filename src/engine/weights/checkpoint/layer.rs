//! One MoE layer of a checkpoint: which decoder layers are MoE, each family's tensor names,
//! shape checks against config.json, and the `WeightSource` that reads the layer (rank 0's
//! shard under tensor parallelism).
//!
//! Longer than most files: every family's naming and layout rules are in one table-like place,
//! so adding a family touches this file only.
//!
//! Expert layouts understood (prefix `…layers.{N}.` then `mlp.` or `block_sparse_moe.`):
//! - per expert, DeepSeek/Kimi/GLM/Qwen: `experts.E.{gate,up,down}_proj.weight`;
//! - per expert, Mixtral: `experts.E.w1` (gate), `w3` (up), `w2` (down);
//! - fused 3-D, as transformers' `*Experts` modules hold them: `experts.gate_up_proj`
//!   [E, 2I, H] (rows 0..I are gate, I..2I up: `linear(x, gate_up_proj[e]).chunk(2, -1)`) and
//!   `experts.down_proj` [E, H, I]; also the transposed form `gate_up_proj` [E, H, 2I] (columns
//!   0..I gate, I..2I up, applied as `x @ gate_up_proj[e]`) with `down_proj` [E, I, H]. The
//!   pair of shapes decides which, so H = 2I is not ambiguous.

use super::files::Files;
use crate::engine::config::MoeConfig;
use crate::engine::weights::fp8::{self, Fp8Mlp, StoredMatrix};
use crate::engine::weights::{round_bf16, ExpertWeights, WeightSource};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::ops::Range;

/// The language model's part of a config.json: multimodal wrappers keep it under
/// `text_config` (the same rule `MoeConfig::from_hf_json` follows).
pub fn text_config(v: &Value) -> &Value {
    match v.get("text_config").filter(|t| t.is_object()) {
        Some(inner) if v.get("hidden_size").is_none() => inner,
        _ => v,
    }
}

fn uint(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| anyhow!("config.json field `{key}` must be a non-negative integer")),
    }
}

/// Which decoder layers hold an MoE block, from config.json's layout fields.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    pub num_layers: usize,
    /// DeepSeek/Kimi/GLM: the first k layers are dense.
    pub first_k_dense_replace: usize,
    /// DeepSeek: every n-th layer (from first_k_dense_replace on) is MoE.
    pub moe_layer_freq: usize,
    /// Qwen: layer l is MoE when (l + 1) is a multiple of this.
    pub decoder_sparse_step: usize,
    /// Qwen: layers forced dense.
    pub mlp_only_layers: Vec<usize>,
}

impl LayerPlan {
    /// Reads the layout fields; `num_hidden_layers` missing falls back to the layers the
    /// weights name.
    pub fn from_config(json: &Value, files: &Files) -> Result<LayerPlan> {
        let v = text_config(json);
        let num_layers = match uint(v, "num_hidden_layers")? {
            Some(n) => n,
            None => files
                .names
                .keys()
                .filter_map(|n| layer_of(n))
                .max()
                .map(|l| l + 1)
                .ok_or_else(|| {
                    anyhow!("config.json has no `num_hidden_layers` and no tensor names a layer")
                })?,
        };
        let moe_layer_freq = uint(v, "moe_layer_freq")?.unwrap_or(1);
        let decoder_sparse_step = uint(v, "decoder_sparse_step")?.unwrap_or(1);
        ensure!(
            moe_layer_freq > 0,
            "config.json field `moe_layer_freq` must be at least 1"
        );
        ensure!(
            decoder_sparse_step > 0,
            "config.json field `decoder_sparse_step` must be at least 1"
        );
        let mlp_only_layers = match v.get("mlp_only_layers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|x| x.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    anyhow!("config.json field `mlp_only_layers` must be a list of layer numbers")
                })?,
            Some(_) => bail!("config.json field `mlp_only_layers` must be a list of layer numbers"),
        };
        Ok(LayerPlan {
            num_layers,
            first_k_dense_replace: uint(v, "first_k_dense_replace")?.unwrap_or(0),
            moe_layer_freq,
            decoder_sparse_step,
            mlp_only_layers,
        })
    }

    pub fn is_moe(&self, layer: usize) -> bool {
        layer < self.num_layers
            && layer >= self.first_k_dense_replace
            && layer.is_multiple_of(self.moe_layer_freq)
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
            && !self.mlp_only_layers.contains(&layer)
    }

    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.num_layers).filter(|&l| self.is_moe(l)).collect()
    }

    /// The fields that make some layers dense, for messages.
    pub fn rule(&self) -> String {
        let mut parts = Vec::new();
        if self.first_k_dense_replace > 0 {
            parts.push(format!(
                "first_k_dense_replace {}",
                self.first_k_dense_replace
            ));
        }
        if self.moe_layer_freq > 1 {
            parts.push(format!("moe_layer_freq {}", self.moe_layer_freq));
        }
        if self.decoder_sparse_step > 1 {
            parts.push(format!("decoder_sparse_step {}", self.decoder_sparse_step));
        }
        if !self.mlp_only_layers.is_empty() {
            parts.push(format!("mlp_only_layers {:?}", self.mlp_only_layers));
        }
        if parts.is_empty() {
            "every layer is MoE".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// The layer `--layer` asks for, or the first MoE layer.
    pub fn pick(&self, layer: Option<usize>) -> Result<usize> {
        let moe = self.moe_layers();
        match layer {
            Some(l) if l >= self.num_layers => bail!(
                "--layer {l} is out of range: the model has {} layers (0..={}); MoE layers: {}",
                self.num_layers,
                self.num_layers.saturating_sub(1),
                ranges(&moe)
            ),
            Some(l) if !self.is_moe(l) => bail!(
                "layer {l} is a dense layer ({}); MoE layers: {}",
                self.rule(),
                ranges(&moe)
            ),
            Some(l) => Ok(l),
            None => moe.first().copied().ok_or_else(|| {
                anyhow!(
                    "none of the {} layers is MoE ({})",
                    self.num_layers,
                    self.rule()
                )
            }),
        }
    }
}

/// "3-60" style list of layer numbers.
pub fn ranges(layers: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            layers[i].to_string()
        } else {
            format!("{}-{}", layers[i], layers[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out.join(", ")
    }
}

/// The layer number of a `…layers.{N}.…` tensor name, and the length of its prefix up to
/// and including `layers.{N}.`.
pub fn split_layer(name: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(at) = name[from..].find("layers.").map(|i| from + i) {
        let boundary = at == 0 || name.as_bytes()[at - 1] == b'.';
        let tail = &name[at + "layers.".len()..];
        let digits = &tail[..tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len())];
        if boundary && !digits.is_empty() && tail[digits.len()..].starts_with('.') {
            let end = at + "layers.".len() + digits.len() + 1;
            return digits.parse().ok().map(|l| (l, end));
        }
        from = at + "layers.".len();
    }
    None
}

/// The layer number of a `…layers.{N}.…` tensor name.
pub fn layer_of(name: &str) -> Option<usize> {
    split_layer(name).map(|(l, _)| l)
}

/// The prefix of decoder layer `layer`'s tensors (`model.layers.3.`,
/// `language_model.model.layers.3.`, ...). Multi-token-prediction stacks (`mtp.layers.0.`)
/// number their layers from 0 too: any other prefix wins over them, then the shortest.
pub fn layer_prefix(files: &Files, layer: usize) -> Option<String> {
    let is_mtp = |p: &str| p.split('.').any(|seg| seg.starts_with("mtp"));
    files
        .names
        .keys()
        .filter_map(|n| match split_layer(n) {
            Some((l, end)) if l == layer => Some(&n[..end]),
            _ => None,
        })
        .min_by_key(|p| (is_mtp(p), p.len(), *p))
        .map(str::to_string)
}

/// How the routed experts are stored.
#[derive(Clone, Debug, PartialEq)]
enum Experts {
    /// One tensor per expert and projection; the gate, up and down names.
    PerExpert([&'static str; 3]),
    /// 3-D `gate_up_proj` and `down_proj`; `transposed` is the [E, H, 2I] form.
    Fused {
        gate_up: String,
        down: String,
        transposed: bool,
    },
}

/// The tensor names of one MoE layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNames {
    /// The MoE block's prefix, e.g. `model.layers.3.mlp.`.
    pub moe: String,
    pub router: String,
    pub bias: String,
    experts: Experts,
    /// Shared MLP prefix (`…shared_experts.` or `…shared_expert.`), where the weights have one.
    shared: Option<String>,
    pub shared_gate: String,
}

impl LayerNames {
    /// Finds the layer's names in the checkpoint, under whatever prefix the model uses
    /// (`model.`, `language_model.model.`, ...).
    pub fn resolve(files: &Files, layer: usize) -> Result<LayerNames> {
        let prefix = layer_prefix(files, layer).unwrap_or_else(|| format!("model.layers.{layer}."));
        let router = [
            format!("{prefix}mlp.gate.weight"),
            format!("{prefix}block_sparse_moe.gate.weight"),
        ]
        .into_iter()
        .find(|n| files.contains(n))
        .ok_or_else(|| {
            anyhow!(
                "tensor `{prefix}mlp.gate.weight` (the router gate [E, H]) is missing from {} (also looked for `{prefix}block_sparse_moe.gate.weight`)",
                files.dir.display()
            )
        })?;
        let moe = router[..router.len() - "gate.weight".len()].to_string();
        let experts = if files.contains(&format!("{moe}experts.0.gate_proj.weight")) {
            Experts::PerExpert(["gate_proj", "up_proj", "down_proj"])
        } else if files.contains(&format!("{moe}experts.0.w1.weight")) {
            Experts::PerExpert(["w1", "w3", "w2"])
        } else if files.contains(&format!("{moe}experts.gate_up_proj")) {
            Experts::Fused {
                gate_up: format!("{moe}experts.gate_up_proj"),
                down: format!("{moe}experts.down_proj"),
                transposed: false,
            }
        } else if files.contains(&format!("{moe}experts.0.gate_proj.weight_packed")) {
            bail!(
                "the experts of layer {layer} are packed integer weights (`{moe}experts.0.gate_proj.weight_packed`, compressed-tensors); supported: BF16, F16, F32 and F8_E4M3 with block scales"
            );
        } else {
            bail!(
                "the experts of layer {layer} are missing from {}: expected `{moe}experts.0.gate_proj.weight` (DeepSeek/Qwen naming), `{moe}experts.0.w1.weight` (Mixtral) or `{moe}experts.gate_up_proj` (fused 3-D)",
                files.dir.display()
            );
        };
        let shared = ["shared_experts.", "shared_expert."]
            .iter()
            .map(|s| format!("{moe}{s}"))
            .find(|p| files.contains(&format!("{p}gate_proj.weight")));
        Ok(LayerNames {
            bias: format!("{moe}gate.e_score_correction_bias"),
            shared_gate: format!("{moe}shared_expert_gate.weight"),
            router,
            experts,
            shared,
            moe,
        })
    }

    /// How the experts and shared expert are stored, for `inspect`.
    pub fn layout(&self) -> String {
        let experts = match &self.experts {
            Experts::PerExpert(n) => format!("experts.E.{{{},{},{}}}", n[0], n[1], n[2]),
            Experts::Fused {
                transposed: false, ..
            } => "fused experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]".to_string(),
            Experts::Fused {
                transposed: true, ..
            } => "fused experts.gate_up_proj [E, H, 2I], down_proj [E, I, H]".to_string(),
        };
        match &self.shared {
            Some(p) => format!("{experts}; shared MLP {}", &p[self.moe.len()..]),
            None => experts,
        }
    }

    fn expert_name(&self, e: usize, which: usize) -> String {
        match &self.experts {
            Experts::PerExpert(n) => format!("{}experts.{e}.{}.weight", self.moe, n[which]),
            Experts::Fused { gate_up, down, .. } => if which == 2 { down } else { gate_up }.clone(),
        }
    }

    fn shared_name(&self, which: usize) -> Option<String> {
        let proj = ["gate_proj", "up_proj", "down_proj"][which];
        self.shared.as_ref().map(|p| format!("{p}{proj}.weight"))
    }

    /// Every tensor the layer may read, block scales included.
    pub fn tensor_names(&self, cfg: &MoeConfig) -> Vec<String> {
        let mut names = vec![
            self.router.clone(),
            self.bias.clone(),
            self.shared_gate.clone(),
        ];
        for e in 0..cfg.n_routed_experts {
            for which in 0..3 {
                names.push(self.expert_name(e, which));
            }
        }
        names.extend((0..3).filter_map(|w| self.shared_name(w)));
        names.sort();
        names.dedup();
        let scales: Vec<String> = names.iter().map(|n| format!("{n}_scale_inv")).collect();
        names.extend(scales);
        names
    }

    /// Checks every tensor of the layer against the (whole-model, not TP-divided) config, and
    /// settles the fused layout's orientation.
    pub fn validate(&mut self, files: &Files, cfg: &MoeConfig) -> Result<()> {
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        files.check(&self.router, &[e, h], "router gate [E, H]")?;
        if cfg.has_bias {
            ensure!(
                files.contains(&self.bias),
                "tensor `{}` (the router's correction bias [E]) is missing from {}; config.json routes with one (topk_method noaux_tc)",
                self.bias,
                files.dir.display()
            );
            files.check(&self.bias, &[e], "correction bias [E]")?;
        } else if files.contains(&self.bias) {
            bail!(
                "the weights hold `{}`, but config.json routes without a correction bias (topk_method is not noaux_tc): config and weights disagree",
                self.bias
            );
        }
        match &mut self.experts {
            Experts::PerExpert(_) => {
                for x in 0..e {
                    files.check(&self.expert_name(x, 0), &[i, h], "expert gate [I, H]")?;
                    files.check(&self.expert_name(x, 1), &[i, h], "expert up [I, H]")?;
                    files.check(&self.expert_name(x, 2), &[h, i], "expert down [H, I]")?;
                }
                let extra = self.expert_name(e, 0);
                ensure!(
                    !files.contains(&extra),
                    "the weights hold `{extra}`, but config.json has n_routed_experts {e}: config and weights disagree"
                );
            }
            Experts::Fused {
                gate_up,
                down,
                transposed,
            } => {
                let gu_shape = files.meta(gate_up)?.1.shape.clone();
                let down_shape = files.meta(down)?.1.shape.clone();
                let (std_gu, std_down) = ([e, 2 * i, h], [e, h, i]);
                let (tr_gu, tr_down) = ([e, h, 2 * i], [e, i, h]);
                *transposed = if gu_shape == std_gu && down_shape == std_down {
                    false
                } else if gu_shape == tr_gu && down_shape == tr_down {
                    true
                } else {
                    bail!(
                        "fused experts `{gate_up}` {gu_shape:?} and `{down}` {down_shape:?} match neither {std_gu:?} with {std_down:?} nor {tr_gu:?} with {tr_down:?} (E {e}, H {h}, I {i} from config.json): config and weights disagree"
                    );
                };
                let gu_want = if *transposed { tr_gu } else { std_gu };
                let down_want = if *transposed { tr_down } else { std_down };
                files.check(gate_up, &gu_want, "fused expert gate+up")?;
                files.check(down, &down_want, "fused expert down")?;
            }
        }
        let s = cfg.shared_intermediate_size;
        match (&self.shared, cfg.n_shared_experts) {
            (None, 0) => {}
            (Some(prefix), 0) => bail!(
                "the weights hold a shared expert (`{prefix}gate_proj.weight`), but config.json has none: config and weights disagree"
            ),
            (None, n) => bail!(
                "tensor `{}shared_experts.gate_proj.weight` (or `{}shared_expert.gate_proj.weight`) is missing from {}; config.json has {n} shared expert(s)",
                self.moe,
                self.moe,
                files.dir.display()
            ),
            (Some(_), _) => {
                let name = |w| self.shared_name(w).unwrap_or_default();
                files.check(&name(0), &[s, h], "shared gate [S·I, H]")?;
                files.check(&name(1), &[s, h], "shared up [S·I, H]")?;
                files.check(&name(2), &[h, s], "shared down [H, S·I]")?;
            }
        }
        let has_gate = files.contains(&self.shared_gate);
        if cfg.shared_expert_gate {
            ensure!(
                has_gate,
                "tensor `{}` (the shared expert's gate [1, H]) is missing from {}",
                self.shared_gate,
                files.dir.display()
            );
            let shape = files.meta(&self.shared_gate)?.1.shape.clone();
            let want = if shape.len() == 1 {
                vec![h]
            } else {
                vec![1, h]
            };
            files.check(&self.shared_gate, &want, "shared expert gate [1, H]")?;
        } else if has_gate {
            bail!(
                "the weights hold `{}`, but config.json gives the shared expert no gate: config and weights disagree",
                self.shared_gate
            );
        }
        Ok(())
    }
}

/// Whose MLP to read.
#[derive(Clone, Copy)]
enum Mlp {
    Routed(usize),
    Shared,
}

/// [rows × cols] → [cols × rows].
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// One MoE layer of a checkpoint as rank 0 of `tp` holds it.
pub struct CheckpointLayer {
    pub files: Files,
    pub names: LayerNames,
    /// The layer as rank 0 sees it (intermediate sizes divided by tp).
    pub cfg: MoeConfig,
    /// The whole layer, as the tensors hold it.
    pub full: MoeConfig,
    pub layer: usize,
    pub tp: usize,
}

impl CheckpointLayer {
    /// Reads intermediate rows `rows` of an MLP (gate and up rows, down columns).
    fn mlp(&self, which: Mlp, rows: Range<usize>) -> Result<ExpertWeights> {
        let h = self.cfg.hidden_size;
        let len = rows.end - rows.start;
        let f = &self.files;
        let (gate, up, down) = match which {
            Mlp::Shared => {
                let name = |w: usize| {
                    self.names
                        .shared_name(w)
                        .ok_or_else(|| anyhow!("layer {} has no shared expert", self.layer))
                };
                (
                    f.read_block(&name(0)?, None, rows.clone(), 0..h)?,
                    f.read_block(&name(1)?, None, rows.clone(), 0..h)?,
                    f.read_block(&name(2)?, None, 0..h, rows)?,
                )
            }
            Mlp::Routed(e) => match &self.names.experts {
                Experts::PerExpert(_) => (
                    f.read_block(&self.names.expert_name(e, 0), None, rows.clone(), 0..h)?,
                    f.read_block(&self.names.expert_name(e, 1), None, rows.clone(), 0..h)?,
                    f.read_block(&self.names.expert_name(e, 2), None, 0..h, rows)?,
                ),
                Experts::Fused {
                    gate_up,
                    down,
                    transposed,
                } => {
                    let i = self.full.moe_intermediate_size;
                    let up_rows = i + rows.start..i + rows.end;
                    if *transposed {
                        (
                            transpose(&f.read_block(gate_up, Some(e), 0..h, rows.clone())?, h, len),
                            transpose(&f.read_block(gate_up, Some(e), 0..h, up_rows)?, h, len),
                            transpose(&f.read_block(down, Some(e), rows, 0..h)?, len, h),
                        )
                    } else {
                        (
                            f.read_block(gate_up, Some(e), rows.clone(), 0..h)?,
                            f.read_block(gate_up, Some(e), up_rows, 0..h)?,
                            f.read_block(down, Some(e), 0..h, rows)?,
                        )
                    }
                }
            },
        };
        // Backends compute the expert GEMMs in bf16 (see `ExpertWeights`).
        let round = |v: Vec<f32>| v.into_iter().map(round_bf16).collect();
        Ok(ExpertWeights {
            hidden: h,
            intermediate: len,
            gate: round(gate),
            up: round(up),
            down: round(down),
        })
    }
}

impl CheckpointLayer {
    /// `mlp` as stored, where the checkpoint holds it in FP8 (None where it does not).
    fn mlp_fp8(&self, which: Mlp, rows: Range<usize>) -> Result<Option<Fp8Mlp>> {
        let h = self.cfg.hidden_size;
        let i = self.full.moe_intermediate_size;
        let up_rows = i + rows.start..i + rows.end;
        let at = |name: String, slab, rows, cols| StoredMatrix {
            name,
            slab,
            rows,
            cols,
        };
        let parts: [StoredMatrix; 3] = match which {
            Mlp::Shared => {
                let name = |w: usize| {
                    self.names
                        .shared_name(w)
                        .ok_or_else(|| anyhow!("layer {} has no shared expert", self.layer))
                };
                [
                    at(name(0)?, None, rows.clone(), 0..h),
                    at(name(1)?, None, rows.clone(), 0..h),
                    at(name(2)?, None, 0..h, rows.clone()),
                ]
            }
            Mlp::Routed(e) => match &self.names.experts {
                Experts::PerExpert(_) => [0, 1, 2].map(|w| {
                    let (r, c) = if w == 2 {
                        (0..h, rows.clone())
                    } else {
                        (rows.clone(), 0..h)
                    };
                    at(self.names.expert_name(e, w), None, r, c)
                }),
                Experts::Fused {
                    gate_up,
                    down,
                    transposed: false,
                } => [
                    at(gate_up.clone(), Some(e), rows.clone(), 0..h),
                    at(gate_up.clone(), Some(e), up_rows, 0..h),
                    at(down.clone(), Some(e), 0..h, rows.clone()),
                ],
                Experts::Fused { gate_up, .. } => {
                    if self.files.meta(gate_up)?.1.dtype == safetensors::Dtype::F8_E4M3 {
                        bail!("FP8 experts in the transposed fused layout ([E, H, 2I]) are not supported by --experts fp8; use --experts bf16");
                    }
                    return Ok(None);
                }
            },
        };
        let [gate, up, down] = parts.map(|m| fp8::read_stored(&self.files, &m));
        match (gate?, up?, down?) {
            (Some(gate), Some(up), Some(down)) => Ok(Some(Fp8Mlp {
                hidden: h,
                intermediate: rows.len(),
                gate,
                up,
                down,
            })),
            (None, None, None) => Ok(None),
            _ => bail!("layer {}: some of an MLP's projections are FP8 and some are not; --experts fp8 needs all three in FP8 or none", self.layer),
        }
    }
}

impl WeightSource for CheckpointLayer {
    fn config(&self) -> &MoeConfig {
        &self.cfg
    }
    fn router_gate(&self) -> Result<Vec<f32>> {
        self.files.read_all(&self.names.router)
    }
    fn router_bias(&self) -> Result<Option<Vec<f32>>> {
        if !self.cfg.has_bias {
            return Ok(None);
        }
        self.files.read_all(&self.names.bias).map(Some)
    }
    fn logit_offset(&self) -> Result<Vec<f32>> {
        Ok(vec![0.0; self.cfg.n_routed_experts])
    }
    fn expert(&self, e: usize) -> Result<ExpertWeights> {
        ensure!(
            e < self.cfg.n_routed_experts,
            "expert {e} out of range (n_routed_experts {})",
            self.cfg.n_routed_experts
        );
        // Rank 0's shard: the first I/tp intermediate rows.
        self.mlp(Mlp::Routed(e), 0..self.cfg.moe_intermediate_size)
            .with_context(|| format!("reading expert {e} of layer {}", self.layer))
    }
    fn shared_slot(&self, j: usize) -> Result<ExpertWeights> {
        ensure!(
            j < self.cfg.n_shared_experts,
            "shared slot {j} out of range (n_shared_experts {})",
            self.cfg.n_shared_experts
        );
        // Rank 0's shard is the first S·I/tp rows; slot j is its j-th equal slice.
        let per = self.cfg.shared_slot_intermediate();
        self.mlp(Mlp::Shared, j * per..(j + 1) * per)
            .with_context(|| format!("reading shared slot {j} of layer {}", self.layer))
    }
    fn expert_fp8(&self, e: usize) -> Result<Option<Fp8Mlp>> {
        ensure!(
            e < self.cfg.n_routed_experts,
            "expert {e} out of range (n_routed_experts {})",
            self.cfg.n_routed_experts
        );
        self.mlp_fp8(Mlp::Routed(e), 0..self.cfg.moe_intermediate_size)
            .with_context(|| format!("reading FP8 expert {e} of layer {}", self.layer))
    }
    fn shared_slot_fp8(&self, j: usize) -> Result<Option<Fp8Mlp>> {
        ensure!(
            j < self.cfg.n_shared_experts,
            "shared slot {j} out of range (n_shared_experts {})",
            self.cfg.n_shared_experts
        );
        let per = self.cfg.shared_slot_intermediate();
        self.mlp_fp8(Mlp::Shared, j * per..(j + 1) * per)
            .with_context(|| format!("reading FP8 shared slot {j} of layer {}", self.layer))
    }
    fn shared_gate(&self) -> Result<Option<Vec<f32>>> {
        if !self.cfg.shared_expert_gate {
            return Ok(None);
        }
        self.files.read_all(&self.names.shared_gate).map(Some)
    }
    fn describe(&self) -> String {
        let mut d = format!(
            "checkpoint {}, layer {}",
            self.files.dir.display(),
            self.layer
        );
        if self.tp > 1 {
            d.push_str(&format!(", tp rank 0 of {}", self.tp));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_numbers_from_names() {
        assert_eq!(layer_of("model.layers.12.mlp.gate.weight"), Some(12));
        assert_eq!(layer_of("layers.3.x"), Some(3));
        assert_eq!(layer_of("model.sublayers.3.x"), None);
        assert_eq!(layer_of("model.embed_tokens.weight"), None);
        assert_eq!(layer_of("model.layers.x.layers.4.y"), Some(4));
        assert_eq!(split_layer("a.layers.17.mlp"), Some((17, 12)));
        assert_eq!(layer_of("layers.5"), None);
    }

    #[test]
    fn moe_layer_rules_of_each_family() {
        let plan = |v: Value| LayerPlan {
            num_layers: 8,
            first_k_dense_replace: uint(&v, "first_k_dense_replace").unwrap().unwrap_or(0),
            moe_layer_freq: uint(&v, "moe_layer_freq").unwrap().unwrap_or(1),
            decoder_sparse_step: uint(&v, "decoder_sparse_step").unwrap().unwrap_or(1),
            mlp_only_layers: v["mlp_only_layers"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_u64().unwrap() as usize).collect())
                .unwrap_or_default(),
        };
        let ds = plan(serde_json::json!({"first_k_dense_replace": 3, "moe_layer_freq": 2}));
        assert_eq!(ds.moe_layers(), vec![4, 6]);
        assert_eq!(ds.pick(None).unwrap(), 4);
        assert!(ds.pick(Some(5)).unwrap_err().to_string().contains("dense"));
        assert!(ds
            .pick(Some(8))
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        let qwen = plan(serde_json::json!({"decoder_sparse_step": 2, "mlp_only_layers": [3]}));
        assert_eq!(qwen.moe_layers(), vec![1, 5, 7]);
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
    }
}
