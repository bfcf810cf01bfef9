//! Routing traces: every format round-trips, the sample traces moescope saved open alike, each
//! malformed file gives an error naming the file, the position and what was expected, and a run
//! stepped through a trace routes exactly the trace's tokens.

use moescope::engine::config::MoeConfig;
use moescope::engine::paths::PathSpec;
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec, TraceSpec};
use moescope::engine::trace::{RoutedBatch, RoutingTrace, TraceFormat, TraceKind};
use moescope::engine::BackendChoice;
use std::path::{Path, PathBuf};

fn dsv3() -> MoeConfig {
    MoeConfig::preset("deepseek-v3").unwrap()
}

fn sample(ext: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/routing/deepseek-v3-skew.{ext}"))
}

/// A small valid trace: 2 steps × 3 tokens × 8 distinct experts of 256.
fn small_trace() -> RoutingTrace {
    let batches: Vec<RoutedBatch> = (0..2u32)
        .map(|s| RoutedBatch {
            k: 8,
            ids: (0..3u32)
                .flat_map(|t| (0..8u32).map(move |i| (s * 40 + t * 9 + i * 17) % 256))
                .collect(),
            probs: (0..24).map(|i| (i as f32 + 1.0) / 100.0).collect(),
        })
        .collect();
    RoutingTrace::from_batches(&batches).unwrap()
}

#[test]
fn every_format_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let trace = small_trace();
    for ext in ["safetensors", "npy", "json"] {
        let path = dir.path().join(format!("t.{ext}"));
        trace.write(&path).unwrap();
        let back = RoutingTrace::read(&path, &dsv3(), None).unwrap();
        assert_eq!(back.source, path);
        assert_eq!((back.steps, back.tokens, back.k), (2, 3, 8), "{ext}");
        assert_eq!(back.ids, trace.ids, "{ext}");
        assert_eq!(back.kind, TraceKind::Ids);
        if ext == "npy" {
            // One array per .npy file: the ids.
            assert_eq!(back.weights, None);
            assert_eq!(back.batch(1).probs, vec![0.125; 24]);
        } else {
            assert_eq!(back.weights, trace.weights, "{ext}");
        }
        assert_eq!(back.batch(3), back.batch(1), "the trace repeats");
    }
}

#[test]
fn the_saved_sample_traces_agree_in_every_format() {
    let st = RoutingTrace::read(&sample("safetensors"), &dsv3(), None).unwrap();
    let npy = RoutingTrace::read(&sample("npy"), &dsv3(), None).unwrap();
    let json = RoutingTrace::read(&sample("json"), &dsv3(), None).unwrap();
    assert_eq!((st.steps, st.tokens, st.k), (4, 64, 8));
    assert_eq!(st.ids, npy.ids);
    assert_eq!(st.ids, json.ids);
    assert_eq!(st.weights, json.weights);
    // The sample is skewed: the hottest expert gets far more than the mean T·K/E = 2 per step.
    let mut load = vec![0u32; 256];
    st.batch(0).ids.iter().for_each(|&e| load[e as usize] += 1);
    assert!(*load.iter().max().unwrap() >= 16, "{load:?}");
}

#[test]
fn counts_become_steps_with_exactly_those_counts() {
    let mut counts = vec![vec![0i64; 256]; 2];
    // Layer 0: 4 tokens, experts 0..8 twice and 8..24 once each (sum 32 = 4 × 8).
    counts[0][..8].fill(2);
    counts[0][8..24].fill(1);
    counts[1][100..132].fill(1);
    let json = serde_json::json!({ "expert_counts": counts }).to_string();
    let cfg = dsv3();
    let tr = RoutingTrace::parse(
        json.as_bytes(),
        TraceFormat::Json,
        Path::new("c.json"),
        &cfg,
        None,
    )
    .unwrap();
    assert_eq!((tr.kind, tr.steps, tr.tokens), (TraceKind::Counts, 2, 4));
    for s in 0..2 {
        let mut load = vec![0i64; 256];
        tr.batch(s).ids.iter().for_each(|&e| load[e as usize] += 1);
        assert_eq!(load, counts[s as usize]);
    }
    let one = RoutingTrace::parse(
        json.as_bytes(),
        TraceFormat::Json,
        Path::new("c.json"),
        &cfg,
        Some(1),
    )
    .unwrap();
    assert_eq!(one.steps, 1);
    assert_eq!(one.batch(0), tr.batch(1));
}

