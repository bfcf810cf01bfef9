//! The fuzz suite (issue 17), bounded in time: proptest over mutated valid inputs and arbitrary
//! bytes for the session reader, safetensors router inputs and hidden states, config.json and
//! routing files. Each ends in `Ok` or an error, never a panic; a damaged session keeps at least
//! every step line the damage did not touch. 100 000 cases a target by default (CI);
//! `MOESCOPE_FUZZ_CASES=N` sets another count. docs/reliability.md has the timings.

mod checkpoint_support;

use checkpoint_support::{serialize, t};
use moescope::engine::config::MoeConfig;
use moescope::engine::inputs::parse_router_inputs;
use moescope::engine::paths::PathSpec;
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec};
use moescope::engine::trace::{RoutingTrace, TraceFormat};
use moescope::engine::weights::checkpoint::parse_hidden_states;
use moescope::engine::BackendChoice;
use moescope::session::{SessionHeader, SessionReader, SessionWriter};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// A folder in memory where there is one: a file written per case must not wait for a disk.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn cases() -> u32 {
    std::env::var("MOESCOPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Runs `test` on `strategy`'s cases; a failure names the reason and keeps the input in a file
/// (printing it would bury the reason under kilobytes of bytes).
fn run_cases<S>(name: &str, strategy: &S, test: impl Fn(Vec<u8>) -> Result<(), TestCaseError>)
where
    S: Strategy<Value = Vec<u8>>,
{
    use proptest::test_runner::TestError;
    let t = std::time::Instant::now();
    let result = runner().run(strategy, test);
    eprintln!(
        "{name}: {} cases in {:.2} s",
        cases(),
        t.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, bytes)) => {
            let path = std::env::temp_dir().join(format!("moescope-fuzz-{name}.bin"));
            let _ = std::fs::write(&path, &bytes);
            panic!(
                "{name}: {why} (input of {} bytes kept in {})",
                bytes.len(),
                path.display()
            );
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    })
}

/// Edits to a valid input: overwrite, insert or delete bytes, cut the end, or duplicate a range.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Repeat(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Set(a, b)),
        2 => (any::<usize>(), proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'{'), Just(b'}'), Just(b'"'), any::<u8>()], 1..12))
            .prop_map(|(a, v)| Edit::Insert(a, v)),
        2 => (any::<usize>(), 1usize..64).prop_map(|(a, n)| Edit::Delete(a, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), 1usize..400).prop_map(|(a, n)| Edit::Repeat(a, n)),
    ]
}

fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        let len = b.len().max(1);
        match e {
            Edit::Set(at, v) if !b.is_empty() => b[at % len] = *v,
            Edit::Insert(at, v) => {
                let at = at % (b.len() + 1);
                b.splice(at..at, v.iter().copied());
            }
            Edit::Delete(at, n) if !b.is_empty() => {
                let at = at % len;
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Edit::Truncate(at) => b.truncate(at % (b.len() + 1)),
            Edit::Repeat(at, n) if !b.is_empty() => {
                let at = at % len;
                let end = (at + n).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(end..end, copy);
            }
            _ => {}
        }
    }
    b
}

fn inputs(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(edit(), 1..6).prop_map(move |e| apply(seed, &e)),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A recorded 4-step session of a small layer (8 experts), its bytes and its line count.
fn session() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let spec = RunSpec {
            layer: LayerSpec {
                source: LayerSource::Preset("mixtral-8x7b".into()),
                hidden: Some(64),
                intermediate: Some(64),
                backend: BackendChoice::Cpu,
                ..LayerSpec::default()
            },
            tokens: 1,
            paths: PathSpec::default_pair(),
            hidden_states: None,
            trace: Default::default(),
            kernel: None,
            router_logits: Default::default(),
        };
        let (mut engine, _) = spec.build_engine().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut w = SessionWriter::create(&path, &SessionHeader::new(&engine), false).unwrap();
        for _ in 0..4 {
            w.write(&engine.step().unwrap()).unwrap();
        }
        std::fs::read(&path).unwrap()
    })
}

