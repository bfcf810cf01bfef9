//! Every bad checkpoint ends in one clear error that names the thing and what was expected.

mod checkpoint_support;

use checkpoint_support::*;
use moescope::engine::config::MoeConfig;
use moescope::engine::weights::checkpoint::{self, open_layer};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const H: usize = 32;
const I: usize = 16;
const P: &str = "model.layers.1.mlp.";

fn config() -> Value {
    json!({
        "model_type": "deepseek_v3", "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "hidden_size": H, "moe_intermediate_size": I, "num_hidden_layers": 2,
        "first_k_dense_replace": 1
    })
}

/// Layer 0 dense, layer 1 MoE.
fn tensors() -> BTreeMap<String, T> {
    let cfg = MoeConfig::from_hf_json(&config()).unwrap();
    let mut all = dense_tensors("model.layers.0.", H, 4 * I);
    all.extend(layer_tensors(
        &Layer::random(&cfg, 1),
        "model.layers.1.",
        Naming::DeepSeek,
        Dtype::BF16,
    ));
    all
}

/// The error of opening a checkpoint built from `config` and `tensors`, in full.
fn open_err(
    config: &Value,
    tensors: &BTreeMap<String, T>,
    shards: usize,
    layer: Option<usize>,
) -> String {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), config, tensors, shards);
    open_dir_err(tmp.path(), layer)
}

fn open_dir_err(dir: &Path, layer: Option<usize>) -> String {
    match open_layer(dir, layer, 1) {
        Ok(_) => panic!("opening {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_has(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error lacks `{p}`: {err}");
    }
}

#[test]
fn the_unmodified_checkpoint_opens() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &config(), &tensors(), 1);
    assert_eq!(open_layer(tmp.path(), None, 1).unwrap().layer, 1);
}

#[test]
fn missing_tensor_is_named() {
    for shards in [1, 2] {
        let mut t = tensors();
        let name = format!("{P}experts.3.up_proj.weight");
        t.remove(&name).unwrap();
        assert_has(&open_err(&config(), &t, shards, None), &[&name, "missing"]);
    }
    let mut t = tensors();
    t.remove(&format!("{P}gate.weight"));
    assert_has(
        &open_err(&config(), &t, 1, None),
        &["model.layers.1.mlp.gate.weight", "router gate", "missing"],
    );
    let mut t = tensors();
    t.remove(&format!("{P}shared_experts.gate_proj.weight"));
    assert_has(
        &open_err(&config(), &t, 1, None),
        &["shared_experts.gate_proj.weight", "missing"],
    );
    let mut t = tensors();
    t.remove(&format!("{P}gate.e_score_correction_bias"));
    assert_has(
        &open_err(&config(), &t, 1, None),
        &["e_score_correction_bias", "missing"],
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let mut t = tensors();
    let name = format!("{P}experts.2.down_proj.weight");
    t.get_mut(&name).unwrap().shape = vec![I, H];
    assert_has(
        &open_err(&config(), &t, 1, None),
        &[&name, "[16, 32]", "expected [32, 16]"],
    );
    // inspect still lists the layer, and says why it does not load.
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &config(), &t, 1);
    let report = moescope::commands::inspect::report(tmp.path(), None).unwrap();
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains("[16, 32]"), "{line}");
    assert_has(&report, &["layer 1 does not load", "expected [32, 16]"]);
}

#[test]
fn unsupported_dtype_is_named() {
    let mut t = tensors();
    let name = format!("{P}experts.0.gate_proj.weight");
    let x = t.get_mut(&name).unwrap();
    x.dtype = Dtype::I16; // same byte size as BF16
    assert_has(
        &open_err(&config(), &t, 1, None),
        &[&name, "dtype I16", "supported"],
    );
    // FP8 without its block scales.
    let mut t = tensors();
    let x = t.get_mut(&name).unwrap();
    x.dtype = Dtype::F8_E4M3;
    x.data.truncate(I * H);
    assert_has(
        &open_err(&config(), &t, 1, None),
        &[&format!("{name}_scale_inv"), "block scales"],
    );
    // FP8 with per-tensor scales instead of block scales.
    let mut per_tensor = t.clone();
    per_tensor.insert(
        format!("{name}_scale"),
        checkpoint_support::t(&[0.5], &[1], Dtype::F32),
    );
    assert_has(
        &open_err(&config(), &per_tensor, 1, None),
        &[&format!("{name}_scale`"), "per-tensor", "block scales"],
    );
    // Packed integer experts (compressed-tensors).
    let mut packed = tensors();
    for x in 0..4 {
        let n = format!("{P}experts.{x}.gate_proj.weight");
        let w = packed.remove(&n).unwrap();
        packed.insert(format!("{n}_packed"), w);
    }
    assert_has(
        &open_err(&config(), &packed, 1, None),
        &[
            "experts.0.gate_proj.weight_packed",
            "packed integer weights",
        ],
    );
    // FP8 with scales of the wrong shape.
    let mut t = t.clone();
    t.insert(
        format!("{name}_scale_inv"),
        checkpoint_support::t(&[1.0; 4], &[2, 2], Dtype::F32),
    );
    assert_has(
        &open_err(&config(), &t, 1, None),
        &["_scale_inv", "[2, 2]", "expected [1, 1]"],
    );
}