#[test]
fn a_layer_of_a_tokens_layers_k_trace() {
    // [T=2, layers=3, K=8]: layer l of token t holds experts 10·l + t + i.
    let ids: Vec<Vec<Vec<u32>>> = (0..2)
        .map(|t| {
            (0..3)
                .map(|l| (0..8).map(|i| 10 * l + t + i).collect())
                .collect()
        })
        .collect();
    let json = serde_json::json!({ "topk_ids": ids }).to_string();
    let tr = RoutingTrace::parse(
        json.as_bytes(),
        TraceFormat::Json,
        Path::new("l.json"),
        &dsv3(),
        Some(2),
    )
    .unwrap();
    assert_eq!((tr.steps, tr.tokens), (1, 2));
    assert_eq!(&tr.ids[..8], &[20, 21, 22, 23, 24, 25, 26, 27]);
    assert_eq!(&tr.ids[8..], &[21, 22, 23, 24, 25, 26, 27, 28]);
}

/// The error of parsing `json` as `bad.json`, with its whole context chain.
fn json_error(json: serde_json::Value, layer: Option<usize>) -> String {
    let text = json.to_string();
    let err = RoutingTrace::parse(
        text.as_bytes(),
        TraceFormat::Json,
        Path::new("bad.json"),
        &dsv3(),
        layer,
    )
    .unwrap_err();
    format!("{err:#}")
}

fn ids(k: usize, first: i64) -> serde_json::Value {
    serde_json::json!([
        (0..k as i64).map(|i| first + i).collect::<Vec<_>>(),
        (10..10 + k as i64).collect::<Vec<_>>()
    ])
}

/// 256 counts, zero except at the given experts.
fn counts_row(set: &[(usize, i64)]) -> Vec<i64> {
    let mut row = vec![0; 256];
    set.iter().for_each(|&(e, c)| row[e] = c);
    row
}

#[test]
fn each_malformed_file_says_where_and_what_was_expected() {
    use serde_json::json;
    let cases: Vec<(String, &[&str])> = vec![
        (
            json_error(json!({"topk_ids": ids(8, 250)}), None),
            &[
                "`topk_ids`[0, 6] = 256",
                "expected an expert id in 0..256",
                "deepseek-v3",
            ],
        ),
        (
            json_error(json!({"topk_ids": ids(8, -1)}), None),
            &["`topk_ids`[0, 0] = -1", "0..256"],
        ),
        (
            json_error(json!({"topk_ids": ids(6, 0)}), None),
            &["routes 6 experts per token", "num_experts_per_tok 8"],
        ),
        (
            json_error(json!({"topk_ids": [1, 2, 3, 4, 5, 6, 7, 8]}), None),
            &["shape [8]", "expected [T, K], [steps, T, K]"],
        ),
        (
            json_error(json!({"topk_ids": [[[[1, 2, 3, 4, 5, 6, 7, 8]]]]}), None),
            &["shape [1, 1, 1, 8]"],
        ),
        (
            json_error(
                json!({"topk_ids": [[0, 1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 4, 5, 6, 7, 8]]}),
                None,
            ),
            &["`topk_ids`[0, 7] = 0 repeats an expert", "8 distinct"],
        ),
        (
            json_error(
                json!({"topk_ids": [[0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3]]}),
                None,
            ),
            &[
                "`topk_ids`[1] has 3 elements; expected 8",
                "not rectangular",
            ],
        ),
        (
            json_error(json!({"topk_ids": [[0, 1, 2, 3, 4, 5, 6, 7.5]]}), None),
            &["holds floats", "integer expert ids"],
        ),
        (
            json_error(
                json!({"topk_ids": ids(8, 0), "topk_weights": [[0.1, 0.2]]}),
                None,
            ),
            &["`topk_weights` has shape [1, 2]", "[2, 8]"],
        ),
        (
            json_error(
                json!({"topk_ids": [(0..8).collect::<Vec<_>>()], "topk_weights": [[0.1, 0.2, 0.3, 0.4, -1.0, 0.1, 0.1, 0.1]]}),
                None,
            ),
            &["`topk_weights`[0, 4] = -1", "finite weight ≥ 0"],
        ),
        (
            json_error(json!({"topk_ids": ids(8, 0)}), Some(0)),
            &["--routing-layer 0 needs ids [T, layers, K]", "[2, 8]"],
        ),
        (
            json_error(json!({"topk_ids": [[(0..8).collect::<Vec<_>>()]]}), Some(3)),
            &["--routing-layer 3 is out of range", "layers 0..1"],
        ),
        (
            json_error(json!({"expert_counts": [[1, 2, 3]]}), None),
            &["counts 3 experts", "n_routed_experts 256"],
        ),
        (
            json_error(
                json!({"expert_counts": [vec![1; 255].into_iter().chain([0]).collect::<Vec<i64>>()]}),
                None,
            ),
            &["row 0 sums to 255", "multiple of num_experts_per_tok 8"],
        ),
        (
            json_error(
                json!({"expert_counts": [counts_row(&[(0, 9), (255, 7)])]}),
                None,
            ),
            &["`expert_counts`[0, 0] = 9", "at most T = 2"],
        ),
        (
            json_error(json!({"expert_counts": [counts_row(&[(0, -8)])]}), None),
            &["`expert_counts`[0, 0] = -8", "count ≥ 0"],
        ),
        (
            json_error(json!({"ids": [[1]]}), None),
            &["no `topk_ids` or `expert_counts` key", "its keys are: ids"],
        ),
        (json_error(json!("hello"), None), &["expected an object"]),
    ];
    for (err, wants) in &cases {
        assert!(
            err.contains("routing file bad.json") || err.contains("bad.json"),
            "{err}"
        );
        for w in *wants {
            assert!(err.contains(w), "`{err}` lacks `{w}`");
        }
    }
}

