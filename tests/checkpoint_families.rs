//! Tiny checkpoints of every preset family in the real tensor naming: the loaded layer must
//! hold exactly the weights written, and one engine step over it must equal one step over the
//! same arrays given directly.

mod checkpoint_support;

use checkpoint_support::*;
use moescope::engine::config::MoeConfig;
use moescope::engine::weights::checkpoint::{self, open_layer};
use moescope::engine::weights::{round_bf16, WeightSource};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const H: usize = 32;
const I: usize = 16;
const TOKENS: usize = 12;

struct Family {
    config: Value,
    naming: Naming,
    /// Tensor prefix before the layer number.
    prefix: &'static str,
    dtype: Dtype,
    shards: usize,
}

/// Writes every layer (dense ones with a plain MLP, MoE ones with their own random weights)
/// and returns the MoE layers' arrays by layer number.
fn write_family(dir: &Path, f: &Family) -> BTreeMap<usize, Layer> {
    let (tensors, moe) = family_tensors(f);
    write_checkpoint(dir, &f.config, &tensors, f.shards);
    moe
}

fn family_tensors(f: &Family) -> (BTreeMap<String, T>, BTreeMap<usize, Layer>) {
    let cfg = MoeConfig::from_hf_json(&f.config).unwrap();
    let text = f.config.get("text_config").unwrap_or(&f.config);
    let layers = text["num_hidden_layers"].as_u64().unwrap() as usize;
    let dense_k = text["first_k_dense_replace"].as_u64().unwrap_or(0) as usize;
    let mlp_only: Vec<u64> = text["mlp_only_layers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let mut tensors = BTreeMap::new();
    let mut moe = BTreeMap::new();
    for l in 0..layers {
        let prefix = format!("{}{l}.", f.prefix);
        if l < dense_k || mlp_only.contains(&(l as u64)) {
            tensors.extend(dense_tensors(&prefix, H, 4 * I));
            continue;
        }
        let layer = Layer::random(&cfg, 100 + l as u64).stored_as(f.dtype);
        tensors.extend(layer_tensors(&layer, &prefix, f.naming, f.dtype));
        moe.insert(l, layer);
    }
    (tensors, moe)
}

/// Every tensor the source serves equals the direct arrays.
fn assert_same_weights(loaded: &dyn WeightSource, direct: &dyn WeightSource) {
    assert_eq!(loaded.config(), direct.config());
    assert_eq!(loaded.router_gate().unwrap(), direct.router_gate().unwrap());
    assert_eq!(loaded.router_bias().unwrap(), direct.router_bias().unwrap());
    assert_eq!(loaded.shared_gate().unwrap(), direct.shared_gate().unwrap());
    assert_eq!(
        loaded.logit_offset().unwrap(),
        direct.logit_offset().unwrap()
    );
    for e in 0..loaded.config().n_routed_experts {
        assert_eq!(
            loaded.expert(e).unwrap(),
            direct.expert(e).unwrap(),
            "expert {e}"
        );
    }
    for j in 0..loaded.config().n_shared_experts {
        assert_eq!(
            loaded.shared_slot(j).unwrap(),
            direct.shared_slot(j).unwrap(),
            "shared slot {j}"
        );
    }
}

/// The whole check for one family: default layer, weights, a forward step, another layer.
fn check_family(f: Family, tp: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let moe = write_family(&dir, &f);
    let (&first, layer) = moe.iter().next().unwrap();

    let loaded = open_layer(&dir, None, tp).unwrap();
    assert_eq!(loaded.layer, first, "default layer is the first MoE layer");
    let direct = Direct::new(layer.clone(), tp);
    assert_same_weights(&loaded, &direct);

    let hidden_path = tmp.path().join("hidden.safetensors");
    let written = write_hidden(&hidden_path, TOKENS, H, 5);
    let hidden = checkpoint::read_hidden_states(&hidden_path, H).unwrap();
    assert_eq!(hidden, written);

    let via_checkpoint = one_step(checkpoint::open(&dir, None, tp).unwrap(), &hidden);
    let via_arrays = one_step(Box::new(direct), &hidden);
    assert_eq!(via_checkpoint, via_arrays);
    assert_eq!(via_checkpoint.tokens, TOKENS);
    assert!(via_checkpoint.paths[0].output.rms > 0.0);

    // An explicit later MoE layer reads that layer's (different) weights.
    let (&last, other) = moe.iter().last().unwrap();
    if last != first {
        let loaded = open_layer(&dir, Some(last), tp).unwrap();
        assert_same_weights(&loaded, &Direct::new(other.clone(), tp));
        assert_ne!(loaded.router_gate().unwrap(), layer.router);
    }
}

fn deepseek_v3() -> Value {
    json!({
        "model_type": "deepseek_v3", "n_routed_experts": 8, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "hidden_size": H, "moe_intermediate_size": I, "intermediate_size": 4 * I,
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "moe_layer_freq": 1
    })
}

#[test]
fn deepseek_v3_sharded_with_index() {
    check_family(
        Family {
            config: deepseek_v3(),
            naming: Naming::DeepSeek,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 3,
        },
        1,
    );
}

fn deepseek_v2() -> Value {
    json!({
        "model_type": "deepseek_v2", "n_routed_experts": 8, "n_shared_experts": 2,
        "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2,
        "topk_method": "group_limited_greedy", "scoring_func": "softmax",
        "norm_topk_prob": false, "routed_scaling_factor": 16.0,
        "hidden_size": H, "moe_intermediate_size": I, "num_hidden_layers": 2,
        "first_k_dense_replace": 0, "moe_layer_freq": 1
    })
}

#[test]
fn deepseek_v2_two_shared_experts_f16() {
    check_family(
        Family {
            config: deepseek_v2(),
            naming: Naming::DeepSeek,
            prefix: "model.layers.",
            dtype: Dtype::F16,
            shards: 1,
        },
        1,
    );
}

#[test]
fn tensor_parallel_rank_zero_shard() {
    // Rank 0 of 2: the first I/2 rows of gate/up, the first I/2 columns of down; the shared
    // MLP's first half split into the two slots.
    check_family(
        Family {
            config: deepseek_v2(),
            naming: Naming::DeepSeek,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 2,
        },
        2,
    );
    let tmp = tempfile::tempdir().unwrap();
    let f = Family {
        config: deepseek_v2(),
        naming: Naming::DeepSeek,
        prefix: "model.layers.",
        dtype: Dtype::BF16,
        shards: 1,
    };
    let moe = write_family(tmp.path(), &f);
    let whole = &moe[&0];
    let loaded = open_layer(tmp.path(), None, 2).unwrap();
    let e3 = loaded.expert(3).unwrap();
    assert_eq!(e3.intermediate, I / 2);
    assert_eq!(e3.gate[..], whole.experts[3].gate[..I / 2 * H]);
    assert_eq!(e3.down[..I / 2], whole.experts[3].down[..I / 2]);
    assert_eq!(e3.down[I / 2..I], whole.experts[3].down[I..I + I / 2]);
    let shared = whole.shared.as_ref().unwrap();
    let slot1 = loaded.shared_slot(1).unwrap();
    assert_eq!(slot1.intermediate, I / 2);
    assert_eq!(slot1.up[..], shared.up[I / 2 * H..I * H]);
    let err = open_layer(tmp.path(), None, 3).err().unwrap();
    assert!(format!("{err:#}").contains("--tp 3"), "{err:#}");
}

#[test]
fn kimi_k2_under_text_config_f32() {
    // Kimi-K2.5 style: the language model's config under text_config, tensors under
    // `language_model.model.`.
    let inner = json!({
        "model_type": "kimi_k2", "n_routed_experts": 8, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.827,
        "hidden_size": H, "moe_intermediate_size": I, "num_hidden_layers": 2,
        "first_k_dense_replace": 1, "moe_layer_freq": 1
    });
    check_family(
        Family {
            config: json!({"model_type": "kimi_k25", "text_config": inner}),
            naming: Naming::DeepSeek,
            prefix: "language_model.model.layers.",
            dtype: Dtype::F32,
            shards: 1,
        },
        1,
    );
}

#[test]
fn glm_4_5() {
    check_family(
        Family {
            config: json!({
                "model_type": "glm4_moe", "n_routed_experts": 8, "n_shared_experts": 1,
                "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
                "norm_topk_prob": true, "routed_scaling_factor": 2.5, "hidden_size": H,
                "moe_intermediate_size": I, "num_hidden_layers": 3, "first_k_dense_replace": 1
            }),
            naming: Naming::DeepSeek,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 2,
        },
        1,
    );
}

fn qwen3_moe() -> Value {
    json!({
        "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
        "norm_topk_prob": true, "hidden_size": H, "moe_intermediate_size": I,
        "num_hidden_layers": 3, "decoder_sparse_step": 1, "mlp_only_layers": [0]
    })
}

#[test]
fn qwen3_moe_per_expert() {
    check_family(
        Family {
            config: qwen3_moe(),
            naming: Naming::Qwen,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 1,
        },
        1,
    );
}

#[test]
fn fused_gate_up_layout() {
    // H = 2I here, so [E, 2I, H] and [E, H, 2I] have the same shape: down_proj decides.
    assert_eq!(H, 2 * I);
    check_family(
        Family {
            config: qwen3_moe(),
            naming: Naming::Fused,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 1,
        },
        1,
    );
}

#[test]
fn fused_gate_up_transposed_layout() {
    check_family(
        Family {
            config: qwen3_moe(),
            naming: Naming::FusedTransposed,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 2,
        },
        2,
    );
}

fn qwen3_next() -> Family {
    Family {
        config: json!({
            "model_type": "qwen3_next", "num_experts": 8, "num_experts_per_tok": 3,
            "norm_topk_prob": true, "hidden_size": H, "moe_intermediate_size": I,
            "shared_expert_intermediate_size": I, "num_hidden_layers": 2,
            "decoder_sparse_step": 1, "mlp_only_layers": []
        }),
        naming: Naming::Qwen,
        prefix: "model.layers.",
        dtype: Dtype::BF16,
        shards: 1,
    }
}

#[test]
fn mtp_layers_do_not_shadow_decoder_layers() {
    // Qwen3-Next and others ship a multi-token-prediction stack numbered from 0 too, whose
    // names (`mtp.layers.0.…`) are shorter than the decoder's.
    let f = qwen3_next();
    let (mut tensors, moe) = family_tensors(&f);
    let cfg = MoeConfig::from_hf_json(&f.config).unwrap();
    let mtp = Layer::random(&cfg, 999);
    tensors.extend(layer_tensors(
        &mtp,
        "mtp.layers.0.",
        Naming::Qwen,
        Dtype::BF16,
    ));
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &f.config, &tensors, 2);
    let loaded = open_layer(tmp.path(), Some(0), 1).unwrap();
    assert_same_weights(&loaded, &Direct::new(moe[&0].clone(), 1));
    let report = moescope::commands::inspect::report(tmp.path(), Some(0)).unwrap();
    assert!(
        report.contains("model.layers.0.mlp.gate.weight"),
        "{report}"
    );
    assert!(!report.contains("mtp.layers.0."), "{report}");
}

