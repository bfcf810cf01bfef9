//! The whole layer on the device: device-initialized weights and hidden states bit for bit the
//! host's, both paths through every variant with poisoned outputs against the f64 reference,
//! uploaded weights equal to generated ones, and the same steps on the CPU backend.

use super::{max_rel, Table, OUTPUT_REL_L2, WEIGHT_REL};
use crate::engine::compare;
use crate::engine::config::MoeConfig;
use crate::engine::cpu::CpuBackend;
use crate::engine::cuda::gpu::Gpu;
use crate::engine::cuda::kernels::InitHiddenArgs;
use crate::engine::cuda::layer::{CudaBackend, DeviceLayer};
use crate::engine::finite::FiniteStage;
use crate::engine::paths::{PathSpec, Variant, VARIANTS};
use crate::engine::step::{PathRecord, StepRecord};
use crate::engine::weights::synthetic::{self, SyntheticWeights};
use crate::engine::weights::WeightSource;
use crate::engine::{Backend, BackendKind, BackendStep, StepInput};
use anyhow::{anyhow, Context, Result};
use rand::Rng;
use std::sync::Arc;

/// "A" or "B" in the table's kernel column.
fn path_name(p: usize, a: &'static str, b: &'static str) -> &'static str {
    if p == 0 {
        a
    } else {
        b
    }
}

/// The whole layer through both paths, every variant, with poisoned outputs; compared with the
/// f64 reference (compare::assemble) and, where `with_cpu`, with the CPU backend.
pub(super) fn check_layer(
    gpu: &Arc<Gpu>,
    source: Box<dyn WeightSource>,
    tokens: &[usize],
    with_cpu: bool,
    rng: &mut impl Rng,
    table: &mut Table,
) -> Result<()> {
    let cfg = source.config().clone();
    let syn = source
        .synthetic()
        .map(|s| SyntheticWeights::new(cfg.clone(), s.seed, s.skew))
        .ok_or_else(|| anyhow!("check runs on synthetic weights"))?;
    let mut cpu = if with_cpu {
        Some(CpuBackend::new(Box::new(SyntheticWeights::new(
            cfg.clone(),
            syn.seed,
            syn.skew,
        )))?)
    } else {
        None
    };
    let mut gpu_backend = CudaBackend::new(gpu.clone(), source)?;
    gpu_backend.poison = true;
    check_init(gpu, &syn, gpu_backend.layer(), table)?;
    if with_cpu {
        check_upload(gpu, &syn, &mut gpu_backend, rng, table)?;
        check_captured(&syn, &mut gpu_backend, rng, table)?;
    }
    for &t in tokens {
        let seed: u64 = rng.random();
        let mut samples = compare::sample_tokens(&cfg, t, 0);
        if !with_cpu {
            // A few more tokens than the engine's budget, spread over the batch.
            samples = (0..4.min(t)).map(|i| i * t / 4.min(t)).collect();
        }
        let input = StepInput {
            step: 0,
            tokens: t,
            seed,
            hidden: None,
            sample_tokens: samples,
        };
        let variants: Vec<Variant> = if t == tokens[0] || with_cpu && t <= 64 {
            VARIANTS.to_vec()
        } else {
            vec![Variant::Correct]
        };
        for variant in variants {
            check_step(&mut gpu_backend, cpu.as_mut(), &cfg, &input, variant, table)?;
        }
    }
    Ok(())
}

/// One step of both paths with `variant` on path B.
fn check_step(
    gpu_backend: &mut CudaBackend,
    cpu: Option<&mut CpuBackend>,
    cfg: &MoeConfig,
    input: &StepInput,
    variant: Variant,
    table: &mut Table,
) -> Result<()> {
    let shape = format!(
        "{} T={} H={} I={}",
        cfg.name, input.tokens, cfg.hidden_size, cfg.moe_intermediate_size
    );
    let paths = vec![PathSpec::unfused_baseline(), PathSpec::fused(variant)];
    let out = gpu_backend
        .step(input, &paths)
        .with_context(|| format!("{shape} variant {variant}"))?;
    let rec = compare::assemble(cfg, &*gpu_backend, input, &paths, &out, BackendKind::Cuda)?;
    let tag = format!("{shape} [{variant}]");
    check_written(cfg, &out, &tag, table);
    // Variants change the routing and weights on purpose; the correct contract must match the
    // reference.
    if variant == Variant::Correct {
        check_against_reference(cfg, &rec, &tag, table);
    }
    if let Some(cpu) = cpu {
        let step = GpuStep {
            out: &out,
            rec: &rec,
        };
        compare_with_cpu(cpu, cfg, input, &paths, step, &tag, table)?;
    }
    Ok(())
}