#[test]
fn malformed_binary_files_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dsv3();
    let err = |p: &Path| format!("{:#}", RoutingTrace::read(p, &cfg, None).unwrap_err());

    let txt = dir.path().join("t.txt");
    std::fs::write(&txt, "1 2 3").unwrap();
    assert!(err(&txt).contains("expected a name ending in .safetensors, .npy or .json"));

    let missing = dir.path().join("none.npy");
    assert!(err(&missing).contains("cannot read routing file"));

    let garbage = dir.path().join("g.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let e = err(&garbage);
    assert!(
        e.contains("g.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );

    // A safetensors file with other tensors only lists them.
    let other = dir.path().join("o.safetensors");
    let data = [0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2], &data).unwrap();
    std::fs::write(
        &other,
        safetensors::serialize([("routed_experts", view)], None).unwrap(),
    )
    .unwrap();
    let e = err(&other);
    assert!(e.contains("its tensors are: routed_experts"), "{e}");

    // An .npy of floats, and one whose last dimension is neither K nor E.
    let floats = dir.path().join("f.npy");
    npyz::to_file_1d(&floats, [1.0f32; 8].iter().copied()).unwrap();
    let e = err(&floats);
    assert!(
        e.contains("f.npy") && e.contains("dtype `f4`") && e.contains("integer ids"),
        "{e}"
    );
    let odd = dir.path().join("odd.npy");
    npyz::to_file_1d(&odd, [1i32; 5].iter().copied()).unwrap();
    let e = err(&odd);
    assert!(
        e.contains("ends in 5") && e.contains("K = 8") && e.contains("E = 256"),
        "{e}"
    );

    let bad_json = dir.path().join("b.json");
    std::fs::write(&bad_json, "{\"topk_ids\": [[1, 2,").unwrap();
    assert!(err(&bad_json).contains("not valid JSON"));
}

#[test]
fn a_run_through_a_trace_routes_exactly_its_tokens() {
    let spec = RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".to_string()),
            hidden: Some(64),
            intermediate: Some(64),
            backend: BackendChoice::Cpu,
            ..LayerSpec::default()
        },
        tokens: 5,
        paths: PathSpec::default_pair(),
        hidden_states: None,
        kernel: None,
        router_logits: Default::default(),
        trace: TraceSpec {
            routing: Some(sample("safetensors")),
            keep_routing: true,
            ..TraceSpec::default()
        },
    };
    let (mut engine, _) = spec.build_engine().unwrap();
    assert_eq!(engine.tokens(), 64, "the trace's T replaces --tokens");
    let trace = RoutingTrace::read(&sample("safetensors"), &dsv3(), None).unwrap();
    for s in 0..2 {
        let rec = engine.step().unwrap();
        let mut want = vec![0u32; 256];
        trace
            .batch(s)
            .ids
            .iter()
            .for_each(|&e| want[e as usize] += 1);
        for p in &rec.paths {
            assert_eq!(&p.load[..256], &want[..], "path {}", p.name);
            assert!(p.contract.ok, "{:?}", p.contract.violations);
        }
        // The reference applies the trace's routing too.
        assert_eq!(rec.comparison.routing_agreement_ref, vec![1.0, 1.0]);
        assert!(rec.comparison.output_rel_l2_ref.iter().all(|&e| e < 1e-2));
    }
    assert_eq!(
        engine.saved_routing().unwrap(),
        &[trace.batch(0), trace.batch(1)]
    );
}
