//! Hugging Face `config.json` import: each family's own field names onto `MoeConfig`.

use super::{bad, ConfigError, MoeConfig, ScoringFunc};
use std::path::Path;

impl MoeConfig {
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