#[test]
fn qwen3_next_gated_shared_expert() {
    check_family(qwen3_next(), 1);
}

#[test]
fn mixtral_sharded() {
    check_family(
        Family {
            config: json!({
                "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2,
                "hidden_size": H, "intermediate_size": I, "num_hidden_layers": 2
            }),
            naming: Naming::Mixtral,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 3,
        },
        1,
    );
}

/// E4M3 by the textbook formula: (−1)^s · 2^(e−7) · (1 + m/8), subnormal 2^−6 · m/8.
fn e4m3_formula(b: u8) -> f32 {
    let s = if b >> 7 == 1 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 15) as i32;
    let m = (b & 7) as f32;
    if e == 0 {
        s * 2f32.powi(-6) * (m / 8.0)
    } else {
        s * 2f32.powi(e - 7) * (1.0 + m / 8.0)
    }
}

#[test]
fn fp8_block_scales_dequantize() {
    use rand::{Rng, SeedableRng};
    // Ragged on both axes: 160 = 128 + 32 rows, 192 = 128 + 64 columns.
    let (h, i, e) = (192usize, 160usize, 4usize);
    let config = json!({
        "model_type": "deepseek_v3", "n_routed_experts": e, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "hidden_size": h, "moe_intermediate_size": i, "num_hidden_layers": 1,
        "first_k_dense_replace": 0, "moe_layer_freq": 1,
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
            "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    });
    let cfg = MoeConfig::from_hf_json(&config).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut tensors = BTreeMap::new();
    // Quantized weights and scales, and their dequantized values computed here.
    let mut fp8 = |name: String, rows: usize, cols: usize| -> Vec<f32> {
        let bytes: Vec<u8> = (0..rows * cols)
            .map(|_| loop {
                let b: u8 = rng.random();
                if b & 0x7F != 0x7F {
                    break b;
                }
            })
            .collect();
        let (sr, sc) = (rows.div_ceil(128), cols.div_ceil(128));
        let scales: Vec<f32> = (0..sr * sc).map(|_| rng.random_range(1e-3..1e-2)).collect();
        let values = (0..rows * cols)
            .map(|k| {
                let (r, c) = (k / cols, k % cols);
                e4m3_formula(bytes[k]) * scales[(r / 128) * sc + c / 128]
            })
            .collect();
        tensors.insert(
            name.clone(),
            T {
                dtype: Dtype::F8_E4M3,
                shape: vec![rows, cols],
                data: bytes,
            },
        );
        tensors.insert(
            format!("{name}_scale_inv"),
            t(&scales, &[sr, sc], Dtype::F32),
        );
        values
    };
    let p = "model.layers.0.mlp.";
    let mut mlp = |prefix: String, inter: usize| moescope::engine::weights::ExpertWeights {
        hidden: h,
        intermediate: inter,
        gate: fp8(format!("{prefix}gate_proj.weight"), inter, h),
        up: fp8(format!("{prefix}up_proj.weight"), inter, h),
        down: fp8(format!("{prefix}down_proj.weight"), h, inter),
    };
    let experts: Vec<_> = (0..e).map(|x| mlp(format!("{p}experts.{x}."), i)).collect();
    let shared = mlp(format!("{p}shared_experts."), i);
    let base = Layer::random(&cfg, 3);
    tensors.insert(
        format!("{p}gate.weight"),
        t(&base.router, &[e, h], Dtype::BF16),
    );
    tensors.insert(
        format!("{p}gate.e_score_correction_bias"),
        t(base.bias.as_ref().unwrap(), &[e], Dtype::F32),
    );
    let layer = Layer {
        experts,
        shared: Some(shared),
        ..base
    };
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &config, &tensors, 2);

    let loaded = open_layer(tmp.path(), None, 1).unwrap();
    // Dequantized f32 values, ragged edges included, exactly as computed here.
    let down = loaded
        .files
        .read_block(&format!("{p}experts.2.down_proj.weight"), None, 0..h, 0..i)
        .unwrap();
    assert_eq!(down, layer.experts[2].down);
    let gate_corner = loaded
        .files
        .read_block(
            &format!("{p}experts.1.gate_proj.weight"),
            None,
            130..160,
            100..192,
        )
        .unwrap();
    let want: Vec<f32> = (130..160)
        .flat_map(|r| layer.experts[1].gate[r * h + 100..r * h + 192].to_vec())
        .collect();
    assert_eq!(gate_corner, want);
    // Experts are served rounded to bf16, the compute type.
    let e0 = loaded.expert(0).unwrap();
    let want: Vec<f32> = layer.experts[0].up.iter().map(|&v| round_bf16(v)).collect();
    assert_eq!(e0.up, want);
    assert_same_weights(&loaded, &Direct::new(layer.clone(), 1));

    let hidden_path = tmp.path().join("hidden.safetensors");
    let hidden = write_hidden(&hidden_path, TOKENS, h, 9);
    assert_eq!(
        one_step(Box::new(loaded), &hidden),
        one_step(Box::new(Direct::new(layer.clone(), 1)), &hidden)
    );
    // Rank 0 of 2: the first 80 rows of each 160-row projection.
    let half = open_layer(tmp.path(), None, 2).unwrap();
    assert_same_weights(&half, &Direct::new(layer, 2));
}

#[test]
fn inspect_lists_config_layers_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    write_family(
        tmp.path(),
        &Family {
            config: deepseek_v3(),
            naming: Naming::DeepSeek,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 3,
        },
    );
    let report = moescope::commands::inspect::report(tmp.path(), None).unwrap();
    assert!(report.contains("n_routed_experts: 8"), "{report}");
    assert!(
        report.contains("layers: 3; MoE: 1-2 (2 layers); dense: 0 (first_k_dense_replace 1)"),
        "{report}"
    );
    assert!(report.contains("layer 1 (MoE)"), "{report}");
    assert!(
        report.contains(
            "layer 1 loads as an MoE layer (experts.E.{gate_proj,up_proj,down_proj}; shared MLP shared_experts.)"
        ),
        "{report}"
    );
    // Router gate: [8, 32] BF16 = 512 bytes, in one of the three shards.
    let line = report
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("model.layers.1.mlp.gate.weight ")
        })
        .unwrap_or_else(|| panic!("{report}"));
    let cols: Vec<&str> = line
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(cols[1..4], ["[8, 32]", "BF16", "512"], "{line}");
    assert!(cols[4].ends_with("-of-00003.safetensors"), "{line}");
    // 8 experts × 3 + router + bias + 3 shared + norm + attention.
    assert_eq!(
        report
            .lines()
            .filter(|l| l.trim_start().starts_with("model.layers.1."))
            .count(),
        8 * 3 + 2 + 3 + 2
    );
    assert!(!report.contains("model.layers.2."));
    // A dense layer can be listed too.
    let dense = moescope::commands::inspect::report(tmp.path(), Some(0)).unwrap();
    assert!(dense.contains("layer 0 (dense)"), "{dense}");
    assert!(
        dense.contains("model.layers.0.mlp.gate_proj.weight"),
        "{dense}"
    );
}

