//! `MoeConfig`: everything the router and the layer need, the model presets, Hugging Face
//! `config.json` import, and validation with errors that name the field and the rule.

use serde::{Deserialize, Serialize};
use std::path::Path;

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

/// Names accepted by `--preset`.
pub const PRESET_NAMES: &[&str] = &[
    "deepseek-v3",
    "deepseek-v2",
    "deepseek-v2-lite",
    "kimi-k2",
    "glm-4.5",
    "qwen3-30b-a3b",
    "qwen3-next-80b-a3b",
    "mixtral-8x7b",
];

impl MoeConfig {
    /// The published numbers of each preset model's MoE layer.
    pub fn preset(name: &str) -> Result<MoeConfig, ConfigError> {
        #[allow(clippy::too_many_arguments)]
        fn mk(
            name: &str,
            e: usize,
            s: usize,
            k: usize,
            groups: (usize, usize),
            scoring: ScoringFunc,
            has_bias: bool,
            norm: bool,
            rsf: f64,
            hidden: usize,
            inter: usize,
            shared_inter: usize,
        ) -> MoeConfig {
            MoeConfig {
                name: name.to_string(),
                n_routed_experts: e,
                n_shared_experts: s,
                num_experts_per_tok: k,
                n_group: groups.0,
                topk_group: groups.1,
                scoring_func: scoring,
                has_bias,
                norm_topk_prob: norm,
                routed_scaling_factor: rsf,
                hidden_size: hidden,
                moe_intermediate_size: inter,
                shared_intermediate_size: shared_inter,
                shared_expert_gate: false,
            }
        }
        use ScoringFunc::*;
        let cfg = match name {
            "deepseek-v3" => mk(
                name,
                256,
                1,
                8,
                (8, 4),
                Sigmoid,
                true,
                true,
                2.5,
                7168,
                2048,
                2048,
            ),
            "deepseek-v2" => mk(
                name,
                160,
                2,
                6,
                (8, 3),
                Softmax,
                false,
                false,
                16.0,
                5120,
                1536,
                3072,
            ),
            "deepseek-v2-lite" => mk(
                name,
                64,
                2,
                6,
                (1, 1),
                Softmax,
                false,
                false,
                1.0,
                2048,
                1408,
                2816,
            ),
            "kimi-k2" => mk(
                name,
                384,
                1,
                8,
                (1, 1),
                Sigmoid,
                true,
                true,
                2.827,
                7168,
                2048,
                2048,
            ),
            "glm-4.5" => mk(
                name,
                160,
                1,
                8,
                (1, 1),
                Sigmoid,
                true,
                true,
                2.5,
                5120,
                1536,
                1536,
            ),
            "qwen3-30b-a3b" => mk(
                name,
                128,
                0,
                8,
                (1, 1),
                Softmax,
                false,
                true,
                1.0,
                2048,
                768,
                0,
            ),
            "qwen3-next-80b-a3b" => MoeConfig {
                shared_expert_gate: true,
                ..mk(
                    name,
                    512,
                    1,
                    10,
                    (1, 1),
                    Softmax,
                    false,
                    true,
                    1.0,
                    2048,
                    512,
                    512,
                )
            },
            "mixtral-8x7b" => mk(
                name,
                8,
                0,
                2,
                (1, 1),
                Softmax,
                false,
                true,
                1.0,
                4096,
                14336,
                0,
            ),
            other => {
                return Err(bad(
                    "preset",
                    format!(
                        "`{other}` is unknown; expected one of {}",
                        PRESET_NAMES.join(", ")
                    ),
                ))
            }
        };
        Ok(cfg)
    }

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