/// Every output element written (poisoned before); ids valid; weights finite.
fn check_written(cfg: &MoeConfig, out: &BackendStep, tag: &str, table: &mut Table) {
    for (p, run) in out.paths.iter().enumerate() {
        let bad_ids = run
            .slot_ids
            .iter()
            .filter(|&&id| id as usize >= cfg.total_slots())
            .count();
        let bad_w = run.slot_weights.iter().filter(|w| !w.is_finite()).count();
        let bad_out = run.output.nonfinite;
        let ok = bad_out == 0 && bad_ids == 0 && bad_w == 0;
        let note = if ok {
            String::new()
        } else {
            format!("{bad_out} non-finite outputs, {bad_ids} bad ids, {bad_w} bad weights")
        };
        let errors = (bad_out as usize + bad_ids + bad_w) as f64;
        let name = path_name(p, "path A written", "path B written");
        table.add(name, tag.to_string(), errors, ok, note);
    }
}

/// Routing, weights and outputs of the correct contract against the f64 reference.
fn check_against_reference(cfg: &MoeConfig, rec: &StepRecord, tag: &str, table: &mut Table) {
    let c = &rec.comparison;
    let agree = c.routing_agreement_ref.iter().copied().fold(1.0, f64::min);
    table.add(
        "router ids vs ref",
        tag.to_string(),
        1.0 - agree,
        agree == 1.0,
        "on the GPU's logits",
    );
    let wdiff = c.weight_max_diff_ref.iter().copied().fold(0.0, f64::max);
    let rel = wdiff / cfg.routed_scaling_factor;
    table.add(
        "router weights vs ref",
        tag.to_string(),
        rel,
        rel <= WEIGHT_REL,
        "",
    );
    for (p, e) in c.output_rel_l2_ref.iter().enumerate() {
        table.add(
            path_name(p, "layer A vs f64 ref", "layer B vs f64 ref"),
            tag.to_string(),
            *e,
            *e <= OUTPUT_REL_L2,
            format!("{} sampled tokens", c.sampled_tokens),
        );
    }
    let ab = c.output_rel_l2_ab;
    table.add(
        "layer A vs B",
        tag.to_string(),
        ab,
        ab <= OUTPUT_REL_L2,
        "fused vs unfused",
    );
}

/// Device-initialized weights (first, last and shared slots, router gate) and hidden states
/// against the host's synthetic values, bit for bit.
fn check_init(
    gpu: &Arc<Gpu>,
    syn: &SyntheticWeights,
    layer: &DeviceLayer,
    table: &mut Table,
) -> Result<()> {
    let cfg = &syn.cfg;
    let shape = format!(
        "{} H={} I={}",
        cfg.name, cfg.hidden_size, cfg.moe_intermediate_size
    );
    let mut worst = 0.0f64;
    let diff = |a: &[f32], b: &[f32]| -> f64 {
        if a.len() != b.len() {
            return f64::INFINITY;
        }
        a.iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .map(|(x, y)| ((x - y).abs() as f64).max(1e-30))
            .fold(0.0, f64::max)
    };
    let mut slots = vec![0, cfg.n_routed_experts - 1];
    slots.extend((0..cfg.n_shared_experts).map(|j| cfg.n_routed_experts + j));
    for slot in slots {
        let dev = layer.mlp_from_device(gpu, slot)?;
        let host = if slot < cfg.n_routed_experts {
            syn.expert(slot)?
        } else {
            syn.shared_slot(slot - cfg.n_routed_experts)?
        };
        worst = worst
            .max(diff(&dev.gate, &host.gate))
            .max(diff(&dev.up, &host.up))
            .max(diff(&dev.down, &host.down));
    }
    let gate = gpu.download(
        &layer.gate_w,
        cfg.n_routed_experts * cfg.hidden_size,
        "router gate",
    )?;
    let gate: Vec<f32> = gate
        .into_iter()
        .map(|b| half::bf16::from_bits(b).to_f32())
        .collect();
    worst = worst.max(diff(&gate, &syn.router_gate()?));
    table.add(
        "init_mlp_bf16",
        shape.clone(),
        worst,
        worst == 0.0,
        "bit for bit",
    );

    let (t, h, step, seed) = (37usize, cfg.hidden_size, 5u64, syn.seed);
    let x = gpu.alloc::<u16>(t * h, "hidden")?;
    gpu.launch(InitHiddenArgs {
        out: gpu.ptr(&x),
        n: (t * h) as u64,
        seed,
        tensor: synthetic::tensor_id::HIDDEN_BASE + step,
    })?;
    let dev: Vec<f32> = gpu
        .download(&x, t * h, "hidden")?
        .into_iter()
        .map(|b| half::bf16::from_bits(b).to_f32())
        .collect();
    let host: Vec<f32> = (0..t)
        .flat_map(|tok| synthetic::hidden_row(seed, step, tok, h))
        .collect();
    let err = diff(&dev, &host);
    table.add(
        "init_hidden_bf16",
        format!("T={t} H={h}"),
        err,
        err == 0.0,
        "bit for bit",
    );
    Ok(())
}

