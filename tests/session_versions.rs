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
