//! The model presets: each model's MoE layer at its published numbers.

use super::{bad, ConfigError, MoeConfig, ScoringFunc};

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
}
