//! Every golden routing file (cross-checked against PyTorch's router and sglang's CUDA kernel)
//! must route identically: ids exactly, weights within 1e-5 relative — through the library and
//! through `moescope route`.

use moescope::engine::config::MoeConfig;
use moescope::engine::inputs::read_router_inputs;
use moescope::engine::routing;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

fn cases() -> Vec<(PathBuf, Value)> {
    let mut cases: Vec<(PathBuf, Value)> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p.with_extension("safetensors"), v)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        cases.len() >= 8,
        "golden files missing: found {}",
        cases.len()
    );
    cases
}

fn assert_matches(name: &str, want: &Value, ids: &[Vec<u32>], weights: &[Vec<f64>]) {
    let want_ids = want["topk_ids"].as_array().unwrap();
    let want_w = want["topk_weights"].as_array().unwrap();
    assert_eq!(ids.len(), want_ids.len(), "{name}: token count");
    for t in 0..ids.len() {
        let wi: Vec<u32> = want_ids[t]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids[t], wi, "{name}: ids of token {t}");
        for (k, w) in want_w[t].as_array().unwrap().iter().enumerate() {
            let w = w.as_f64().unwrap();
            let got = weights[t][k];
            assert!(
                (got - w).abs() <= 1e-5 * w.abs().max(1e-12),
                "{name}: token {t} slot {k}: {got} vs {w}"
            );
        }
    }
}

#[test]
fn library_router_matches_every_golden_file() {
    for (st, want) in cases() {
        let name = st.file_name().unwrap().to_string_lossy().to_string();
        let cfg = MoeConfig::preset(want["preset"].as_str().unwrap()).unwrap();
        let inputs = read_router_inputs(&st, &cfg).unwrap();
        assert_eq!(inputs.tokens as u64, want["tokens"].as_u64().unwrap());
        let r = routing::route(
            &cfg,
            &inputs.logits,
            inputs.bias.as_deref(),
            cfg.num_experts_per_tok,
        );
        let (mut ids, mut ws) = (Vec::new(), Vec::new());
        for t in 0..r.tokens() {
            let (i, p) = r.ascending(t);
            ids.push(i);
            ws.push(p.iter().map(|p| p * cfg.routed_scaling_factor).collect());
        }
        assert_matches(&name, &want, &ids, &ws);
    }
}

#[test]
fn route_command_matches_every_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    for (st, want) in cases() {
        let name = st.file_name().unwrap().to_string_lossy().to_string();
        let out = dir.path().join(format!("{name}.json"));
        let status = Command::new(env!("CARGO_BIN_EXE_moescope"))
            .args([
                "route",
                "--backend",
                "cpu",
                "--preset",
                want["preset"].as_str().unwrap(),
                "--logits",
            ])
            .arg(&st)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{name}: route failed");
        let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(got["tokens"], want["tokens"], "{name}");
        let ids: Vec<Vec<u32>> = serde_json::from_value(got["topk_ids"].clone()).unwrap();
        let ws: Vec<Vec<f64>> = serde_json::from_value(got["topk_weights"].clone()).unwrap();
        assert_matches(&name, &want, &ids, &ws);
    }
}
