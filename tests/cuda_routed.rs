//! A routing trace on the GPU (`Backend::step_routed` on CUDA: the trace's slots uploaded, gate
//! GEMM and router skipped) and the EP straggler's GEMM measured there. Skips, and says so,
//! without a CUDA driver, device or NVRTC.

use moescope::engine::config::MoeConfig;
use moescope::engine::ep::{EpSpec, GemmSource, PlacementKind};
use moescope::engine::paths::PathSpec;
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec, TraceSpec};
use moescope::engine::trace::RoutingTrace;
use moescope::engine::{cuda, BackendChoice};
use std::path::{Path, PathBuf};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/routing/deepseek-v3-skew.safetensors")
}

fn spec(hidden: usize, intermediate: usize, ep: Option<EpSpec>) -> RunSpec {
    RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".to_string()),
            hidden: Some(hidden),
            intermediate: Some(intermediate),
            backend: BackendChoice::Cuda,
            ..LayerSpec::default()
        },
        tokens: 1,
        paths: PathSpec::default_pair(),
        hidden_states: None,
        trace: TraceSpec {
            routing: Some(sample()),
            ep,
            ..TraceSpec::default()
        },
        kernel: None,
        router_logits: Default::default(),
    }
}

fn no_gpu() -> bool {
    match cuda::probe() {
        Ok(()) => false,
        Err(why) => {
            println!("skipped: no CUDA: {why}");
            true
        }
    }
}

#[test]
fn a_trace_routes_the_gpu_layer_exactly_and_matches_the_reference() {
    if no_gpu() {
        return;
    }
    let (mut engine, _) = spec(256, 128, None).build_engine().unwrap();
    let trace =
        RoutingTrace::read(&sample(), &MoeConfig::preset("deepseek-v3").unwrap(), None).unwrap();
    for s in 0..trace.steps as u64 {
        let rec = engine.step().unwrap();
        let mut want = vec![0u32; 256];
        trace
            .batch(s)
            .ids
            .iter()
            .for_each(|&e| want[e as usize] += 1);
        for p in &rec.paths {
            assert_eq!(&p.load[..256], &want[..], "step {s} path {}", p.name);
            assert!(p.contract.ok, "{:?}", p.contract.violations);
            assert!(
                p.timings.iter().all(|k| !k.stage.is_router()),
                "the router was skipped"
            );
        }
        assert_eq!(rec.comparison.routing_agreement_ref, vec![1.0, 1.0]);
        for e in &rec.comparison.output_rel_l2_ref {
            assert!(
                *e < 2e-2,
                "step {s}: output error {e} against the f64 reference"
            );
        }
    }
}

#[test]
fn the_straggler_gemm_is_measured_on_the_gpu() {
    if no_gpu() {
        return;
    }
    let ep = EpSpec::new(8, 8, 4, None).unwrap();
    let (mut engine, _) = spec(1024, 512, Some(ep)).build_engine().unwrap();
    for _ in 0..3 {
        let rec = engine.step().unwrap();
        let ep = rec.ep.expect("EP figures");
        let cont = ep.get(PlacementKind::Contiguous).unwrap();
        let eplb = ep.get(PlacementKind::Eplb).unwrap();
        for p in [cont, eplb] {
            let g = p.straggler_gemm.expect("a GEMM time");
            assert_eq!(g.source, GemmSource::Measured);
            assert!(g.us > 0.0 && g.us.is_finite(), "{g:?}");
        }
        println!(
            "straggler GEMM: contiguous {} tokens {:.1} µs, EPLB {} tokens {:.1} µs",
            cont.max_tokens,
            cont.straggler_gemm.unwrap().us,
            eplb.max_tokens,
            eplb.straggler_gemm.unwrap().us
        );
    }
}
