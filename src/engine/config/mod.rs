//! `MoeConfig`: everything the router and the layer need, the model presets, Hugging Face
//! `config.json` import, and validation with errors that name the field and the rule.
//!
//! The presets are in `presets.rs`, the Hugging Face import in `hf.rs`; this file holds the
//! type, what follows from it and the rules it must keep.

use serde::{Deserialize, Serialize};

/// How router logits become scores (the first step of the routing formula, see `routing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoringFunc {
    Sigmoid,
    Softmax,
}

impl ScoringFunc {
    pub fn name(self) -> &'static str {
        match self {
            ScoringFunc::Sigmoid => "sigmoid",
            ScoringFunc::Softmax => "softmax",
        }
    }
}

/// One MoE layer's shape and routing rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Preset or model name, for display.
    pub name: String,
    /// Routed experts E.
    pub n_routed_experts: usize,
    /// Shared experts S (0 for models without them). Fused, they become slots E..E+S-1.
    pub n_shared_experts: usize,
    /// Routed experts per token (top-k).
    pub num_experts_per_tok: usize,
    /// Contiguous expert groups (1 = ungrouped).
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    pub scoring_func: ScoringFunc,
    /// Whether the model has `e_score_correction_bias` (DeepSeek-V3 "noaux_tc").
    pub has_bias: bool,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
    pub hidden_size: usize,
    /// Intermediate size of one routed expert.
    pub moe_intermediate_size: usize,
    /// Intermediate size of all shared experts together (S × per-expert size for DeepSeek).
    pub shared_intermediate_size: usize,
    /// Qwen3-Next: the shared expert's output is scaled by sigmoid(shared_expert_gate · x).
    pub shared_expert_gate: bool,
}

/// A config that breaks a rule: names the field and the rule.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid MoE config: `{field}` {rule}")]
pub struct ConfigError {
    pub field: &'static str,
    pub rule: String,
}

fn bad(field: &'static str, rule: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        rule: rule.into(),
    }
}

mod hf;
mod presets;
#[cfg(test)]
mod tests;

pub use presets::PRESET_NAMES;

impl MoeConfig {
    /// Experts per group.
    pub fn experts_per_group(&self) -> usize {
        self.n_routed_experts / self.n_group.max(1)
    }

    /// Slots in the fused grouped computation: routed experts plus shared slots.
    pub fn total_slots(&self) -> usize {
        self.n_routed_experts + self.n_shared_experts
    }

    /// Intermediate size of one shared slot when the shared experts are fused as slots.
    pub fn shared_slot_intermediate(&self) -> usize {
        self.shared_intermediate_size / self.n_shared_experts.max(1)
    }

    /// Whether the shared experts can become slots of the grouped expert computation: each slot
    /// must have the routed experts' intermediate size.
    pub fn shared_fusable(&self) -> bool {
        self.n_shared_experts > 0
            && self.shared_intermediate_size == self.n_shared_experts * self.moe_intermediate_size
    }

    /// The layer as one tensor-parallel rank holds it: intermediate sizes divided by `tp`.
    pub fn with_tensor_parallel(mut self, tp: usize) -> Result<MoeConfig, ConfigError> {
        if tp == 0 {
            return Err(bad("tp", "must be at least 1"));
        }
        if !self.moe_intermediate_size.is_multiple_of(tp)
            || !self.shared_intermediate_size.is_multiple_of(tp)
        {
            return Err(bad(
                "tp",
                format!(
                    "must divide moe_intermediate_size ({}) and shared_intermediate_size ({})",
                    self.moe_intermediate_size, self.shared_intermediate_size
                ),
            ));
        }
        self.moe_intermediate_size /= tp;
        self.shared_intermediate_size /= tp;
        Ok(self)
    }

    /// Checks every rule the router and the layer rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.n_routed_experts == 0 {
            return Err(bad("n_routed_experts", "must be at least 1"));
        }
        if self.num_experts_per_tok == 0 {
            return Err(bad("num_experts_per_tok", "must be at least 1"));
        }
        if self.n_group == 0 {
            return Err(bad("n_group", "must be at least 1"));
        }
        if !self.n_routed_experts.is_multiple_of(self.n_group) {
            return Err(bad(
                "n_group",
                format!(
                    "({}) must divide n_routed_experts ({})",
                    self.n_group, self.n_routed_experts
                ),
            ));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return Err(bad(
                "topk_group",
                format!(
                    "({}) must be between 1 and n_group ({})",
                    self.topk_group, self.n_group
                ),
            ));
        }
        let in_kept = self.topk_group * self.experts_per_group();
        if self.num_experts_per_tok > in_kept {
            return Err(bad(
                "num_experts_per_tok",
                format!(
                    "({}) must not exceed the experts in the kept groups (topk_group {} × {} per group = {})",
                    self.num_experts_per_tok,
                    self.topk_group,
                    self.experts_per_group(),
                    in_kept
                ),
            ));
        }
        if self.has_bias && self.n_group > 1 && self.experts_per_group() < 2 {
            return Err(bad(
                "n_group",
                "with a correction bias each group needs at least 2 experts (group score = sum of top-2)",
            ));
        }
        if !(self.routed_scaling_factor.is_finite() && self.routed_scaling_factor > 0.0) {
            return Err(bad(
                "routed_scaling_factor",
                format!(
                    "({}) must be a positive finite number",
                    self.routed_scaling_factor
                ),
            ));
        }
        if self.hidden_size == 0 {
            return Err(bad("hidden_size", "must be at least 1"));
        }
        if self.moe_intermediate_size == 0 {
            return Err(bad("moe_intermediate_size", "must be at least 1"));
        }
        if self.n_shared_experts > 0 && self.shared_intermediate_size == 0 {
            return Err(bad(
                "shared_intermediate_size",
                "must be at least 1 when the model has shared experts",
            ));
        }
        if self.n_shared_experts == 0 && self.shared_expert_gate {
            return Err(bad(
                "shared_expert_gate",
                "needs at least one shared expert",
            ));
        }
        Ok(())
    }
}
