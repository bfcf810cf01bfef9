//! Fuzzing (proptest, run as ordinary tests): safetensors headers, shard indexes, captured
//! hidden states and whole checkpoint directories built from arbitrary or mutated bytes end in
//! `Ok` or an error, never a panic; and every byte range a header yields lies inside the file.

mod checkpoint_support;

use checkpoint_support::*;
use moescope::engine::config::MoeConfig;
use moescope::engine::weights::checkpoint::files::{parse_header, parse_index};
use moescope::engine::weights::checkpoint::{open_layer, parse_hidden_states};
use moescope::engine::weights::WeightSource;
use proptest::prelude::*;
use safetensors::Dtype;
use serde_json::json;
use std::collections::BTreeMap;

/// A small valid checkpoint: config.json and model.safetensors bytes.
fn valid() -> (serde_json::Value, Vec<u8>) {
    let config = json!({
        "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
        "norm_topk_prob": true, "hidden_size": 8, "moe_intermediate_size": 4,
        "num_hidden_layers": 1
    });
    let cfg = MoeConfig::from_hf_json(&config).unwrap();
    let tensors = layer_tensors(
        &Layer::random(&cfg, 1),
        "model.layers.0.",
        Naming::Qwen,
        Dtype::BF16,
    );
    (config, serialize(&tensors))
}

/// Reads every weight of an opened layer: reading must not panic either.
fn read_everything(dir: &std::path::Path) {
    if let Ok(layer) = open_layer(dir, None, 1) {
        let _ = layer.router_gate();
        let _ = layer.router_bias();
        let _ = layer.shared_gate();
        for e in 0..layer.config().n_routed_experts {
            let _ = layer.expert(e);
        }
    }
}

/// A header JSON with arbitrary dtypes, shapes and offsets, then `data` bytes.
fn file_from(entries: &[(u8, Vec<usize>, usize, usize)], data: &[u8]) -> Vec<u8> {
    const DTYPES: [&str; 8] = ["F32", "BF16", "F16", "F8_E4M3", "I32", "U8", "F4", "BOOL"];
    let mut header = serde_json::Map::new();
    for (k, (dtype, shape, start, end)) in entries.iter().enumerate() {
        header.insert(
            format!("t{k}"),
            json!({"dtype": DTYPES[*dtype as usize % DTYPES.len()], "shape": shape, "data_offsets": [start, end]}),
        );
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(data);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_header(&bytes);
        let _ = parse_index(&bytes);
        let _ = parse_hidden_states(&bytes, 4);
        // Behind a plausible header length too.
        let mut framed = (bytes.len() as u64).to_le_bytes().to_vec();
        framed.extend(&bytes);
        let _ = parse_header(&framed);
        let _ = parse_hidden_states(&framed, 4);
    }

    #[test]
    fn arbitrary_headers_yield_ranges_inside_the_file(
        entries in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(0usize..70000, 0..4), 0usize..64, 0usize..64),
            0..5,
        ),
        data in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let file = file_from(&entries, &data);
        if let Ok(tensors) = parse_header(&file) {
            for meta in tensors.values() {
                prop_assert!(meta.bytes.start <= meta.bytes.end && meta.bytes.end <= file.len());
            }
        }
        let _ = parse_hidden_states(&file, 4);
    }

    #[test]
    fn arbitrary_index_json_never_panics(
        names in proptest::collection::vec("[a-z./]{0,12}", 0..4),
        files in proptest::collection::vec("[a-z0-9./-]{0,16}", 0..4),
        junk in any::<bool>(),
    ) {
        let map: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&files)
            .map(|(n, f)| (n.clone(), if junk { json!([f]) } else { json!(f) }))
            .collect();
        let bytes = serde_json::to_vec(&json!({"weight_map": map})).unwrap();
        if let Ok(index) = parse_index(&bytes) {
            for file in index.values() {
                prop_assert!(!file.starts_with('/') && !file.split('/').any(|c| c == ".."));
            }
        }
    }
}

proptest! {
    // Each case writes a directory: fewer cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mutated_checkpoints_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (config, mut bytes) = valid();
        // Mutations aimed at the header (where the structure lives) and anywhere.
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (k, (at, value)) in flips.iter().enumerate() {
            let span = if k % 2 == 0 { header_end } else { bytes.len() };
            let i = at.index(span);
            bytes[i] = *value;
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len()));
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), &bytes).unwrap();
        read_everything(tmp.path());
        let _ = moescope::commands::inspect::report(tmp.path(), None);
    }
}

#[test]
fn the_unmutated_fuzz_seed_opens() {
    // The mutation test starts from a checkpoint that opens, so it explores near-valid files.
    let (config, bytes) = valid();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), &bytes).unwrap();
    let layer = open_layer(tmp.path(), None, 1).unwrap();
    assert_eq!(layer.expert(3).unwrap().gate.len(), 4 * 8);
    let tensors: BTreeMap<_, _> = parse_header(&bytes).unwrap();
    assert!(tensors.contains_key("model.layers.0.mlp.gate.weight"));
}
