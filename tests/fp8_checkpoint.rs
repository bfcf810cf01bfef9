//! The tiny FP8 checkpoint in tests/data/fp8-tiny (DeepSeek-V3 layout: e4m3 experts with
//! `weight_scale_inv` 128×128 block scales): it is what `tiny_fp8_tensors` makes (rewrite it
//! with MOESCOPE_WRITE_TEST_DATA=1), and it loads as stored, without re-quantization.

mod checkpoint_support;

use checkpoint_support::*;
use moescope::engine::config::MoeConfig;
use moescope::engine::weights::checkpoint::open_layer;
use moescope::engine::weights::fp8::{self, BlockScaled, Fp8Mlp};
use moescope::engine::weights::synthetic::SyntheticWeights;
use moescope::engine::weights::{round_bf16, ExpertWeights, WeightSource};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const P: &str = "model.layers.0.mlp.";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fp8-tiny")
}

fn config() -> Value {
    json!({
        "model_type": "deepseek_v3", "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "hidden_size": 256, "moe_intermediate_size": 128, "num_hidden_layers": 1,
        "first_k_dense_replace": 0, "moe_layer_freq": 1,
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
            "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    })
}

/// The checkpoint's tensors, and its MLPs (routed experts, then the shared one) in FP8.
fn tiny_fp8_tensors() -> (BTreeMap<String, T>, Vec<Fp8Mlp>) {
    let cfg = MoeConfig::from_hf_json(&config()).unwrap();
    let layer = Layer::random(&cfg, 16);
    let mut tensors = BTreeMap::new();
    let (e, h) = (cfg.n_routed_experts, cfg.hidden_size);
    tensors.insert(
        format!("{P}gate.weight"),
        t(&layer.router, &[e, h], Dtype::BF16),
    );
    tensors.insert(
        format!("{P}gate.e_score_correction_bias"),
        t(layer.bias.as_ref().unwrap(), &[e], Dtype::F32),
    );
    let mut put = |name: String, m: &BlockScaled| {
        tensors.insert(
            name.clone(),
            T {
                dtype: Dtype::F8_E4M3,
                shape: vec![m.rows, m.cols],
                data: m.data.clone(),
            },
        );
        let shape = [m.rows.div_ceil(128), m.cols.div_ceil(128)];
        tensors.insert(
            format!("{name}_scale_inv"),
            t(&m.scale_inv, &shape, Dtype::F32),
        );
    };
    let mlps: Vec<Fp8Mlp> = layer
        .experts
        .iter()
        .chain(layer.shared.as_ref())
        .map(Fp8Mlp::quantize)
        .collect();
    for (x, m) in mlps.iter().enumerate() {
        let prefix = if x < e {
            format!("{P}experts.{x}.")
        } else {
            format!("{P}shared_experts.")
        };
        put(format!("{prefix}gate_proj.weight"), &m.gate);
        put(format!("{prefix}up_proj.weight"), &m.up);
        put(format!("{prefix}down_proj.weight"), &m.down);
    }
    (tensors, mlps)
}

#[test]
fn the_committed_checkpoint_is_the_generated_one() {
    let (tensors, _) = tiny_fp8_tensors();
    let dir = data_dir();
    if std::env::var_os("MOESCOPE_WRITE_TEST_DATA").is_some() {
        write_checkpoint(&dir, &config(), &tensors, 1);
    }
    let on_disk = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        on_disk == serialize(&tensors),
        "tests/data/fp8-tiny differs from tiny_fp8_tensors(); rewrite with MOESCOPE_WRITE_TEST_DATA=1"
    );
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg, config());
}

#[test]
fn fp8_experts_load_as_stored() {
    let (_, mlps) = tiny_fp8_tensors();
    let layer = open_layer(&data_dir(), None, 1).unwrap();
    let e = layer.config().n_routed_experts;
    for (x, want) in mlps.iter().enumerate() {
        let (stored, dequant) = if x < e {
            (layer.expert_fp8(x).unwrap(), layer.expert(x).unwrap())
        } else {
            (
                layer.shared_slot_fp8(0).unwrap(),
                layer.shared_slot(0).unwrap(),
            )
        };
        let stored = stored.expect("the checkpoint is FP8");
        assert_eq!(&stored, want, "MLP {x}: bytes and scales as written");
        // The bf16 path reads the same weights, dequantized and rounded to bf16.
        let d = stored.dequantize();
        let round = |v: &[f32]| v.iter().map(|&x| round_bf16(x)).collect::<Vec<_>>();
        assert_eq!(round(&d.gate), dequant.gate);
        assert_eq!(round(&d.down), dequant.down);
        assert_eq!(fp8::expert(&layer, 1).unwrap(), mlps[1]);
    }
}

#[test]
fn a_split_that_cuts_scale_blocks_is_refused() {
    // tp 2: rank 0 holds 64 of 128 intermediate rows, half a scale block.
    let layer = open_layer(&data_dir(), None, 2).unwrap();
    let err = format!("{:#}", layer.expert_fp8(0).unwrap_err());
    assert!(err.contains("cut its 128×128 scale blocks"), "{err}");
    assert!(err.contains("--experts bf16"), "{err}");
    // The bf16 path still reads it.
    assert_eq!(layer.expert(0).unwrap().intermediate, 64);
}

#[test]
fn bf16_weights_are_block_quantized() {
    let cfg = MoeConfig::from_hf_json(&config()).unwrap();
    let synth = SyntheticWeights::new(cfg, 3, 0.0);
    assert_eq!(synth.expert_fp8(0).unwrap(), None);
    let w: ExpertWeights = synth.expert(2).unwrap();
    let q = fp8::expert(&synth, 2).unwrap();
    assert_eq!(q, Fp8Mlp::quantize(&w));
    assert_eq!(q.gate.scale_inv.len(), 2);
    assert_eq!(q.bytes(), 3 * 128 * 256 + 4 * 3 * 2);
}