/// Weights uploaded from the host (the checkpoint path) give bit-identical outputs to weights
/// generated on the device.
fn check_upload(
    gpu: &Arc<Gpu>,
    syn: &SyntheticWeights,
    generated: &mut CudaBackend,
    rng: &mut impl Rng,
    table: &mut Table,
) -> Result<()> {
    let cfg = syn.cfg.clone();
    let mut uploaded = CudaBackend::new(
        gpu.clone(),
        Box::new(synthetic::HostOnly(SyntheticWeights::new(
            cfg.clone(),
            syn.seed,
            syn.skew,
        ))),
    )?;
    let t = 64;
    let input = StepInput {
        step: 1,
        tokens: t,
        seed: rng.random(),
        hidden: None,
        sample_tokens: (0..t).step_by(9).collect(),
    };
    let paths = vec![
        PathSpec::unfused_baseline(),
        PathSpec::fused(Variant::Correct),
    ];
    let a = generated.step(&input, &paths)?;
    let b = uploaded.step(&input, &paths)?;
    let same = a.router_logits == b.router_logits
        && a.paths.iter().zip(&b.paths).all(|(x, y)| {
            x.sample_outputs == y.sample_outputs
                && x.slot_ids == y.slot_ids
                && x.slot_weights == y.slot_weights
        });
    let diff = a
        .paths
        .iter()
        .zip(&b.paths)
        .flat_map(|(x, y)| x.sample_outputs.iter().zip(&y.sample_outputs))
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    table.add(
        "weights uploaded",
        format!(
            "{} T={t} H={} I={}",
            cfg.name, cfg.hidden_size, cfg.moe_intermediate_size
        ),
        diff,
        same,
        "bit for bit = generated on the device",
    );
    Ok(())
}

/// Captured (f32) hidden states: the synthetic step's own hidden states passed in as captured
/// ones give bit-identical outputs (f32_to_bf16_kernel rounds values bf16 already holds); with
/// NaN and ±Inf put into them, count_nonfinite counts exactly those as the input's.
fn check_captured(
    syn: &SyntheticWeights,
    backend: &mut CudaBackend,
    rng: &mut impl Rng,
    table: &mut Table,
) -> Result<()> {
    let cfg = &syn.cfg;
    let (t, h, step, seed) = (16usize, cfg.hidden_size, 2u64, rng.random());
    let paths = vec![PathSpec::fused(Variant::Correct)];
    let mut input = StepInput {
        step,
        tokens: t,
        seed,
        hidden: None,
        sample_tokens: (0..t).collect(),
    };
    let generated = backend.step(&input, &paths)?;
    let mut hidden: Vec<f32> = (0..t)
        .flat_map(|tok| synthetic::hidden_row(seed, step, tok, h))
        .collect();
    input.hidden = Some(Arc::new(hidden.clone()));
    let captured = backend.step(&input, &paths)?;
    let same = generated.paths[0].sample_outputs == captured.paths[0].sample_outputs
        && generated.sample_hidden == captured.sample_hidden;
    let shape = format!("{} T={t} H={h}", cfg.name);
    let note = "captured = generated, bit for bit";
    table.add(
        "f32_to_bf16_kernel",
        shape.clone(),
        !same as u8 as f64,
        same,
        note,
    );

    let bad = [(1, f32::NAN), (5, f32::INFINITY), (9, f32::NEG_INFINITY)];
    for &(tok, v) in &bad {
        hidden[tok * h + tok] = v;
    }
    input.hidden = Some(Arc::new(hidden));
    let out = backend.step(&input, &paths)?;
    let counted = out.finite.get(FiniteStage::Input);
    let ok = counted == bad.len() as u64 && out.finite.get(FiniteStage::Weights) == 0;
    let note = format!("{counted} of {} non-finite inputs counted", bad.len());
    let errors = counted.abs_diff(bad.len() as u64) as f64;
    table.add("count_nonfinite", shape, errors, ok, note);
    Ok(())
}

