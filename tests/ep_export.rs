//! EP exports from a CPU run with --ep: the per-rank load CSV has a row per step and placement
//! summing to T·K, the placement JSON has EPLB's shapes, and a session without EP figures is
//! refused with a clear error.

use moescope::engine::ep::EpSpec;
use moescope::engine::paths::PathSpec;
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec, TraceSpec};
use moescope::engine::step::StepRecord;
use moescope::engine::BackendChoice;
use moescope::session::export::write;
use moescope::session::{ExportFormat, SessionHeader};
use std::path::Path;

fn run(ep: Option<EpSpec>) -> (SessionHeader, Vec<StepRecord>) {
    let spec = RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".to_string()),
            hidden: Some(64),
            intermediate: Some(64),
            backend: BackendChoice::Cpu,
            ..LayerSpec::default()
        },
        tokens: 8,
        paths: PathSpec::default_pair(),
        hidden_states: None,
        trace: TraceSpec {
            routing: Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/data/routing/deepseek-v3-skew.safetensors"),
            ),
            ep,
            ..TraceSpec::default()
        },
        kernel: None,
        router_logits: Default::default(),
    };
    let (mut engine, _) = spec.build_engine().unwrap();
    let header = SessionHeader::new(&engine);
    let steps = (0..3).map(|_| engine.step().unwrap()).collect();
    (header, steps)
}

fn export(
    format: ExportFormat,
    header: &SessionHeader,
    steps: &[StepRecord],
) -> anyhow::Result<String> {
    let mut out = Vec::new();
    write(format, header, steps.iter().cloned().map(Ok), &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn load_csv_and_placement_json() {
    let (header, steps) = run(Some(EpSpec::new(8, 8, 2, None).unwrap()));
    assert!(steps.iter().all(|s| s.ep.is_some()));
    let csv = export(ExportFormat::EpLoad, &header, &steps).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "step,placement,r0,r1,r2,r3,r4,r5,r6,r7");
    assert_eq!(lines.len(), 1 + 3 * 3);
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        let sum: u64 = cells[2..].iter().map(|c| c.parse::<u64>().unwrap()).sum();
        assert_eq!(sum, 64 * 8, "{line}");
    }
    assert!(lines[3].starts_with("0,eplb,"));

    let doc: serde_json::Value =
        serde_json::from_str(&export(ExportFormat::EpPlacement, &header, &steps).unwrap()).unwrap();
    assert_eq!(doc["format"], "moescope-ep-placement");
    assert_eq!(doc["step"], 2);
    assert_eq!(doc["num_replicas"], 264);
    let phy2log = doc["phy2log"][0].as_array().unwrap();
    let logcnt = doc["logcnt"][0].as_array().unwrap();
    let log2phy = doc["log2phy"][0].as_array().unwrap();
    assert_eq!(
        (phy2log.len(), logcnt.len(), log2phy.len()),
        (264, 256, 256)
    );
    assert_eq!(logcnt.iter().map(|c| c.as_u64().unwrap()).sum::<u64>(), 264);
    // log2phy and phy2log agree.
    for (e, slots) in log2phy.iter().enumerate() {
        for p in slots
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_i64())
            .filter(|&p| p >= 0)
        {
            assert_eq!(phy2log[p as usize].as_u64().unwrap(), e as u64);
        }
    }
}

#[test]
fn a_session_without_ep_is_refused() {
    let (header, steps) = run(None);
    for f in [ExportFormat::EpLoad, ExportFormat::EpPlacement] {
        let err = export(f, &header, &steps).unwrap_err().to_string();
        assert!(
            err.contains("step 0 has no expert-parallel figures") && err.contains("--ep N"),
            "{err}"
        );
    }
}
