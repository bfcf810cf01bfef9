//! Helpers shared by the session tests: a small CPU engine, recorded sessions, and a structural
//! validator for the Chrome Trace Event Format.
#![allow(dead_code)] // each test crate uses a different subset

use moescope::engine::paths::PathSpec;
use moescope::engine::paths::Variant;
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec};
use moescope::engine::step::StepRecord;
use moescope::engine::BackendChoice;
use moescope::session::{SessionHeader, SessionWriter};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// DeepSeek-V3 routing (256 experts, 8 groups, a shared expert) with tiny expert matrices, so
/// a step takes milliseconds even in a debug build.
pub fn small_spec(variant: Variant) -> RunSpec {
    RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".to_string()),
            hidden: Some(64),
            intermediate: Some(64),
            backend: BackendChoice::Cpu,
            ..LayerSpec::default()
        },
        tokens: 8,
        paths: vec![PathSpec::unfused_baseline(), PathSpec::fused(variant)],
        hidden_states: None,
        trace: Default::default(),
        kernel: None,
        router_logits: Default::default(),
    }
}

/// Records `steps` steps of the small engine to `path`; returns what was written.
pub fn record(path: &Path, steps: usize, variant: Variant) -> (SessionHeader, Vec<StepRecord>) {
    let (mut engine, _) = small_spec(variant).build_engine().unwrap();
    let header = SessionHeader::new(&engine);
    let mut w = SessionWriter::create(path, &header, false).unwrap();
    let mut records = Vec::new();
    for _ in 0..steps {
        let r = engine.step().unwrap();
        w.write(&r).unwrap();
        records.push(r);
    }
    assert_eq!(w.steps(), steps as u64);
    (header, records)
}

/// What a valid trace held, for assertions.
#[derive(Debug, Default)]
pub struct TraceStats {
    /// (pid, tid) → names of its X events, in file order.
    pub slices: BTreeMap<(u64, u64), Vec<String>>,
    /// Counter names.
    pub counters: BTreeSet<String>,
    /// (pid, tid) → thread name; pid → process name.
    pub thread_names: BTreeMap<(u64, u64), String>,
    pub process_names: BTreeMap<u64, String>,
    pub events: usize,
}

fn num(e: &Value, key: &str, i: usize) -> f64 {
    let v = e
        .get(key)
        .unwrap_or_else(|| panic!("event {i} has no `{key}`: {e}"));
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("event {i}: `{key}` is not a number: {e}"));
    assert!(x.is_finite() && x >= 0.0, "event {i}: `{key}` = {x}: {e}");
    x
}

fn int(e: &Value, key: &str, i: usize) -> u64 {
    e.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("event {i}: `{key}` is not a non-negative integer: {e}"))
}

/// Checks a Chrome trace (JSON object format) against the Trace Event Format's rules for the
/// phases moescope writes, and that complete events on one track nest (what Perfetto needs):
/// - every event: string `name` and `ph`, integer `pid` and `tid`, object `args`;
/// - X: numeric `ts` and `dur` ≥ 0 (µs), no null args; C: numeric `ts`, args all finite numbers;
/// - M: a known metadata name with `args.name` (string) or `args.sort_index` (integer).
pub fn validate_chrome_trace(text: &str) -> TraceStats {
    let doc: Value = serde_json::from_str(text).expect("the trace is one JSON document");
    // The format knows two display units.
    if let Some(unit) = doc.get("displayTimeUnit") {
        assert!(unit == "ms" || unit == "ns", "displayTimeUnit {unit}");
    }
    let events = doc["traceEvents"]
        .as_array()
        .expect("the trace has a `traceEvents` array");
    let mut stats = TraceStats {
        events: events.len(),
        ..TraceStats::default()
    };
    // (pid, tid) → (start ns, end ns) of X events.
    let mut spans: BTreeMap<(u64, u64), Vec<(i64, i64)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let name = e["name"]
            .as_str()
            .unwrap_or_else(|| panic!("event {i} has no string name: {e}"));
        let ph = e["ph"]
            .as_str()
            .unwrap_or_else(|| panic!("event {i} has no string ph: {e}"));
        let (pid, tid) = (int(e, "pid", i), int(e, "tid", i));
        let args = e["args"]
            .as_object()
            .unwrap_or_else(|| panic!("event {i}: args is not an object: {e}"));
        match ph {
            "X" => {
                let (ts, dur) = (num(e, "ts", i), num(e, "dur", i));
                assert!(
                    args.values().all(|v| !v.is_null()),
                    "event {i}: a null arg: {e}"
                );
                let start = (ts * 1e3).round() as i64;
                spans
                    .entry((pid, tid))
                    .or_default()
                    .push((start, start + (dur * 1e3).round() as i64));
                stats
                    .slices
                    .entry((pid, tid))
                    .or_default()
                    .push(name.to_string());
            }
            "C" => {
                num(e, "ts", i);
                assert!(!args.is_empty(), "event {i}: a counter without values: {e}");
                for (k, v) in args {
                    let x = v
                        .as_f64()
                        .unwrap_or_else(|| panic!("event {i}: counter `{k}` is not a number"));
                    assert!(x.is_finite(), "event {i}: counter `{k}` = {x}");
                }
                stats.counters.insert(name.to_string());
            }
            "M" => match name {
                "process_name" => {
                    let n = args["name"].as_str().expect("process_name has args.name");
                    stats.process_names.insert(pid, n.to_string());
                }
                "thread_name" => {
                    let n = args["name"].as_str().expect("thread_name has args.name");
                    stats.thread_names.insert((pid, tid), n.to_string());
                }
                "process_sort_index" | "thread_sort_index" => {
                    assert!(
                        args["sort_index"].is_i64(),
                        "event {i}: sort_index not an integer"
                    );
                }
                other => panic!("event {i}: unknown metadata event `{other}`"),
            },
            other => panic!("event {i}: moescope writes no `{other}` events"),
        }
    }
    for (track, mut list) in spans {
        assert!(
            stats.thread_names.contains_key(&track),
            "track {track:?} has slices but no thread_name"
        );
        // Longer first at equal starts, so parents come before their children.
        list.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut open: Vec<i64> = Vec::new();
        for (start, end) in list {
            while open.last().is_some_and(|&top| top <= start) {
                open.pop();
            }
            if let Some(&top) = open.last() {
                assert!(
                    end <= top,
                    "track {track:?}: slice [{start}, {end}] ns overlaps its parent ending at {top}"
                );
            }
            open.push(end);
        }
    }
    stats
}
