//! Opening a 100 000-step session: time (criterion) and memory (printed, and checked against a
//! bound). The session is generated from one real CPU step of the DeepSeek-V3 routing shape,
//! written 100 000 times with the step counter and clock advanced — the same bytes per line as
//! a real recording of that shape.
//!
//! `cargo bench --bench session_open`

use criterion::{criterion_group, criterion_main, Criterion};
use moescope::engine::paths::PathSpec;
use moescope::engine::spec::{LayerSpec, RunSpec};
use moescope::engine::BackendChoice;
use moescope::session::summary::Summary;
use moescope::session::{export, ExportFormat, SessionHeader, SessionReader, SessionWriter};
use std::path::Path;
use std::time::{Duration, Instant};

const STEPS: usize = 100_000;
/// Opening may use at most this much memory beyond what the process held before.
const MEMORY_BOUND_MIB: f64 = 32.0;

fn generate(path: &Path) -> u64 {
    let spec = RunSpec {
        layer: LayerSpec {
            backend: BackendChoice::Cpu,
            ..LayerSpec::default()
        },
        tokens: 64,
        paths: PathSpec::default_pair(),
        hidden_states: None,
        trace: Default::default(),
        kernel: None,
        router_logits: Default::default(),
    };
    let (mut engine, _) = spec.build_engine().expect("a CPU engine");
    let header = SessionHeader::new(&engine);
    let mut record = engine.step().expect("one step");
    let mut writer = SessionWriter::create(path, &header, true).expect("a session file");
    let t0 = record.t_ms;
    for i in 0..STEPS {
        record.step = i as u64;
        record.t_ms = t0 + i as f64 * record.wall_us / 1e3;
        writer.write(&record).expect("a step written");
    }
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A field of /proc/self/status in KiB (Linux), e.g. VmRSS or VmHWM.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn session_open(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("large.jsonl");
    let t = Instant::now();
    let bytes = generate(&path);
    eprintln!(
        "generated {STEPS} steps, {:.0} MiB ({:.1} KiB a step) in {:.1} s",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / STEPS as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );

    // Memory: reset the peak-RSS mark (Linux: clear_refs 5), open, read the peak.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let (mut reader, warnings) = SessionReader::open(&path).expect("the session opens");
    let open_s = t.elapsed().as_secs_f64();
    let after = status_kib("VmRSS:").unwrap_or(0);
    let peak = status_kib("VmHWM:").unwrap_or(0);
    assert_eq!(reader.len(), STEPS);
    assert!(warnings.is_empty());
    let mib = |kib: u64| kib as f64 / 1024.0;
    let grew = mib(after.saturating_sub(before));
    let peak_grew = mib(peak.saturating_sub(before));
    eprintln!(
        "first open: {open_s:.3} s; RSS {:.1} MiB before, {:.1} MiB after (+{grew:.1}); \
         peak +{peak_grew:.1} MiB{}",
        mib(before),
        mib(after),
        if reset {
            ""
        } else {
            " (peak not reset: includes generation)"
        }
    );
    assert!(
        grew < MEMORY_BOUND_MIB && (!reset || peak_grew < MEMORY_BOUND_MIB),
        "opening grew memory by {grew:.1} MiB (peak {peak_grew:.1}); bound {MEMORY_BOUND_MIB} MiB"
    );
    let last = reader.read(STEPS - 1).expect("the last step");
    assert_eq!(last.step, (STEPS - 1) as u64);

    // Whole-session passes parse every step: timed once, for the record.
    let header = reader.header().clone();
    let t = Instant::now();
    let summary = Summary::of_steps(&header, reader.steps()).expect("a summary");
    assert_eq!(summary.steps, STEPS as u64);
    eprintln!(
        "replay --summary of {STEPS} steps: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    export::write(
        ExportFormat::Chrome,
        &header,
        reader.steps(),
        &mut std::io::sink(),
    )
    .expect("a chrome export");
    eprintln!(
        "chrome export of {STEPS} steps: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    drop(reader);

    let mut group = c.benchmark_group("session");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("open 100k steps", |b| {
        b.iter(|| SessionReader::open(&path).expect("the session opens"))
    });
    let (mut reader, _) = SessionReader::open(&path).expect("the session opens");
    let mut i = 0usize;
    group.bench_function("read one step at random", |b| {
        b.iter(|| {
            i = (i * 7919 + 13) % STEPS;
            reader.read(i).expect("a step")
        })
    });
    group.finish();
}

criterion_group!(benches, session_open);
criterion_main!(benches);