#[test]
fn command_line_inspect_and_run_on_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_family(
        &dir,
        &Family {
            config: qwen3_moe(),
            naming: Naming::Qwen,
            prefix: "model.layers.",
            dtype: Dtype::BF16,
            shards: 2,
        },
    );
    let hidden = tmp.path().join("h.safetensors");
    write_hidden(&hidden, 5, H, 1);
    let bin = env!("CARGO_BIN_EXE_moescope");
    let out = std::process::Command::new(bin)
        .args(["inspect", dir.to_str().unwrap(), "--layer", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("model.layers.2.mlp.experts.7.down_proj.weight"),
        "{text}"
    );

    let out = std::process::Command::new(bin)
        .args([
            "run",
            "--headless",
            "--steps",
            "1",
            "--backend",
            "cpu",
            "--model",
        ])
        .arg(&dir)
        .args(["--layer", "2", "--hidden-states"])
        .arg(&hidden)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: moescope::engine::step::StepRecord =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(record.tokens, 5);
    assert_eq!(record.paths[0].load.len(), 8);

    let out = std::process::Command::new(bin)
        .args([
            "run",
            "--headless",
            "--steps",
            "1",
            "--backend",
            "cpu",
            "--model",
        ])
        .arg(&dir)
        .args(["--layer", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("layer 0 is a dense layer"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn fp8_fused_experts_with_small_blocks() {
    use rand::{Rng, SeedableRng};
    // 3-D FP8 experts with per-expert block scales [E, ⌈R/8⌉, ⌈C/8⌉]; 12 = 8 + 4 is ragged.
    let (e, h, i) = (4usize, 32usize, 12usize);
    let config = json!({
        "model_type": "qwen3_moe", "num_experts": e, "num_experts_per_tok": 2,
        "norm_topk_prob": true, "hidden_size": h, "moe_intermediate_size": i,
        "num_hidden_layers": 1,
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [8, 8]}
    });
    let cfg = MoeConfig::from_hf_json(&config).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    // [E, rows, cols] FP8 bytes and scales, and the dequantized slabs computed here.
    let mut fp8 = |rows: usize, cols: usize| {
        let bytes: Vec<u8> = (0..e * rows * cols)
            .map(|_| loop {
                let b: u8 = rng.random();
                if b & 0x7F != 0x7F {
                    break b; // every code but NaN
                }
            })
            .collect();
        let (sr, sc) = (rows.div_ceil(8), cols.div_ceil(8));
        let scales: Vec<f32> = (0..e * sr * sc)
            .map(|_| rng.random_range(0.01..0.1))
            .collect();
        let slabs: Vec<Vec<f32>> = (0..e)
            .map(|x| {
                (0..rows * cols)
                    .map(|k| {
                        let (r, c) = (k / cols, k % cols);
                        e4m3_formula(bytes[x * rows * cols + k])
                            * scales[x * sr * sc + (r / 8) * sc + c / 8]
                    })
                    .collect()
            })
            .collect();
        let weight = T {
            dtype: Dtype::F8_E4M3,
            shape: vec![e, rows, cols],
            data: bytes,
        };
        (weight, t(&scales, &[e, sr, sc], Dtype::F32), slabs)
    };
    let (gu, gu_scale, gu_values) = fp8(2 * i, h);
    let (down, down_scale, down_values) = fp8(h, i);
    let base = Layer::random(&cfg, 4);
    let p = "model.layers.0.mlp.";
    let mut tensors = BTreeMap::new();
    tensors.insert(
        format!("{p}gate.weight"),
        t(&base.router, &[e, h], Dtype::BF16),
    );
    tensors.insert(format!("{p}experts.gate_up_proj"), gu);
    tensors.insert(format!("{p}experts.gate_up_proj_scale_inv"), gu_scale);
    tensors.insert(format!("{p}experts.down_proj"), down);
    tensors.insert(format!("{p}experts.down_proj_scale_inv"), down_scale);
    let experts = (0..e)
        .map(|x| moescope::engine::weights::ExpertWeights {
            hidden: h,
            intermediate: i,
            gate: gu_values[x][..i * h].to_vec(),
            up: gu_values[x][i * h..].to_vec(),
            down: down_values[x].clone(),
        })
        .collect();
    let layer = Layer { experts, ..base };
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &config, &tensors, 1);
    let loaded = open_layer(tmp.path(), None, 1).unwrap();
    let slab = loaded
        .files
        .read_block(&format!("{p}experts.down_proj"), Some(3), 0..h, 0..i)
        .unwrap();
    assert_eq!(slab, down_values[3]);
    assert_same_weights(&loaded, &Direct::new(layer.clone(), 1));
    let hidden = write_hidden(&tmp.path().join("h.safetensors"), TOKENS, h, 4);
    assert_eq!(
        one_step(Box::new(loaded), &hidden),
        one_step(Box::new(Direct::new(layer, 1)), &hidden)
    );
}