/// Step lines of `original` that appear whole, on a line of their own, in `damaged`.
fn untouched_steps(original: &[u8], damaged: &[u8]) -> usize {
    let lines: std::collections::HashSet<&[u8]> = damaged.split(|&b| b == b'\n').collect();
    let mut seen = std::collections::HashSet::new();
    original
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|l| !l.is_empty() && lines.contains(l) && seen.insert(*l))
        .count()
}

fn read_session(path: &Path) -> Option<usize> {
    let (mut reader, _) = SessionReader::open(path).ok()?;
    let mut n = 0;
    for step in reader.steps() {
        step.ok()?;
        n += 1;
    }
    let _ = reader.report();
    Some(n)
}

#[test]
fn the_session_reader_keeps_every_untouched_step() {
    let seed: &'static [u8] = session();
    let header_len = seed.iter().position(|&b| b == b'\n').unwrap() + 1;
    let dir = scratch();
    let path = dir.path().join("s.jsonl");
    run_cases("session", &inputs(seed), |bytes| {
        std::fs::write(&path, &bytes).unwrap();
        let kept = read_session(&path);
        // With the header intact, every step line the damage left whole is kept (the
        // first copy of a repeated one; a step line fused with the header is gone).
        if bytes.starts_with(&seed[..header_len]) {
            let untouched = untouched_steps(seed, &bytes);
            if untouched > 0 {
                let kept = kept.unwrap_or(0);
                prop_assert!(kept >= untouched, "kept {kept} of {untouched} untouched");
            }
        }
        Ok(())
    });
}

fn router_file() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut m = BTreeMap::new();
        let logits: Vec<f32> = (0..3 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
        m.insert("router_logits".to_string(), t(&logits, &[3, 8], Dtype::F32));
        m.insert(
            "hidden_states".to_string(),
            t(&logits, &[3, 8], Dtype::BF16),
        );
        serialize(&m)
    })
}

#[test]
fn safetensors_inputs_never_panic() {
    let cfg = MoeConfig::preset("mixtral-8x7b").unwrap();
    let seed: &'static [u8] = router_file();
    run_cases("safetensors", &inputs(seed), |bytes| {
        let _ = parse_router_inputs(&bytes, &cfg);
        let _ = parse_hidden_states(&bytes, 8);
        Ok(())
    });
}

fn config_json() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        serde_json::to_vec(&serde_json::json!({
            "model_type": "deepseek_v3", "n_routed_experts": 16, "n_shared_experts": 1,
            "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc",
            "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
            "hidden_size": 64, "moe_intermediate_size": 64, "num_hidden_layers": 2,
            "first_k_dense_replace": 1
        }))
        .unwrap()
    })
}

#[test]
fn config_json_never_panics_and_valid_configs_validate() {
    let seed: &'static [u8] = config_json();
    run_cases("config", &inputs(seed), |bytes| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Ok(cfg) = MoeConfig::from_hf_json(&v) {
                // What import accepts is a config the engine can run, or it says why.
                let _ = cfg.validate();
                let _ = cfg.with_tensor_parallel(2);
            }
        }
        Ok(())
    });
}

fn routing_json() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| b"[[[0,1],[2,3],[7,6]],[[1,0],[3,3],[5,4]]]".to_vec())
}

#[test]
fn routing_files_never_panic() {
    let cfg = MoeConfig::preset("mixtral-8x7b").unwrap();
    let seed: &'static [u8] = routing_json();
    let st = router_file();
    let path = Path::new("fuzz.json");
    run_cases("routing", &inputs(seed), |bytes| {
        for format in [
            TraceFormat::Json,
            TraceFormat::Npy,
            TraceFormat::Safetensors,
        ] {
            let _ = RoutingTrace::parse(&bytes, format, path, &cfg, None);
            let _ = RoutingTrace::parse(&bytes, format, path, &cfg, Some(1));
        }
        let _ = RoutingTrace::parse(st, TraceFormat::Safetensors, path, &cfg, None);
        Ok(())
    });
}