#[test]
fn truncated_corrupt_and_oversized_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &config(), &tensors(), 1);
    let file = tmp.path().join("model.safetensors");
    let good = std::fs::read(&file).unwrap();

    std::fs::write(&file, &good[..good.len() - 10]).unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model.safetensors", "truncated"],
    );
    std::fs::write(&file, &good[..20]).unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model.safetensors", "truncated"],
    );
    std::fs::write(&file, &good[..3]).unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model.safetensors", "truncated"],
    );

    let mut big = good.clone();
    big[..8].copy_from_slice(&200_000_000u64.to_le_bytes());
    std::fs::write(&file, &big).unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model.safetensors", "header too large"],
    );

    let mut garbage = good.clone();
    garbage[8..16].copy_from_slice(b"not json");
    std::fs::write(&file, &garbage).unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model.safetensors", "corrupt header"],
    );
}

#[test]
fn sharded_index_problems() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &config(), &tensors(), 2);
    let index = tmp.path().join("model.safetensors.index.json");
    // A shard the index names is gone.
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model-00002-of-00002.safetensors", "cannot open"],
    );
    // The index places a tensor in a file that lacks it.
    write_checkpoint(tmp.path(), &config(), &tensors(), 2);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let name = format!("{P}experts.1.gate_proj.weight");
    let file = v["weight_map"][&name].as_str().unwrap().to_string();
    let other = if file.contains("00001") {
        "model-00002-of-00002.safetensors"
    } else {
        "model-00001-of-00002.safetensors"
    };
    v["weight_map"][&name] = other.into();
    std::fs::write(&index, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &[&name, other, "no such tensor"],
    );
    // An index that is not one.
    std::fs::write(&index, b"{\"weight_map\": 3}").unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model.safetensors.index.json", "weight_map"],
    );
    std::fs::write(&index, b"{\"weight_map\": {\"a\": \"/etc/passwd\"}}").unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["/etc/passwd", "inside the checkpoint directory"],
    );
}

#[test]
fn config_and_weights_disagree() {
    let mut more_experts = config();
    more_experts["n_routed_experts"] = 8.into();
    assert_has(
        &open_err(&more_experts, &tensors(), 1, None),
        &[
            "model.layers.1.mlp.gate.weight",
            "[4, 32]",
            "expected [8, 32]",
            "disagree",
        ],
    );
    let mut fewer = config();
    fewer["n_routed_experts"] = 2.into();
    fewer["n_group"] = 1.into();
    assert_has(
        &open_err(&fewer, &tensors(), 1, None),
        &["[4, 32]", "expected [2, 32]"],
    );
    let mut wider = config();
    wider["hidden_size"] = 64.into();
    assert_has(
        &open_err(&wider, &tensors(), 1, None),
        &["expected [4, 64]", "disagree"],
    );
    let mut no_bias = config();
    no_bias["topk_method"] = "greedy".into();
    no_bias["n_group"] = 1.into();
    assert_has(
        &open_err(&no_bias, &tensors(), 1, None),
        &[
            "e_score_correction_bias",
            "without a correction bias",
            "disagree",
        ],
    );
    let mut no_shared = config();
    no_shared["n_shared_experts"] = 0.into();
    assert_has(
        &open_err(&no_shared, &tensors(), 1, None),
        &["shared_experts.gate_proj.weight", "config.json has none"],
    );
    // Extra experts beyond n_routed_experts, the router cut to match the config.
    let mut t = tensors();
    let cfg2 = {
        let mut c = config();
        c["n_routed_experts"] = 2.into();
        c["n_group"] = 1.into();
        c
    };
    let router = t.get_mut(&format!("{P}gate.weight")).unwrap();
    router.shape = vec![2, H];
    router.data.truncate(2 * H * 2);
    let bias = t
        .get_mut(&format!("{P}gate.e_score_correction_bias"))
        .unwrap();
    bias.shape = vec![2];
    bias.data.truncate(2 * 4);
    assert_has(
        &open_err(&cfg2, &t, 1, None),
        &[
            "experts.2.gate_proj.weight",
            "n_routed_experts 2",
            "disagree",
        ],
    );
}

