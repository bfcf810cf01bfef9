//! The device reference (cuda::reference) against the host's numerics (compare::host_numerics)
//! on small shapes: the paths' outputs come from the CPU backend and are uploaded, so both sides
//! compare exactly the same data. Every test skips (and says so) without a CUDA driver, device
//! or NVRTC.

mod gpu_support;
use gpu_support::gpu;

use moescope::engine::config::MoeConfig;
use moescope::engine::cpu::CpuBackend;
use moescope::engine::cuda::fp8::Fp8Slots;
use moescope::engine::cuda::gpu::Gpu;
use moescope::engine::cuda::kernels::DevPtr;
use moescope::engine::cuda::layer::DeviceLayer;
use moescope::engine::cuda::reference::{DeviceReference, PathOutputs, RefWeights};
use moescope::engine::numerics::StepNumerics;
use moescope::engine::paths::{PathSpec, Variant, VARIANTS};
use moescope::engine::weights::fp8::{self, Fp8Mlp};
use moescope::engine::weights::synthetic::SyntheticWeights;
use moescope::engine::{compare, routing, Backend, BackendKind, BackendStep, StepInput};
use std::sync::Arc;

const SEED: u64 = 5;
const SKEW: f32 = 0.5;

/// A preset at sizes the CUDA kernels take (multiples of 64), small enough for the host's f64.
fn small(preset: &str) -> MoeConfig {
    let mut cfg = MoeConfig::preset(preset).unwrap();
    cfg.hidden_size = 128;
    cfg.moe_intermediate_size = 64;
    cfg.shared_intermediate_size = 64 * cfg.n_shared_experts;
    cfg
}

/// One CPU step with every token's output row returned.
fn cpu_step(
    cfg: &MoeConfig,
    t: usize,
    variant: Variant,
) -> (CpuBackend, StepInput, Vec<PathSpec>, BackendStep) {
    let mut cpu =
        CpuBackend::new(Box::new(SyntheticWeights::new(cfg.clone(), SEED, SKEW))).unwrap();
    let paths = vec![PathSpec::unfused_baseline(), PathSpec::fused(variant)];
    let input = StepInput {
        step: 2,
        tokens: t,
        seed: 9,
        hidden: None,
        sample_tokens: (0..t).collect(),
    };
    let out = cpu.step(&input, &paths).unwrap();
    (cpu, input, paths, out)
}

/// The device reference run on exactly the CPU step's inputs and path outputs.
fn device_numerics(
    gpu: &Gpu,
    cfg: &MoeConfig,
    t: usize,
    out: &BackendStep,
) -> (StepNumerics, Vec<f64>) {
    device_numerics_on(gpu, cfg, t, out, RefWeights::Bf16)
}

/// As `device_numerics`, the reference multiplying `weights`.
fn device_numerics_on(
    gpu: &Gpu,
    cfg: &MoeConfig,
    t: usize,
    out: &BackendStep,
    weights: RefWeights<'_>,
) -> (StepNumerics, Vec<f64>) {
    let layer = DeviceLayer::new(gpu, &SyntheticWeights::new(cfg.clone(), SEED, SKEW)).unwrap();
    let x: Vec<u16> = out
        .sample_hidden
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect();
    let d_x = gpu.upload(&x, "x").unwrap();
    let d_logits = gpu.upload(&out.router_logits, "logits").unwrap();
    let d_gate =
        (!out.shared_gate.is_empty()).then(|| gpu.upload(&out.shared_gate, "gate").unwrap());
    let spt_max = out.paths.iter().map(|p| p.slots_per_token).max().unwrap();
    let mut r = DeviceReference::new(gpu, cfg, t, out.paths.len(), spt_max).unwrap();
    assert_eq!(r.tokens().len(), t, "every token compared");
    r.run(gpu, &layer, gpu.ptr(&d_x), gpu.ptr(&d_logits), weights, 2)
        .unwrap();
    let mut keep = Vec::new();
    for (i, run) in out.paths.iter().enumerate() {
        let ids = gpu.upload(&run.slot_ids, "ids").unwrap();
        let w = gpu.upload(&run.slot_weights, "weights").unwrap();
        let y = gpu.upload(&run.sample_outputs, "y").unwrap();
        let sep = (!run.separate_shared_weight.is_empty())
            .then(|| gpu.upload(&run.separate_shared_weight, "sep").unwrap());
        let p = PathOutputs {
            ids: gpu.ptr(&ids),
            weights: gpu.ptr(&w),
            spt: run.slots_per_token,
            out_scale: run.out_scale,
            sep: sep.as_ref().map(|b| gpu.ptr(b)).unwrap_or(DevPtr::NULL),
            gate: d_gate.as_ref().map(|b| gpu.ptr(b)).unwrap_or(DevPtr::NULL),
            y: gpu.ptr(&y),
            near_ulps: moescope::engine::numerics::NEAR_TIE_ULPS,
        };
        r.compare_path(gpu, i, p).unwrap();
        keep.push((ids, w, y, sep));
    }
    let numerics = r.finish(gpu, 2).unwrap();
    let rows = r.reference_rows(gpu).unwrap();
    (numerics, rows)
}

