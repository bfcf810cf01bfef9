//! FP8 experts as a path option on the CUDA backend against the CPU backend: the device's
//! block quantization bit for bit, both paths with FP8 experts on a small synthetic layer and
//! on the tiny FP8 checkpoint (uploaded as stored), and a whole engine step's FP8 numerics.
//! Every test skips, and says so, without a GPU.

use moescope::engine::config::MoeConfig;
use moescope::engine::cpu::CpuBackend;
use moescope::engine::cuda;
use moescope::engine::cuda::fp8::DeviceStack;
use moescope::engine::paths::{ExpertFormat, PathSpec, Variant};
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec};
use moescope::engine::weights::checkpoint::open_layer;
use moescope::engine::weights::fp8::BlockScaled;
use moescope::engine::weights::synthetic::SyntheticWeights;
use moescope::engine::weights::{round_bf16, WeightSource};
use moescope::engine::{compare, Backend, BackendChoice, StepInput};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

const FP8: ExpertFormat = ExpertFormat::Fp8;
const BF16: ExpertFormat = ExpertFormat::Bf16;

fn has_gpu() -> bool {
    match cuda::probe() {
        Ok(()) => true,
        Err(why) => {
            println!("skipped: no CUDA: {why}");
            false
        }
    }
}

/// bf16 A, B fused in FP8, and an unfused path with FP8 routed experts beside a bf16
/// separate shared expert.
fn paths() -> Vec<PathSpec> {
    vec![
        PathSpec::unfused_baseline(),
        PathSpec::fused(Variant::Correct).with_formats(FP8, FP8),
        PathSpec::unfused_baseline().with_formats(FP8, BF16),
    ]
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*y).powi(2);
    }
    (d / n.max(1e-300)).sqrt()
}

#[test]
fn device_block_quantization_matches_the_cpu_bit_for_bit() {
    if !has_gpu() {
        return;
    }
    let gpu = cuda::gpu::Gpu::open().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (count, rows, cols) = (3, 256, 384);
    let values: Vec<f32> = (0..count * rows * cols)
        .map(|i| {
            // One block all zero; magnitudes varied per block.
            let (m, r, c) = (i / (rows * cols), (i / cols) % rows, i % cols);
            if m == 1 && r < 128 && c < 128 {
                return 0.0;
            }
            let amp = 10f32.powi(((r / 128 + 2 * (c / 128) + m) % 5) as i32 - 3);
            round_bf16(rng.random_range(-amp..amp))
        })
        .collect();
    let bits: Vec<u16> = values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect();
    let d = gpu.upload(&bits, "bf16 matrices").unwrap();
    let stack = DeviceStack::quantize(&gpu, gpu.ptr(&d), count, rows, cols, "test").unwrap();
    for m in 0..count {
        let want =
            BlockScaled::quantize(&values[m * rows * cols..(m + 1) * rows * cols], rows, cols);
        let got = stack.download(&gpu, m).unwrap();
        assert_eq!(got.scale_inv, want.scale_inv, "matrix {m}: scales");
        let diff = got
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "matrix {m}: {diff} codes differ");
    }
}

/// Both backends through `paths()` on `source()`: per path the GPU's sampled output rows
/// against the CPU's (the same FP8 math, f32 accumulation in another order).
fn gpu_against_cpu(source: &dyn Fn() -> Box<dyn WeightSource>, t: usize) {
    let cfg = source().config().clone();
    let mut g = cuda::open(source()).unwrap();
    let mut c = CpuBackend::new(source()).unwrap();
    let input = StepInput {
        step: 1,
        tokens: t,
        seed: 9,
        hidden: None,
        sample_tokens: compare::sample_tokens(&cfg, t, 1),
    };
    let (gs, cs) = (
        g.step(&input, &paths()).unwrap(),
        c.step(&input, &paths()).unwrap(),
    );
    assert_eq!(
        gs.sample_hidden, cs.sample_hidden,
        "hidden states bit for bit"
    );
    for (p, (a, b)) in gs.paths.iter().zip(&cs.paths).enumerate() {
        assert_eq!(a.slot_ids, b.slot_ids, "path {p}: routing");
        let err = rel_l2(&a.sample_outputs, &b.sample_outputs);
        println!("{}: path {p}: GPU vs CPU rel-L2 {err:.2e}", cfg.name);
        // A code of a quantized activation may round the other way on either side: 1e-3
        // over the sampled rows is several such flips.
        assert!(err < 1e-3, "path {p}: {err:.3e}");
    }
    // FP8 against bf16 on the device: the format's error, visible and bounded.
    let fmt = rel_l2(&gs.paths[1].sample_outputs, &gs.paths[0].sample_outputs);
    assert!(fmt > 1e-3 && fmt < 0.1, "format error {fmt:.3e}");
}

#[test]
fn both_paths_in_fp8_match_the_cpu_on_a_small_layer() {
    if !has_gpu() {
        return;
    }
    let mut cfg = MoeConfig::preset("deepseek-v3").unwrap();
    cfg.hidden_size = 256;
    cfg.moe_intermediate_size = 128;
    cfg.shared_intermediate_size = 128;
    gpu_against_cpu(
        &|| Box::new(SyntheticWeights::new(cfg.clone(), 5, 0.5)),
        100,
    );
}

