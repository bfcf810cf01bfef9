//! Record → replay → export on the CPU backend: what comes back out equals what went in.

mod session_util;

use moescope::engine::paths::Variant;
use moescope::engine::stats::imbalance;
use moescope::engine::step::StepRecord;
use moescope::session::export::{self, CSV_HEADER};
use moescope::session::summary::Summary;
use moescope::session::{ExportFormat, SessionHeader, SessionReader, SessionWriter};
use serde_json::Value;
use session_util::{record, validate_chrome_trace};
use std::path::Path;

fn read_all(path: &Path) -> (SessionHeader, Vec<StepRecord>, Vec<String>) {
    let (mut reader, warnings) = SessionReader::open(path).unwrap();
    let header = reader.header().clone();
    let steps = reader.steps().collect::<anyhow::Result<Vec<_>>>().unwrap();
    assert_eq!(steps.len(), reader.len());
    (header, steps, warnings)
}

fn export_to_string(path: &Path, format: ExportFormat) -> String {
    let (mut reader, _) = SessionReader::open(path).unwrap();
    let header = reader.header().clone();
    let mut out = Vec::new();
    export::write(format, &header, reader.steps(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn recorded_steps_read_back_equal_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, records) = record(&path, 4, Variant::Correct);
    assert_eq!(header.format, "moescope-session");
    assert_eq!(header.backend, moescope::engine::BackendKind::Cpu);
    assert_eq!(header.paths.len(), 2);
    assert!(header.weights.contains("seed 7"), "{}", header.weights);
    assert!(header.started.ends_with('Z') && header.started.len() == 20);

    let (read_header, steps, warnings) = read_all(&path);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(read_header, header);
    assert_eq!(steps, records);

    // Random access: backwards.
    let (mut reader, _) = SessionReader::open(&path).unwrap();
    for i in (0..records.len()).rev() {
        assert_eq!(reader.read(i).unwrap(), records[i]);
    }
    let err = reader.read(records.len()).unwrap_err().to_string();
    assert!(
        err.contains("out of range") && err.contains("4 steps"),
        "{err}"
    );
}

#[test]
fn an_existing_session_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, records) = record(&path, 1, Variant::Correct);
    let err = SessionWriter::create(&path, &header, false)
        .err()
        .expect("an existing file must be refused")
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    // The refused attempt left the file as it was.
    assert_eq!(read_all(&path).1, records);
    let mut w = SessionWriter::create(&path, &header, true).unwrap();
    // Two steps (a repeated step number would be flagged and kept once).
    let mut second = records[0].clone();
    second.step = 1;
    w.write(&records[0]).unwrap();
    w.write(&second).unwrap();
    assert_eq!(read_all(&path).1.len(), 2);
}

#[test]
fn summary_aggregates_what_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, records) = record(&path, 5, Variant::Correct);
    let (mut reader, _) = SessionReader::open(&path).unwrap();
    let s = Summary::of_steps(&header, reader.steps()).unwrap();
    assert_eq!(s.steps, 5);
    assert_eq!((s.first_step, s.last_step), (Some(0), Some(4)));
    let experts = header.config.n_routed_experts;
    for (i, p) in s.paths.iter().enumerate() {
        assert_eq!(p.name, records[0].paths[i].name);
        let kernels: Vec<&str> = records[0].paths[i]
            .timings
            .iter()
            .map(|t| t.stage.name())
            .collect();
        let got: Vec<&str> = p.kernels.iter().map(|k| k.stage.name()).collect();
        assert_eq!(got, kernels);
        for k in &p.kernels {
            let times: Vec<f64> = records
                .iter()
                .map(|r| {
                    r.paths[i]
                        .timings
                        .iter()
                        .find(|t| t.stage == k.stage)
                        .unwrap()
                        .us
                })
                .collect();
            let max = times.iter().cloned().fold(f64::MIN, f64::max);
            assert_eq!(k.us.n, 5);
            assert_eq!(k.us.max, max);
            assert!(k.us.min <= k.us.p50 && k.us.p50 <= k.us.p99 && k.us.p99 <= k.us.max);
        }
        let mut total = vec![0u64; experts];
        for r in &records {
            for (t, &n) in total.iter_mut().zip(&r.paths[i].load) {
                *t += u64::from(n);
            }
        }
        assert_eq!(p.load_total, total);
        assert_eq!(p.session_imbalance, imbalance(&total));
        assert_eq!(p.contract.ok_steps, 5, "{:?}", p.contract);
        assert_eq!(p.contract.violated_steps, 0);
        let hottest = p.hottest_experts[0];
        assert_eq!(hottest.1, *total.iter().max().unwrap());
    }
    let text = s.render("s.jsonl");
    for needle in [
        "kernel times",
        "load imbalance",
        "scaling contract",
        "holds on all 5 steps",
    ] {
        assert!(text.contains(needle), "summary lacks `{needle}`:\n{text}");
    }
}