/// The host's f64 reference rows, token by token.
fn host_rows(cfg: &MoeConfig, cpu: &CpuBackend, out: &BackendStep, t: usize) -> Vec<f64> {
    host_rows_on(cfg, cpu, out, t, |s| cpu.reference_slot(s))
}

/// As `host_rows`, with the MLP of each slot from `slot`.
fn host_rows_on(
    cfg: &MoeConfig,
    cpu: &CpuBackend,
    out: &BackendStep,
    t: usize,
    mut slot: impl FnMut(usize) -> anyhow::Result<Arc<moescope::engine::weights::ExpertWeights>>,
) -> Vec<f64> {
    let (e, h) = (cfg.n_routed_experts, cfg.hidden_size);
    let bias = cpu.weights().router_bias().unwrap();
    let gate_w = cpu.weights().shared_gate().unwrap();
    let mut rows = Vec::new();
    for tok in 0..t {
        let route = routing::route_token(
            cfg,
            &out.router_logits[tok * e..(tok + 1) * e],
            bias.as_deref(),
            cfg.num_experts_per_tok,
        );
        let x: Vec<f64> = out.sample_hidden[tok * h..(tok + 1) * h]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let g = compare::shared_gate_f64(gate_w.as_deref(), &x);
        rows.extend(compare::reference_output(cfg, &route, &x, g, &mut slot).unwrap());
    }
    rows
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= rel * b.abs().max(1e-30)
}

/// Routing numbers identical, the rest within `rel`.
fn assert_same(dev: &StepNumerics, host: &StepNumerics, what: &str) {
    let (d, h) = (&dev.comparison, &host.comparison);
    assert_eq!(
        d.sampled_tokens, h.sampled_tokens,
        "{what}: compared tokens"
    );
    assert_eq!(
        d.routing_agreement_ref, h.routing_agreement_ref,
        "{what}: agreement"
    );
    assert_eq!(
        d.routing_agreement_ab, h.routing_agreement_ab,
        "{what}: A = B"
    );
    assert_eq!(d.ties_ref, h.ties_ref, "{what}: tie classes");
    assert_eq!(
        d.disagreeing_tokens, h.disagreeing_tokens,
        "{what}: disagreeing tokens"
    );
    assert_eq!(d.margins, h.margins, "{what}: margins");
    for (a, b) in d.weight_max_diff_ref.iter().zip(&h.weight_max_diff_ref) {
        assert!((a - b).abs() <= 1e-12, "{what}: weight diff {a} vs {b}");
    }
    for (a, b) in d.output_rel_l2_ref.iter().zip(&h.output_rel_l2_ref) {
        assert!(close(*a, *b, 1e-6), "{what}: rel L2 {a} vs {b}");
    }
    for (a, b) in d.token_errors_ref.iter().zip(&h.token_errors_ref) {
        assert!(
            close(a.rel_l2.max, b.rel_l2.max, 1e-6),
            "{what}: worst token rel L2"
        );
        assert!(
            close(a.max_abs.p99, b.max_abs.p99, 1e-6),
            "{what}: p99 max abs"
        );
    }
    for (a, b) in dev.paths.iter().zip(&host.paths) {
        assert_eq!(a.load, b.load, "{what}: load");
        assert!(
            close(a.routed_sum.mean, b.routed_sum.mean, 1e-12),
            "{what}: routed sum"
        );
        assert!(close(a.routed_max_dev, b.routed_max_dev, 1e-9) || a.routed_max_dev < 1e-12);
        assert_eq!(a.shared.is_some(), b.shared.is_some());
        if let (Some(x), Some(y)) = (a.shared, b.shared) {
            assert!(
                close(x.mean, y.mean, 1e-12),
                "{what}: shared weight {} vs {}",
                x.mean,
                y.mean
            );
        }
    }
    assert!(!dev.details.is_empty(), "{what}: drill-down tokens");
    for det in &dev.details {
        assert!(det.margins.is_some() && det.classes.len() == d.ties_ref.len());
    }
}

