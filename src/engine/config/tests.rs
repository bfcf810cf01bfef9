//! Presets, validation, import and tensor parallelism of `MoeConfig`.

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