#[test]
fn summary_names_a_violated_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, records) = record(&path, 3, Variant::RsfTwice);
    let (mut reader, _) = SessionReader::open(&path).unwrap();
    let s = Summary::of_steps(&header, reader.steps()).unwrap();
    assert_eq!(s.paths[0].contract.violated_steps, 0);
    let b = &s.paths[1].contract;
    assert_eq!(b.violated_steps, 3);
    let first = b.first_violation.as_ref().unwrap();
    assert_eq!(first.step, 0);
    assert_eq!(first.violations, records[0].paths[1].contract.violations);
    assert!(
        first.message.starts_with("routed sum "),
        "{}",
        first.message
    );
    let text = s.render("s.jsonl");
    assert!(text.contains("VIOLATED on 3 of 3 steps"), "{text}");
    assert!(text.contains(&first.message), "{text}");
}

#[test]
fn json_export_holds_header_steps_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, records) = record(&path, 3, Variant::Correct);
    let doc: Value = serde_json::from_str(&export_to_string(&path, ExportFormat::Json)).unwrap();
    assert_eq!(doc["format"], "moescope-export");
    let h: SessionHeader = serde_json::from_value(doc["header"].clone()).unwrap();
    assert_eq!(h, header);
    let steps: Vec<StepRecord> = serde_json::from_value(doc["steps"].clone()).unwrap();
    assert_eq!(steps, records);
    assert_eq!(doc["summary"]["steps"], 3);
}

#[test]
fn eplb_export_is_the_load_matrix_of_path_a() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, records) = record(&path, 3, Variant::Correct);
    let doc: Value = serde_json::from_str(&export_to_string(&path, ExportFormat::Eplb)).unwrap();
    let experts = header.config.n_routed_experts;
    assert_eq!(doc["num_logical_experts"], experts);
    assert_eq!(doc["steps"], 3);
    let weight: Vec<Vec<u64>> = serde_json::from_value(doc["weight"].clone()).unwrap();
    assert_eq!(weight.len(), 3);
    for (row, r) in weight.iter().zip(&records) {
        let load: Vec<u64> = r.paths[0].load[..experts]
            .iter()
            .map(|&n| n.into())
            .collect();
        assert_eq!(row, &load);
        // Every token picks top_k routed experts.
        let k = header.config.num_experts_per_tok;
        assert_eq!(row.iter().sum::<u64>(), (r.tokens * k) as u64);
    }
    let total: Vec<Vec<u64>> = serde_json::from_value(doc["total"].clone()).unwrap();
    assert_eq!(total.len(), 1);
    for e in 0..experts {
        assert_eq!(total[0][e], weight.iter().map(|row| row[e]).sum::<u64>());
    }
}

#[test]
fn csv_export_has_one_row_per_step_path_and_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (_, records) = record(&path, 2, Variant::Correct);
    let text = export_to_string(&path, ExportFormat::Csv);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let columns = CSV_HEADER.split(',').count();
    let mut expected = Vec::new();
    for r in &records {
        for p in &r.paths {
            for (i, t) in p.timings.iter().enumerate() {
                expected.push((r.step, p.name.name(), t.stage.name(), i, t.us));
            }
        }
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), expected.len());
    for (row, (step, path_name, kernel, i, us)) in rows.iter().zip(expected) {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f.len(), columns, "{row}");
        assert_eq!(f[0].parse::<u64>().unwrap(), step);
        assert_eq!(f[3], path_name);
        assert_eq!(f[4], kernel);
        assert_eq!(f[5].parse::<usize>().unwrap(), i);
        assert_eq!(f[6].parse::<f64>().unwrap(), us);
    }
}

#[test]
fn chrome_export_is_a_valid_trace_with_one_track_per_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, records) = record(&path, 3, Variant::Correct);
    let text = export_to_string(&path, ExportFormat::Chrome);
    let t = validate_chrome_trace(&text);
    assert_eq!(t.process_names.len(), 2);
    // Track 0: the steps; tracks 1 and 2: paths A and B.
    assert_eq!(t.slices[&(1, 0)].len(), 3);
    for (i, name) in ["A", "B"].iter().enumerate() {
        let track = (1, i as u64 + 1);
        assert!(t.thread_names[&track].starts_with(&format!("path {name}: ")));
        let expected: Vec<String> = records
            .iter()
            .flat_map(|r| {
                std::iter::once(format!("path {name} step {}", r.step)).chain(
                    r.paths[i]
                        .timings
                        .iter()
                        .map(|k| k.stage.name().to_string()),
                )
            })
            .collect();
        assert_eq!(t.slices[&track], expected);
    }
    for c in [
        "load A",
        "load B",
        "load imbalance (max/mean)",
        "routed weight sum (mean)",
    ] {
        assert!(t.counters.contains(c), "no counter `{c}`: {:?}", t.counters);
    }
    // DeepSeek-V3 has a shared expert: its weight is a counter too.
    assert!(header.config.n_shared_experts > 0);
    assert!(t.counters.contains("shared weight (mean)"));
}