#[test]
fn layer_choice_errors() {
    assert_has(
        &open_err(&config(), &tensors(), 1, Some(7)),
        &["--layer 7 is out of range", "2 layers", "MoE layers: 1"],
    );
    assert_has(
        &open_err(&config(), &tensors(), 1, Some(0)),
        &["layer 0 is a dense layer", "first_k_dense_replace 1"],
    );
    let mut all_dense = config();
    all_dense["first_k_dense_replace"] = 2.into();
    assert_has(
        &open_err(&all_dense, &tensors(), 1, None),
        &["none of the 2 layers is MoE"],
    );
    let mut zero_freq = config();
    zero_freq["moe_layer_freq"] = 0.into();
    assert_has(
        &open_err(&zero_freq, &tensors(), 1, None),
        &["moe_layer_freq"],
    );
}

#[test]
fn directory_problems() {
    let tmp = tempfile::tempdir().unwrap();
    assert_has(
        &open_dir_err(&tmp.path().join("nope"), None),
        &["nope", "does not exist"],
    );
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_vec(&config()).unwrap(),
    )
    .unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["model.safetensors", "index"],
    );
    std::fs::write(tmp.path().join("config.json"), b"{").unwrap();
    assert_has(
        &open_dir_err(tmp.path(), None),
        &["config.json", "not valid JSON"],
    );
}

#[test]
fn hidden_states_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("h.safetensors");
    write_hidden(&path, 3, H, 2);
    let err = |hidden| {
        format!(
            "{:#}",
            checkpoint::read_hidden_states(&path, hidden).unwrap_err()
        )
    };
    assert_has(
        &err(64),
        &["`hidden_states` has shape [3, 32]", "expected [tokens, 64]"],
    );

    let mut map = BTreeMap::new();
    map.insert("x".to_string(), t(&[1.0; 4], &[2, 2], Dtype::F32));
    std::fs::write(&path, serialize(&map)).unwrap();
    assert_has(&err(2), &["no tensor `hidden_states`", "x"]);

    let mut map = BTreeMap::new();
    map.insert(
        "hidden_states".to_string(),
        t(&[1.0, f32::NAN], &[1, 2], Dtype::F32),
    );
    std::fs::write(&path, serialize(&map)).unwrap();
    assert_has(&err(2), &["non-finite", "token 0, element 1"]);

    let mut map = BTreeMap::new();
    map.insert(
        "hidden_states".to_string(),
        T {
            dtype: Dtype::I32,
            shape: vec![1, 2],
            data: vec![0; 8],
        },
    );
    std::fs::write(&path, serialize(&map)).unwrap();
    assert_has(&err(2), &["dtype I32", "F32, BF16 or F16"]);

    // A captured [batch, tokens, H] batch is taken as batch × tokens rows.
    let values: Vec<f32> = (0..12).map(|v| v as f32 - 6.0).collect();
    let mut map = BTreeMap::new();
    map.insert(
        "hidden_states".to_string(),
        t(&values, &[2, 3, 2], Dtype::F16),
    );
    std::fs::write(&path, serialize(&map)).unwrap();
    assert_eq!(checkpoint::read_hidden_states(&path, 2).unwrap(), values);
    let mut map = BTreeMap::new();
    map.insert("hidden_states".to_string(), t(&[], &[0, 2], Dtype::F32));
    std::fs::write(&path, serialize(&map)).unwrap();
    assert_has(&err(2), &["shape [0, 2]", "at least one token"]);

    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    assert_has(
        &err(2),
        &["h.safetensors", "not a valid safetensors file", "truncated"],
    );
    assert_has(
        &format!(
            "{:#}",
            checkpoint::read_hidden_states(&tmp.path().join("none"), 2).unwrap_err()
        ),
        &["cannot read hidden states file", "none"],
    );
}