#[test]
fn the_tiny_fp8_checkpoint_runs_as_stored_on_the_gpu() {
    if !has_gpu() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fp8-tiny");
    let open = || -> Box<dyn WeightSource> { Box::new(open_layer(&dir, None, 1).unwrap()) };
    // As stored: the first expert's FP8 codes come back from the device unchanged.
    let src = open();
    let stored = src.expert_fp8(0).unwrap().expect("the checkpoint is FP8");
    gpu_against_cpu(&open, 24);
    let mut b = cuda::open(open()).unwrap();
    let input = StepInput {
        step: 0,
        tokens: 8,
        seed: 1,
        hidden: None,
        sample_tokens: vec![0],
    };
    b.step(&input, &paths()).unwrap();
    let back = b.reference_slot_fp8(0).unwrap();
    assert_eq!(
        *back,
        stored.dequantize(),
        "the device holds the stored FP8 weights"
    );
}

fn engine_spec(paths: Vec<PathSpec>) -> RunSpec {
    RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".into()),
            hidden: Some(1024),
            intermediate: Some(256),
            backend: BackendChoice::Cuda,
            ..LayerSpec::default()
        },
        tokens: 64,
        paths,
        hidden_states: None,
        trace: Default::default(),
        kernel: None,
        router_logits: Default::default(),
    }
}

/// A and B alone, one of them bf16: the device compares the FP8 path itself, every token,
/// against the reference on its FP8 weights (activations exact, so the activations'
/// quantization shows) and against the bf16 path (the A-against-B comparison).
#[test]
fn the_device_compares_an_fp8_path_on_every_token() {
    if !has_gpu() {
        return;
    }
    let pairs = [
        vec![
            PathSpec::unfused_baseline(),
            PathSpec::fused(Variant::Correct).with_formats(FP8, FP8),
        ],
        vec![
            PathSpec::unfused_baseline().with_formats(FP8, BF16),
            PathSpec::fused(Variant::Correct).with_formats(FP8, FP8),
        ],
    ];
    for paths in pairs {
        let (mut engine, _) = engine_spec(paths.clone()).build_engine().unwrap();
        let r = engine.step().unwrap();
        for (p, e) in r.comparison.expert_formats.iter().enumerate() {
            let Some(e) = e else {
                assert!(!paths[p].uses_fp8());
                continue;
            };
            println!("path {p}: {e:?}");
            assert!(
                e.on_device && !e.activations_quantized && e.tokens == 64,
                "{e:?}"
            );
            assert!(e.dequant_rel_l2 > 1e-4 && e.dequant_rel_l2 < 0.1, "{e:?}");
            match paths.iter().any(|s| !s.uses_fp8()) {
                true => assert!(e.bf16_rel_l2.unwrap() > 1e-3 && e.bf16_rel_l2.unwrap() < 0.1),
                false => assert_eq!(e.bf16_path, None),
            }
        }
        assert!(r.paths.iter().all(|p| p.contract.ok));
    }
}

/// Two paths on the same FP8 weights (routed and shared): the second reuses the step's FP8
/// reference instead of computing it again, and is judged against the same numbers as the first.
#[test]
fn two_fp8_paths_on_the_same_weights_share_one_reference_run() {
    if !has_gpu() {
        return;
    }
    let paths = vec![
        PathSpec::unfused_baseline().with_formats(FP8, FP8),
        PathSpec::fused(Variant::Correct).with_formats(FP8, FP8),
    ];
    let (mut engine, _) = engine_spec(paths).build_engine().unwrap();
    for step in 0..3 {
        let r = engine.step().unwrap();
        let [a, b] = [0, 1].map(|p| r.comparison.expert_formats[p].clone().unwrap());
        println!(
            "step {step}: A {:.4e}, B {:.4e}",
            a.dequant_rel_l2, b.dequant_rel_l2
        );
        assert!(a.on_device && b.on_device && a.tokens == 64 && b.tokens == 64);
        assert!(a.dequant_rel_l2 > 1e-4 && a.dequant_rel_l2 < 0.1, "{a:?}");
        // The same weights and routing: the two kernels' outputs, and so their errors, agree.
        let gap = (a.dequant_rel_l2 - b.dequant_rel_l2).abs() / a.dequant_rel_l2;
        assert!(gap < 0.02, "step {step}: A {a:?} vs B {b:?}");
    }
}

/// Three paths: the FP8 figures come from the host's sample, against the FP8 math in f64.
#[test]
fn an_fp8_engine_step_records_the_kernels_and_the_formats_error() {
    if !has_gpu() {
        return;
    }
    let spec = RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".into()),
            hidden: Some(1024),
            intermediate: Some(256),
            backend: BackendChoice::Cuda,
            ..LayerSpec::default()
        },
        tokens: 64,
        paths: paths(),
        hidden_states: None,
        trace: Default::default(),
        kernel: None,
        router_logits: Default::default(),
    };
    let (mut engine, _) = spec.build_engine().unwrap();
    for _ in 0..2 {
        let r = engine.step().unwrap();
        let f = &r.comparison.expert_formats;
        assert!(f[0].is_none() && f.len() == 3);
        for e in f.iter().skip(1).flatten() {
            println!("{e:?}");
            assert!(e.tokens >= 1 && !e.on_device && e.activations_quantized);
            assert!(e.dequant_rel_l2 < 1e-3, "kernels' error {e:?}");
            let fmt = e.bf16_rel_l2.unwrap();
            assert!(fmt > 1e-3 && fmt < 0.1, "format error {fmt}");
        }
        assert!(r.paths.iter().all(|p| p.contract.ok));
        let stages: Vec<_> = r.paths[1].timings.iter().map(|k| k.stage.name()).collect();
        assert!(stages.contains(&"fp8_quant"), "{stages:?}");
    }
}