#[test]
fn device_reference_matches_the_host_reference_on_small_shapes() {
    let Some(gpu) = gpu() else { return };
    for preset in [
        "deepseek-v3",
        "kimi-k2",
        "qwen3-next-80b-a3b",
        "mixtral-8x7b",
        "deepseek-v2",
    ] {
        let cfg = small(preset);
        for t in [1, 77, 300] {
            let what = format!("{preset} T={t}");
            let (cpu, input, paths, out) = cpu_step(&cfg, t, Variant::Correct);
            let host = compare::host_numerics(&cfg, &cpu, &input, &paths, &out, None).unwrap();
            let (dev, rows) = device_numerics(&gpu, &cfg, t, &out);
            assert_same(&dev, &host, &what);
            let want = host_rows(&cfg, &cpu, &out, t);
            let (mut d2, mut n2) = (0.0f64, 0.0f64);
            for (a, b) in rows.iter().zip(&want) {
                d2 += (a - b) * (a - b);
                n2 += b * b;
            }
            let rel = (d2 / n2).sqrt();
            assert!(
                rel <= 1e-12,
                "{what}: device f64 output vs host, rel L2 {rel:e}"
            );
        }
    }
}

#[test]
fn ties_are_classified_alike_on_device_and_host() {
    let Some(gpu) = gpu() else { return };
    let cfg = small("deepseek-v3");
    let t = 128;
    let (cpu, input, paths, mut out) = cpu_step(&cfg, t, Variant::Correct);
    // Coarse logits: the reference meets exact ties everywhere, the paths routed on the fine ones.
    out.router_logits
        .iter_mut()
        .for_each(|l| *l = (*l * 2.0).round() / 2.0);
    let host = compare::host_numerics(&cfg, &cpu, &input, &paths, &out, None).unwrap();
    let (dev, _) = device_numerics(&gpu, &cfg, t, &out);
    assert_same(&dev, &host, "coarse logits");
    let ties = dev.comparison.ties_ref[0];
    println!("ties: {ties:?}");
    assert!(
        ties.exact + ties.near + ties.real > 0,
        "coarse logits must disagree somewhere"
    );
}

#[test]
fn every_bug_variant_is_flagged_with_all_token_numerics() {
    let Some(gpu) = gpu() else { return };
    for preset in ["deepseek-v3", "kimi-k2", "qwen3-next-80b-a3b"] {
        let cfg = small(preset);
        let t = 64;
        for &variant in VARIANTS {
            let (cpu, input, paths, mut out) = cpu_step(&cfg, t, variant);
            let host =
                compare::assemble(&cfg, &cpu, &input, &paths, &out, BackendKind::Cpu).unwrap();
            let (dev, _) = device_numerics(&gpu, &cfg, t, &out);
            out.numerics = Some(dev);
            let rec =
                compare::assemble(&cfg, &cpu, &input, &paths, &out, BackendKind::Cuda).unwrap();
            let flagged = |r: &moescope::engine::step::StepRecord| {
                let c = &r.comparison;
                !r.paths[1].contract.ok
                    || c.routing_agreement_ref[1] < 1.0
                    || c.output_rel_l2_ref[1] > 1e-2
            };
            assert_eq!(
                rec.comparison.sampled_tokens, t,
                "{preset} {variant}: every token"
            );
            for (a, b) in rec.paths.iter().zip(&host.paths) {
                assert_eq!(
                    a.contract.ok, b.contract.ok,
                    "{preset} {variant}: {:?} vs {:?}",
                    a.contract.violations, b.contract.violations
                );
            }
            assert_eq!(flagged(&rec), flagged(&host), "{preset} {variant}");
            if variant != Variant::Correct {
                println!("{preset} {variant}: flagged {}", flagged(&rec));
            } else {
                assert!(!flagged(&rec), "{preset}: the correct contract is flagged");
            }
        }
    }
}