    /// Reads a Hugging Face `config.json` of any preset family.
    pub fn from_hf_file(path: &Path) -> anyhow::Result<MoeConfig> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("config file {} is not valid JSON", path.display()))?;
        let cfg = Self::from_hf_json(&value)
            .with_context(|| format!("config file {}", path.display()))?;
        Ok(cfg)
    }

    /// Maps a Hugging Face config (DeepSeek-V2/V3, Kimi-K2, GLM-4.5, Qwen3-MoE, Qwen3-Next,
    /// Mixtral field names) onto `MoeConfig`, then validates it.
    pub fn from_hf_json(v: &serde_json::Value) -> Result<MoeConfig, ConfigError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("config", "must be a JSON object"))?;
        // Multimodal wrappers (Kimi-K2.5 and others) keep the language model under text_config.
        if let Some(inner) = obj.get("text_config").filter(|t| t.is_object()) {
            if !obj.contains_key("hidden_size") {
                return Self::from_hf_json(inner);
            }
        }
        let model_type = obj.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        let uint = |key: &'static str| -> Result<Option<usize>, ConfigError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(key, "must be a non-negative integer")),
            }
        };
        let float = |key: &'static str| -> Result<Option<f64>, ConfigError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(key, "must be a number")),
            }
        };
        let boolean = |key: &'static str| -> Result<Option<bool>, ConfigError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| bad(key, "must be true or false")),
            }
        };
        let string = |key: &'static str| obj.get(key).and_then(|x| x.as_str()).map(str::to_string);

        let experts_key = ["n_routed_experts", "num_experts", "num_local_experts"]
            .into_iter()
            .find(|k| obj.contains_key(*k))
            .ok_or_else(|| {
                bad(
                    "n_routed_experts",
                    "is missing (looked for n_routed_experts, num_experts, num_local_experts): not an MoE config",
                )
            })?;
        let n_routed_experts = uint(experts_key)?.unwrap_or(0);
        let num_experts_per_tok =
            uint("num_experts_per_tok")?.ok_or_else(|| bad("num_experts_per_tok", "is missing"))?;
        let hidden_size = uint("hidden_size")?.ok_or_else(|| bad("hidden_size", "is missing"))?;
        let is_mixtral = experts_key == "num_local_experts";
        let moe_intermediate_size = if is_mixtral {
            uint("intermediate_size")?.ok_or_else(|| bad("intermediate_size", "is missing"))?
        } else {
            uint("moe_intermediate_size")?
                .ok_or_else(|| bad("moe_intermediate_size", "is missing"))?
        };

        let is_qwen_next =
            model_type == "qwen3_next" || obj.contains_key("shared_expert_intermediate_size");
        let is_glm = model_type.starts_with("glm4_moe");
        let (n_shared_experts, shared_intermediate_size) = if is_qwen_next {
            let size = uint("shared_expert_intermediate_size")?.unwrap_or(0);
            (usize::from(size > 0), size)
        } else {
            let s = uint("n_shared_experts")?.unwrap_or(0);
            (s, s * moe_intermediate_size)
        };

        let topk_method = string("topk_method");
        let scoring_func = match string("scoring_func").as_deref() {
            Some("sigmoid") => ScoringFunc::Sigmoid,
            Some("softmax") => ScoringFunc::Softmax,
            Some(other) => {
                return Err(bad(
                    "scoring_func",
                    format!("`{other}` is not supported; expected sigmoid or softmax"),
                ))
            }
            None if is_glm => ScoringFunc::Sigmoid,
            None => ScoringFunc::Softmax,
        };
        let has_bias = topk_method.as_deref() == Some("noaux_tc") || is_glm;
        let grouped = matches!(
            topk_method.as_deref(),
            Some("noaux_tc") | Some("group_limited_greedy")
        ) || is_glm;
        let (n_group, topk_group) = if grouped {
            (
                uint("n_group")?.unwrap_or(1),
                uint("topk_group")?.unwrap_or(1),
            )
        } else {
            (1, 1)
        };
        let norm_topk_prob = boolean("norm_topk_prob")?.unwrap_or(is_mixtral);
        let routed_scaling_factor = float("routed_scaling_factor")?.unwrap_or(1.0);
        let name = if model_type.is_empty() {
            "config.json".to_string()
        } else {
            model_type.to_string()
        };
        let cfg = MoeConfig {
            name,
            n_routed_experts,
            n_shared_experts,
            num_experts_per_tok,
            n_group,
            topk_group,
            scoring_func,
            has_bias,
            norm_topk_prob,
            routed_scaling_factor,
            hidden_size,
            moe_intermediate_size,
            shared_intermediate_size,
            shared_expert_gate: is_qwen_next && n_shared_experts > 0,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid() {
        for name in PRESET_NAMES {
            let cfg = MoeConfig::preset(name).expect("preset exists");
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&cfg.name, name);
        }
    }

    #[test]
    fn unknown_preset_names_the_choices() {
        let err = MoeConfig::preset("llama").unwrap_err();
        assert_eq!(err.field, "preset");
        assert!(err.rule.contains("deepseek-v3"));
    }

    #[test]
    fn rejects_each_broken_rule_naming_the_field() {
        let base = MoeConfig::preset("deepseek-v3").unwrap();
        let cases: Vec<(MoeConfig, &str)> = vec![
            (
                MoeConfig {
                    n_group: 7,
                    ..base.clone()
                },
                "n_group",
            ),
            (
                MoeConfig {
                    topk_group: 9,
                    ..base.clone()
                },
                "topk_group",
            ),
            (
                MoeConfig {
                    topk_group: 0,
                    ..base.clone()
                },
                "topk_group",
            ),
            (
                MoeConfig {
                    topk_group: 1,
                    num_experts_per_tok: 40,
                    ..base.clone()
                },
                "num_experts_per_tok",
            ),
            (
                MoeConfig {
                    hidden_size: 0,
                    ..base.clone()
                },
                "hidden_size",
            ),
            (
                MoeConfig {
                    moe_intermediate_size: 0,
                    ..base.clone()
                },
                "moe_intermediate_size",
            ),
            (
                MoeConfig {
                    n_routed_experts: 0,
                    ..base.clone()
                },
                "n_routed_experts",
            ),
            (
                MoeConfig {
                    routed_scaling_factor: 0.0,
                    ..base.clone()
                },
                "routed_scaling_factor",
            ),
            (
                MoeConfig {
                    shared_intermediate_size: 0,
                    ..base.clone()
                },
                "shared_intermediate_size",
            ),
        ];
        for (cfg, field) in cases {
            assert_eq!(cfg.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn imports_each_family_with_its_own_field_names() {
        let ds = serde_json::json!({
            "model_type": "deepseek_v3", "n_routed_experts": 256, "n_shared_experts": 1,
            "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc",
            "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
            "hidden_size": 7168, "moe_intermediate_size": 2048
        });
        let cfg = MoeConfig::from_hf_json(&ds).unwrap();
        let want = MoeConfig {
            name: "deepseek_v3".into(),
            ..MoeConfig::preset("deepseek-v3").unwrap()
        };
        assert_eq!(cfg, want);

        let v2 = serde_json::json!({
            "model_type": "deepseek_v2", "n_routed_experts": 160, "n_shared_experts": 2,
            "num_experts_per_tok": 6, "n_group": 8, "topk_group": 3, "topk_method": "group_limited_greedy",
            "scoring_func": "softmax", "norm_topk_prob": false, "routed_scaling_factor": 16.0,
            "hidden_size": 5120, "moe_intermediate_size": 1536
        });
        let cfg = MoeConfig::from_hf_json(&v2).unwrap();
        assert_eq!(
            cfg,
            MoeConfig {
                name: "deepseek_v2".into(),
                ..MoeConfig::preset("deepseek-v2").unwrap()
            }
        );

        let glm = serde_json::json!({
            "model_type": "glm4_moe", "n_routed_experts": 160, "n_shared_experts": 1,
            "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1, "norm_topk_prob": true,
            "routed_scaling_factor": 2.5, "hidden_size": 5120, "moe_intermediate_size": 1536
        });
        let cfg = MoeConfig::from_hf_json(&glm).unwrap();
        assert_eq!(
            cfg,
            MoeConfig {
                name: "glm4_moe".into(),
                ..MoeConfig::preset("glm-4.5").unwrap()
            }
        );

        let qwen = serde_json::json!({
            "model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8,
            "norm_topk_prob": true, "hidden_size": 2048, "moe_intermediate_size": 768
        });
        let cfg = MoeConfig::from_hf_json(&qwen).unwrap();
        assert_eq!(
            cfg,
            MoeConfig {
                name: "qwen3_moe".into(),
                ..MoeConfig::preset("qwen3-30b-a3b").unwrap()
            }
        );

        let next = serde_json::json!({
            "model_type": "qwen3_next", "num_experts": 512, "num_experts_per_tok": 10,
            "norm_topk_prob": true, "hidden_size": 2048, "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 512
        });
        let cfg = MoeConfig::from_hf_json(&next).unwrap();
        assert_eq!(
            cfg,
            MoeConfig {
                name: "qwen3_next".into(),
                ..MoeConfig::preset("qwen3-next-80b-a3b").unwrap()
            }
        );

        let mixtral = serde_json::json!({
            "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2,
            "hidden_size": 4096, "intermediate_size": 14336
        });
        let cfg = MoeConfig::from_hf_json(&mixtral).unwrap();
        assert_eq!(
            cfg,
            MoeConfig {
                name: "mixtral".into(),
                ..MoeConfig::preset("mixtral-8x7b").unwrap()
            }
        );
    }

    #[test]
    fn import_errors_name_the_field() {
        let no_experts = serde_json::json!({"model_type": "llama", "hidden_size": 4096});
        assert_eq!(
            MoeConfig::from_hf_json(&no_experts).unwrap_err().field,
            "n_routed_experts"
        );
        let bad_type = serde_json::json!({
            "num_experts": "many", "num_experts_per_tok": 2, "hidden_size": 8, "moe_intermediate_size": 8
        });
        assert_eq!(
            MoeConfig::from_hf_json(&bad_type).unwrap_err().field,
            "num_experts"
        );
        let bad_groups = serde_json::json!({
            "n_routed_experts": 10, "num_experts_per_tok": 2, "n_group": 3, "topk_group": 1,
            "topk_method": "noaux_tc", "scoring_func": "sigmoid",
            "hidden_size": 8, "moe_intermediate_size": 8
        });
        assert_eq!(
            MoeConfig::from_hf_json(&bad_groups).unwrap_err().field,
            "n_group"
        );
    }

    #[test]
    fn tensor_parallel_divides_intermediate_sizes() {
        let cfg = MoeConfig::preset("deepseek-v3")
            .unwrap()
            .with_tensor_parallel(8)
            .unwrap();
        assert_eq!(cfg.moe_intermediate_size, 256);
        assert_eq!(cfg.shared_intermediate_size, 256);
        assert!(MoeConfig::preset("deepseek-v3")
            .unwrap()
            .with_tensor_parallel(3)
            .is_err());
    }
}