/// What the GPU produced for one step.
#[derive(Clone, Copy)]
struct GpuStep<'a> {
    out: &'a BackendStep,
    rec: &'a StepRecord,
}

/// Same step on the CPU backend: logits, effective-weight statistics, contract verdicts, outputs.
fn compare_with_cpu(
    cpu: &mut CpuBackend,
    cfg: &MoeConfig,
    input: &StepInput,
    paths: &[PathSpec],
    gpu: GpuStep,
    tag: &str,
    table: &mut Table,
) -> Result<()> {
    let out = cpu.step(input, paths)?;
    let rec = compare::assemble(cfg, &*cpu, input, paths, &out, BackendKind::Cpu)?;
    let scale = out
        .router_logits
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(1.0) as f64;
    let logit_err = out
        .router_logits
        .iter()
        .zip(&gpu.out.router_logits)
        .map(|(a, b)| (a - b).abs() as f64 / scale)
        .fold(0.0, f64::max);
    table.add(
        "gate_gemm vs cpu",
        tag.to_string(),
        logit_err,
        logit_err <= 1e-4,
        "relative to max |logit|",
    );
    let hidden_err = max_rel(
        gpu.out.sample_hidden.iter().map(|&v| v as f64),
        out.sample_hidden.iter().map(|&v| v as f64),
    );
    table.add(
        "hidden vs cpu",
        tag.to_string(),
        hidden_err,
        hidden_err == 0.0,
        "bit for bit",
    );
    for (p, (g, c)) in gpu.rec.paths.iter().zip(&rec.paths).enumerate() {
        compare_path_with_cpu(p, g, c, gpu, &out, tag, table);
    }
    Ok(())
}

/// Path `p`: weight statistics and contract verdict, then the sampled outputs.
fn compare_path_with_cpu(
    p: usize,
    g: &PathRecord,
    c: &PathRecord,
    gpu: GpuStep,
    cpu_out: &BackendStep,
    tag: &str,
    table: &mut Table,
) {
    let stats = |r: &PathRecord| {
        let mut v = vec![
            r.routed_weight_sum.mean,
            r.routed_weight_sum.min,
            r.routed_weight_sum.max,
        ];
        if let Some(s) = r.shared_weight {
            v.extend([s.mean, s.min, s.max]);
        }
        v
    };
    let err = max_rel(stats(g).into_iter(), stats(c).into_iter());
    let same_verdict = g.contract.ok == c.contract.ok;
    table.add(
        path_name(p, "contract A vs cpu", "contract B vs cpu"),
        tag.to_string(),
        err,
        err <= 1e-4 && same_verdict,
        format!(
            "verdict {}",
            if g.contract.ok { "holds" } else { "violated" }
        ),
    );
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (a, b) in gpu.out.paths[p]
        .sample_outputs
        .iter()
        .zip(&cpu_out.paths[p].sample_outputs)
    {
        d += ((a - b) as f64).powi(2);
        n += (*b as f64).powi(2);
    }
    let rel = if n == 0.0 { d.sqrt() } else { (d / n).sqrt() };
    table.add(
        path_name(p, "layer A vs cpu", "layer B vs cpu"),
        tag.to_string(),
        rel,
        rel <= OUTPUT_REL_L2,
        "sampled tokens",
    );
}