#[test]
fn a_perturbed_path_shows_up_in_the_worst_tokens() {
    let Some(gpu) = gpu() else { return };
    let cfg = small("deepseek-v3");
    let (t, bad) = (96, 37);
    let (_, _, _, mut out) = cpu_step(&cfg, t, Variant::Correct);
    let h = cfg.hidden_size;
    out.paths[1].sample_outputs[bad * h..(bad + 1) * h]
        .iter_mut()
        .for_each(|v| *v *= 1.01);
    let (dev, _) = device_numerics(&gpu, &cfg, t, &out);
    let c = &dev.comparison;
    assert_eq!(c.token_errors_ref[1].rel_l2.worst.first(), Some(&bad));
    assert_eq!(c.token_errors_ref[1].max_abs.worst.first(), Some(&bad));
    assert_eq!(
        c.token_errors_ab.as_ref().unwrap().rel_l2.worst.first(),
        Some(&bad)
    );
    assert!(c.token_errors_ref[1].rel_l2.max > 5e-3);
    assert!(c.token_errors_ref[0].rel_l2.max < 5e-3);
    assert!(
        dev.details.iter().any(|d| d.token == bad),
        "the worst token is in the drill-down"
    );
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let (mut d2, mut n2) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d2 += (x - y) * (x - y);
        n2 += y * y;
    }
    (d2 / n2).sqrt()
}

/// On FP8 weights the reference decodes e4m3 codes and block scales exactly: it equals the host's
/// f64 MLP over the dequantized weights (dequantized to f32 there, hence 1e-6 and not 1e-12), and
/// it is not the bf16 reference (the mode really switched).
#[test]
fn the_reference_on_fp8_weights_is_the_dequantized_math() {
    let Some(gpu) = gpu() else { return };
    for preset in ["deepseek-v3", "mixtral-8x7b"] {
        let mut cfg = MoeConfig::preset(preset).unwrap();
        cfg.hidden_size = 256;
        cfg.moe_intermediate_size = 128;
        cfg.shared_intermediate_size = 128 * cfg.n_shared_experts;
        let (e, s) = (cfg.n_routed_experts, cfg.n_shared_experts);
        let t = 150;
        let (cpu, _, _, out) = cpu_step(&cfg, t, Variant::Correct);
        let src = SyntheticWeights::new(cfg.clone(), SEED, SKEW);
        let mlps: Vec<Fp8Mlp> = (0..e)
            .map(|i| fp8::expert(&src, i).unwrap())
            .chain((0..s).map(|j| fp8::shared_slot(&src, j).unwrap()))
            .collect();
        let routed = Fp8Slots::upload(&gpu, &mlps[..e], "routed").unwrap();
        let shared = (s > 0).then(|| Fp8Slots::upload(&gpu, &mlps[e..], "shared").unwrap());
        let weights = RefWeights::Fp8 {
            routed: &routed,
            shared: shared.as_ref(),
        };
        let (_, rows) = device_numerics_on(&gpu, &cfg, t, &out, weights);
        let deq: Vec<_> = mlps.iter().map(|m| Arc::new(m.dequantize())).collect();
        let want = host_rows_on(&cfg, &cpu, &out, t, |slot| Ok(deq[slot].clone()));
        let rel = rel_l2(&rows, &want);
        assert!(
            rel <= 1e-6,
            "{preset}: FP8 reference vs dequantized host, rel L2 {rel:e}"
        );
        let bf16 = host_rows(&cfg, &cpu, &out, t);
        let format = rel_l2(&rows, &bf16);
        assert!(
            format > 1e-4,
            "{preset}: FP8 reference equals the bf16 one ({format:e})"
        );
    }
}