#[test]
fn chrome_export_carries_telemetry_counters() {
    use moescope::engine::step::TelemetrySample;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, mut records) = record(&path, 2, Variant::Correct);
    records[1].telemetry = Some(TelemetrySample {
        power_w: Some(312.5),
        sm_clock_mhz: Some(1980),
        throttle_reasons: vec!["sw_power_cap".to_string()],
        ..TelemetrySample::default()
    });
    let mut out = Vec::new();
    export::write(
        ExportFormat::Chrome,
        &header,
        records.into_iter().map(Ok),
        &mut out,
    )
    .unwrap();
    let t = validate_chrome_trace(std::str::from_utf8(&out).unwrap());
    for c in ["power W", "SM clock MHz", "throttled"] {
        assert!(t.counters.contains(c), "no counter `{c}`");
    }
    assert!(
        !t.counters.contains("temperature C"),
        "absent readings are not counters"
    );
}

#[test]
fn nan_numerics_survive_recording_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (header, mut records) = record(&path, 1, Variant::Correct);
    let mut r = records.remove(0);
    r.comparison.output_rel_l2_ab = f64::NAN;
    r.paths[1].routed_weight_sum.mean = f64::NAN;
    r.paths[1].timings[0].us = f64::NAN;
    let nan_path = dir.path().join("nan.jsonl");
    let mut w = SessionWriter::create(&nan_path, &header, false).unwrap();
    w.write(&r).unwrap();
    let (_, steps, _) = read_all(&nan_path);
    assert!(steps[0].comparison.output_rel_l2_ab.is_nan());
    assert!(steps[0].paths[1].routed_weight_sum.mean.is_nan());
    let (mut reader, _) = SessionReader::open(&nan_path).unwrap();
    let s = Summary::of_steps(&header, reader.steps()).unwrap();
    assert_eq!(s.output_rel_l2_ab.nonfinite, 1);
    assert!(s.render("nan.jsonl").contains("NaN on 1 steps"));
    validate_chrome_trace(&export_to_string(&nan_path, ExportFormat::Chrome));
}

#[test]
fn a_variant_switched_mid_session_shows_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let (mut engine, _) = session_util::small_spec(Variant::Correct)
        .build_engine()
        .unwrap();
    let header = SessionHeader::new(&engine);
    let mut w = SessionWriter::create(&path, &header, false).unwrap();
    for step in 0..4 {
        if step == 2 {
            // What the TUI's variant key does.
            engine.set_variant(Variant::SharedInvRsf);
        }
        w.write(&engine.step().unwrap()).unwrap();
    }
    let (mut reader, _) = SessionReader::open(&path).unwrap();
    let s = Summary::of_steps(&header, reader.steps()).unwrap();
    let b = &s.paths[1];
    assert_eq!(b.label, header.paths[1].label());
    assert_eq!(b.other_labels.len(), 1);
    assert!(
        b.other_labels[0].contains("shared-inv-rsf"),
        "{:?}",
        b.other_labels
    );
    assert_eq!((b.contract.ok_steps, b.contract.violated_steps), (2, 2));
    assert_eq!(b.contract.first_violation.as_ref().unwrap().step, 2);
    assert!(s.render("s.jsonl").contains("later in the session"));
}

#[test]
fn the_header_describes_the_run_from_the_engine_alone() {
    let mut spec = session_util::small_spec(Variant::Hardcoded2_5);
    spec.layer.skew = 0.5;
    spec.layer.tp = 2;
    let (engine, _) = spec.build_engine().unwrap();
    let from_engine = SessionHeader::new(&engine);
    assert_eq!(from_engine.paths[1].variant, Variant::Hardcoded2_5);
    assert_eq!(from_engine.config, *engine.config());
    assert!(
        from_engine.started.ends_with('Z') && from_engine.started.len() == 20,
        "RFC 3339 UTC to the second: {}",
        from_engine.started
    );
    assert_eq!(
        from_engine.weights,
        "synthetic, seed 7, skew 0.5, tp 2 (one rank)"
    );
}
