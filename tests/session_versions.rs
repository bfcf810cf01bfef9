//! Sessions recorded by earlier versions keep opening. The samples in `sessions/` are format
//! version 1, whose contract carried an English `message`: reading them derives the typed
//! violations, and wording those gives back exactly the message the file holds.

use moescope::engine::step::ContractViolation;
use moescope::session::summary::Summary;
use moescope::session::words;
use moescope::session::{SessionReader, SESSION_VERSION};
use std::path::Path;

const SAMPLES: &[&str] = &[
    "sessions/h100-deepseek-v3-t256-correct.jsonl",
    "sessions/h100-deepseek-v3-t256-shared-inv-rsf.jsonl",
];

/// The `message` of every path of every step, as the file holds it.
fn recorded_messages(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["paths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["contract"]["message"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn version_1_samples_open_and_their_verdicts_read_as_recorded() {
    for sample in SAMPLES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(sample);
        let (mut reader, warnings) = SessionReader::open(&path).unwrap();
        assert!(warnings.is_empty(), "{sample}: {warnings:?}");
        assert_eq!(reader.header().version, 1, "{sample}");
        let messages = recorded_messages(&path);
        assert_eq!(reader.len(), messages.len(), "{sample}");
        for (i, want) in messages.iter().enumerate() {
            let r = reader.read(i).unwrap();
            let got: Vec<String> = r
                .paths
                .iter()
                .map(|p| words::verdict(&p.contract))
                .collect();
            assert_eq!(&got, want, "{sample} step {i}");
            for p in &r.paths {
                assert_eq!(p.contract.ok, p.contract.violations.is_empty());
            }
        }
        let header = reader.header().clone();
        let s = Summary::of_steps(&header, reader.steps()).unwrap();
        assert_eq!(s.steps as usize, messages.len());
    }
}

#[test]
fn the_broken_sample_carries_the_numbers_of_its_violation() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLES[1]);
    let (mut reader, _) = SessionReader::open(&path).unwrap();
    let r = reader.read(0).unwrap();
    let b = &r.paths[1];
    let [ContractViolation::SharedWeight { got, expected }] = b.contract.violations[..] else {
        panic!("{:?}", b.contract.violations);
    };
    assert_eq!(got, b.shared_weight.unwrap().mean);
    assert_eq!(expected, 1.0);
    assert!((got - 0.4).abs() < 1e-6, "{got}");
}

#[test]
fn new_records_carry_violations_and_no_message() {
    assert_eq!(SESSION_VERSION, 2);
    let text = r#"{"ok":false,"expected_routed_sum":{"mean":2.5,"min":2.5,"max":2.5},
        "expected_shared":null,"routed_max_dev":0.5,"shared_max_dev":0.0,
        "violations":[{"kind":"routed_sum","got":null,"expected":2.5}]}"#;
    let c: moescope::engine::step::ContractCheck = serde_json::from_str(text).unwrap();
    let [ContractViolation::RoutedSum { got, expected }] = c.violations[..] else {
        panic!("{:?}", c.violations);
    };
    assert!(got.is_nan(), "a NaN mean survives the round trip as null");
    assert_eq!(expected, 2.5);
    let back = serde_json::to_value(&c).unwrap();
    assert!(back.get("message").is_none(), "{back}");
    assert_eq!(back["violations"][0]["kind"], "routed_sum");
}

/// The format-2 samples recorded on an H200 with path C (bf16 logits) and with FP8 experts keep
/// opening with what they recorded: three paths with C named by its file, the formats of each
/// path, every token compared, and the FP8 numerics.
#[test]
fn h200_samples_open_with_path_c_and_fp8_as_recorded() {
    use moescope::engine::paths::{ExpertFormat, LogitsDtype, PathId};
    let open = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("sessions")
            .join(name);
        let (reader, warnings) = SessionReader::open(&path).unwrap();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        assert_eq!(reader.header().version, SESSION_VERSION, "{name}");
        assert_eq!(reader.len(), 30, "{name}");
        reader
    };
    let mut three = open("h200-deepseek-v3-t256-three-paths.jsonl");
    let c = &three.header().paths[2];
    assert_eq!(c.kernel.as_deref(), Some("fused_router.cu"));
    assert_eq!(c.logits, LogitsDtype::Bf16);
    assert_eq!(c.title(PathId::C), "C fused_router.cu bf16");
    for i in 0..three.len() {
        let r = three.read(i).unwrap();
        assert_eq!(r.paths.len(), 3);
        assert_eq!(
            r.comparison.sampled_tokens, 256,
            "every token compared on the device"
        );
        assert!(r.paths.iter().all(|p| p.contract.ok), "step {i}");
        // bf16 logits move a few tokens, as near ties; A and B route as the reference.
        assert_eq!(r.comparison.routing_agreement_ref[0], 1.0);
        assert_eq!(r.comparison.ties_ref[2].real, 0, "step {i}");
    }
    let mut fp8 = open("h200-deepseek-v3-t256-fp8.jsonl");
    let [a, b] = [&fp8.header().paths[0], &fp8.header().paths[1]];
    assert_eq!(
        (a.experts, a.shared_experts),
        (ExpertFormat::Fp8, ExpertFormat::Bf16)
    );
    assert_eq!(
        (b.experts, b.shared_experts),
        (ExpertFormat::Fp8, ExpertFormat::Fp8)
    );
    for i in 0..fp8.len() {
        let r = fp8.read(i).unwrap();
        let f = r.comparison.expert_formats[1]
            .as_ref()
            .expect("B's FP8 numerics");
        assert!(f.on_device && f.tokens == 256, "step {i}");
        // e4m3 weights and activations against f64 on the same FP8 weights: a few percent.
        assert!(
            f.dequant_rel_l2 > 1e-3 && f.dequant_rel_l2 < 0.1,
            "{}",
            f.dequant_rel_l2
        );
    }
}
