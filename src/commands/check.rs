//! `moescope check`: every kernel against the CPU reference.
//!
//! Fresh random inputs each run. Bars: routing ids equal the reference exactly (random inputs,
//! inputs with exact ties, bf16 logits, the golden files); weights within 1e-5 relative;
//! device-initialized weights and hidden states bit for bit the host's; layer output relative L2
//! against the f64 reference ≤ 1e-2 for both paths, and between the paths; every output element
//! written (outputs are poisoned with NaN before each run).

use super::route::RouteOutput;
use super::LayerArgs;
use crate::engine::compare;
use crate::engine::config::{MoeConfig, PRESET_NAMES};
use crate::engine::cpu::CpuBackend;
use crate::engine::cuda::gpu::{ptr, Gpu};
use crate::engine::cuda::kernels::InitHiddenArgs;
use crate::engine::cuda::layer::{CudaBackend, DeviceLayer};
use crate::engine::cuda::router::{self, FusedKernel, RouterIo, RouterShape, UnfusedBufs};
use crate::engine::inputs::tensor_to_f32;
use crate::engine::paths::{PathSpec, Variant, VARIANTS};
use crate::engine::routing::{self, Routing};
use crate::engine::spec::LayerSource;
use crate::engine::spec::LayerSpec;
use crate::engine::weights::synthetic::{self, SyntheticWeights};
use crate::engine::weights::WeightSource;
use crate::engine::{Backend, BackendKind, StepInput};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    /// Check every preset.
    #[arg(long)]
    pub all: bool,
    /// Directory of the golden routing files.
    #[arg(long, default_value = GOLDEN_DIR)]
    pub golden: PathBuf,
    /// Check a router kernel of yours instead (a .cu for NVRTC or a .so; docs/kernel-abi.md).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// With --kernel: also write the report as JSON to this file.
    #[arg(long, requires = "kernel")]
    pub json: Option<PathBuf>,
    /// With --json: overwrite an existing file.
    #[arg(long, requires = "json")]
    pub force: bool,
    /// With --kernel: near ties (rounding-level differences) fail too.
    #[arg(long, requires = "kernel")]
    pub strict: bool,
}

/// Router token counts.
const ROUTER_TOKENS: &[usize] = &[1, 7, 64, 1000, 40000];
/// Token counts of the layer checks on small expert matrices, and on the full layer.
const SMALL_LAYER_TOKENS: &[usize] = &[1, 7, 64, 1000];
const FULL_LAYER_TOKENS: &[usize] = &[1, 64, 512];
/// Tolerances (see the module doc).
const WEIGHT_REL: f64 = 1e-5;
const OUTPUT_REL_L2: f64 = 1e-2;

/// One row of the table.
struct Row {
    kernel: String,
    shape: String,
    error: f64,
    ok: bool,
    note: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, kernel: &str, shape: String, error: f64, ok: bool, note: impl Into<String>) {
        let row = Row {
            kernel: kernel.to_string(),
            shape,
            error,
            ok,
            note: note.into(),
        };
        println!(
            "{:<22} {:<46} {:>11.3e}  {}{}",
            row.kernel,
            row.shape,
            row.error,
            if row.ok { "ok" } else { "FAIL" },
            if row.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", row.note)
            }
        );
        self.rows.push(row);
    }
    fn failures(&self) -> usize {
        self.rows.iter().filter(|r| !r.ok).count()
    }
}

pub fn run(args: CheckArgs) -> Result<()> {
    if let Some(kernel) = &args.kernel {
        return super::check_kernel::run(&args, kernel);
    }
    let gpu = Arc::new(Gpu::open().context("moescope check needs a CUDA device")?);
    println!("moescope check on {}", gpu.describe());
    let presets: Vec<String> = if args.all {
        PRESET_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![args
            .layer
            .preset
            .clone()
            .unwrap_or_else(|| "deepseek-v3".to_string())]
    };
    let mut table = Table::default();
    println!(
        "{:<22} {:<46} {:>11}  verdict",
        "kernel", "shape", "max error"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::rng().random());
    check_golden(&gpu, &args.golden, &mut table)?;
    for name in &presets {
        let layer = LayerSpec {
            source: LayerSource::Preset(name.clone()),
            ..args.layer.spec()
        };
        let base = layer.base_config()?.with_tensor_parallel(layer.tp)?;
        check_routers(&gpu, &base, &mut rng, &mut table)?;
        // Small expert matrices: compared with the CPU backend and the f64 reference.
        let (small, _) = layer.weights(true)?;
        check_layer(&gpu, small, SMALL_LAYER_TOKENS, true, &mut rng, &mut table)?;
        // The full layer: against the f64 reference on sampled tokens.
        let (full, _) = layer
            .on(crate::engine::BackendChoice::Cuda)
            .weights(false)?;
        check_layer(&gpu, full, FULL_LAYER_TOKENS, false, &mut rng, &mut table)?;
    }
    let failed = table.failures();
    println!("{} checks, {} failed", table.rows.len(), failed);
    if failed > 0 {
        bail!("{failed} of {} checks failed", table.rows.len());
    }
    Ok(())
}

/// Largest relative difference, |a−b| / max(|b|, floor).
fn max_rel(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) -> f64 {
    a.zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f64::INFINITY
            } else {
                (x - y).abs() / y.abs().max(1e-12)
            }
        })
        .fold(0.0, f64::max)
}

/// Random logits: N(0, 2²); with `ties`, rounded to quarters so many values repeat exactly.
fn random_logits(rng: &mut impl Rng, n: usize, ties: bool) -> Result<Vec<f32>> {
    let normal =
        rand_distr::Normal::new(0.0f32, 2.0).map_err(|e| anyhow!("normal distribution: {e}"))?;
    Ok((0..n)
        .map(|_| {
            let v: f32 = rng.sample(normal);
            if ties {
                (v * 4.0).round() / 4.0
            } else {
                v
            }
        })
        .collect())
}

/// Fused and unfused GPU routers against routing::route on the same logits.
fn check_routers(gpu: &Gpu, cfg: &MoeConfig, rng: &mut impl Rng, table: &mut Table) -> Result<()> {
    let e = cfg.n_routed_experts;
    let rsf = cfg.routed_scaling_factor;
    let bias: Option<Vec<f32>> = cfg
        .has_bias
        .then(|| (0..e).map(|_| rng.random_range(-0.05f32..0.05)).collect());
    let s = cfg.n_shared_experts;
    let mut cases: Vec<(usize, bool, bool, usize)> = Vec::new(); // tokens, ties, bf16, k
    for &t in ROUTER_TOKENS {
        cases.push((t, false, false, cfg.num_experts_per_tok));
    }
    cases.push((1000, true, false, cfg.num_experts_per_tok));
    cases.push((1000, false, true, cfg.num_experts_per_tok));
    if s > 0 {
        cases.push((1000, false, false, cfg.num_experts_per_tok + s)); // shared-dropped
    }
    for (t, ties, bf16, k) in cases {
        let mut logits = random_logits(rng, t * e, ties)?;
        if bf16 {
            logits
                .iter_mut()
                .for_each(|v| *v = crate::engine::weights::round_bf16(*v));
        }
        let reference = routing::route(cfg, &logits, bias.as_deref(), k);
        let kind = if ties {
            "ties"
        } else if bf16 {
            "bf16 logits"
        } else {
            "f32 logits"
        };
        let shape = format!("{} T={t} E={e} k={k} {kind}", cfg.name);
        // Shared slots appended with the on-output contract's weight 1/rsf.
        let sh = RouterShape::new(cfg, k, s, 1.0, 1.0 / rsf)?;
        let spt = sh.spt();
        let d_logits_f32 = gpu.upload(&logits, "logits")?;
        let bits: Vec<u16> = logits
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        let d_logits_bf16 = gpu.upload(&bits, "logits")?;
        let d_bias = match &bias {
            Some(b) => Some(gpu.upload(b, "bias")?),
            None => None,
        };
        let ids = gpu.alloc::<u32>(t * spt, "ids")?;
        let weights = gpu.alloc::<f32>(t * spt, "weights")?;
        let probs = gpu.alloc::<f64>(t * k, "probs")?;
        let poison = |gpu: &Gpu| -> Result<()> {
            gpu.fill(gpu.ptr(&ids), t * spt, u32::MAX)?;
            gpu.fill(gpu.ptr(&weights), t * spt, f32::NAN.to_bits())
        };
        let io = RouterIo {
            logits: if bf16 {
                ptr(gpu, &d_logits_bf16)
            } else {
                ptr(gpu, &d_logits_f32)
            },
            logits_bf16: bf16,
            bias: d_bias.as_ref().map(|b| ptr(gpu, b)).unwrap_or(0),
            gate: 0,
            ids: ptr(gpu, &ids),
            weights: ptr(gpu, &weights),
            probs: ptr(gpu, &probs),
        };

        // The fused router as callers get it, and the v4 kernel it falls back to on other shapes.
        for (name, which) in [
            ("router_fused", FusedKernel::Auto),
            ("router_fused v4", FusedKernel::V4),
        ] {
            poison(gpu)?;
            router::fused_with(gpu, &sh, &io, t, which)?;
            let got_ids = gpu.download(&ids, t * spt, "ids")?;
            let got_w = gpu.download(&weights, t * spt, "weights")?;
            let got_p = gpu.download(&probs, t * k, "probs")?;
            let got = Routing {
                k,
                ids: strip(&got_ids, t, spt, k),
                probs: got_p,
            };
            report_router(
                table, name, &shape, cfg, &reference, &got, &got_ids, &got_w, &sh, 1.0,
            );
        }

        poison(gpu)?;
        let bufs = UnfusedBufs::new(gpu, t, e, cfg.n_group, k)?;
        let io_unfused = RouterIo { probs: 0, ..io };
        router::unfused(
            gpu,
            &sh,
            &io_unfused,
            t,
            &bufs,
            &mut crate::engine::cuda::gpu::Timer::new(false),
        )?;
        let u_ids = gpu.download(&ids, t * spt, "ids")?;
        let u_w = gpu.download(&weights, t * spt, "weights")?;
        let got = Routing {
            k,
            ids: strip(&u_ids, t, spt, k),
            probs: strip(&u_w, t, spt, k).iter().map(|&w| w as f64).collect(),
        };
        report_router(
            table,
            "router_unfused",
            &shape,
            cfg,
            &reference,
            &got,
            &u_ids,
            &u_w,
            &sh,
            1.0,
        );
    }
    Ok(())
}

/// The first `k` of every `spt` values.
fn strip<T: Copy>(v: &[T], t: usize, spt: usize, k: usize) -> Vec<T> {
    (0..t)
        .flat_map(|tok| v[tok * spt..tok * spt + k].iter().copied())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn report_router(
    table: &mut Table,
    kernel: &str,
    shape: &str,
    cfg: &MoeConfig,
    reference: &Routing,
    got: &Routing,
    slot_ids: &[u32],
    slot_w: &[f32],
    sh: &RouterShape,
    routed_scale: f64,
) {
    let t = reference.tokens();
    let mismatched = (0..t)
        .filter(|&tok| {
            let r = tok * reference.k..(tok + 1) * reference.k;
            reference.ids[r.clone()] != got.ids[r]
        })
        .count();
    table.add(
        kernel,
        format!("{shape} ids"),
        mismatched as f64,
        mismatched == 0,
        if mismatched == 0 {
            String::new()
        } else {
            format!("{mismatched} of {t} tokens differ")
        },
    );
    // Routed weights against the reference probabilities, and the shared slots' weight.
    let spt = sh.spt();
    let routed_err = max_rel(
        strip(slot_w, t, spt, sh.k).iter().map(|&w| w as f64),
        reference.probs.iter().map(|p| p * routed_scale),
    );
    let e = cfg.n_routed_experts as u32;
    let mut shared_ok = true;
    let mut shared_err: f64 = 0.0;
    for tok in 0..t {
        for j in 0..sh.s {
            let a = tok * spt + sh.k + j;
            shared_ok &= slot_ids[a] == e + j as u32;
            shared_err = shared_err.max(max_rel(
                std::iter::once(slot_w[a] as f64),
                std::iter::once(sh.shared_w as f32 as f64),
            ));
        }
    }
    let err = routed_err.max(shared_err);
    table.add(
        kernel,
        format!("{shape} weights"),
        err,
        err <= WEIGHT_REL && shared_ok,
        if shared_ok {
            ""
        } else {
            "shared slot ids wrong"
        },
    );
}

/// Where `check` looks for the golden routing files by default (the repository's own).
pub const GOLDEN_DIR: &str = "tests/data/golden";

/// The golden routing files (PyTorch reference) in `dir`, routed by the fused kernel: every
/// `NAME.json` with its `NAME.safetensors`. A missing directory is one skipped row, not a
/// failure (the files live in the repository, not in the binary).
fn check_golden(gpu: &Gpu, dir: &Path, table: &mut Table) -> Result<()> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect(),
        Err(_) => {
            println!(
                "golden files: {} not found (run from the repository root or pass --golden DIR); skipped",
                dir.display()
            );
            return Ok(());
        }
    };
    names.sort();
    for name in &names {
        let json_path = dir.join(format!("{name}.json"));
        let json = std::fs::read_to_string(&json_path)
            .with_context(|| format!("cannot read golden file {}", json_path.display()))?;
        let tensors_path = dir.join(format!("{name}.safetensors"));
        let tensors = std::fs::read(&tensors_path)
            .with_context(|| format!("cannot read golden file {}", tensors_path.display()))?;
        let want: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("golden file {name}.json"))?;
        let preset = want["preset"]
            .as_str()
            .ok_or_else(|| anyhow!("golden file {name}.json names no preset"))?;
        let cfg = MoeConfig::preset(preset)?;
        let st = safetensors::SafeTensors::deserialize(&tensors)
            .with_context(|| format!("golden file {name}.safetensors"))?;
        let logits = tensor_to_f32("router_logits", &st.tensor("router_logits")?)?;
        let bias = match st.tensor("e_score_correction_bias") {
            Ok(v) if cfg.has_bias => Some(tensor_to_f32("e_score_correction_bias", &v)?),
            _ => None,
        };
        let e = cfg.n_routed_experts;
        let t = logits.len() / e;
        let routing = crate::engine::cuda::route_logits(
            gpu,
            &cfg,
            &logits,
            bias.as_deref(),
            cfg.num_experts_per_tok,
            t,
        )?;
        let out = RouteOutput::new(&cfg, BackendKind::Cuda, e, &routing);
        let want_ids: Vec<Vec<u32>> = serde_json::from_value(want["topk_ids"].clone())
            .with_context(|| format!("golden file {name}.json: topk_ids"))?;
        let want_w: Vec<Vec<f64>> = serde_json::from_value(want["topk_weights"].clone())
            .with_context(|| format!("golden file {name}.json: topk_weights"))?;
        let differ = want_ids
            .iter()
            .zip(&out.topk_ids)
            .filter(|(a, b)| a != b)
            .count()
            + want_ids.len().abs_diff(out.topk_ids.len());
        table.add(
            "router_fused golden",
            format!("{name} T={t} ids"),
            differ as f64,
            differ == 0,
            "",
        );
        let err = max_rel(
            out.topk_weights.iter().flatten().copied(),
            want_w.iter().flatten().copied(),
        );
        table.add(
            "router_fused golden",
            format!("{name} T={t} weights"),
            err,
            err <= WEIGHT_REL,
            "",
        );
    }
    Ok(())
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
    gpu.launch(
        gpu.stride(t * h, 256),
        InitHiddenArgs {
            out: gpu.ptr(&x),
            n: (t * h) as u64,
            seed,
            tensor: synthetic::tensor_id::HIDDEN_BASE + step,
        },
    )?;
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

/// The whole layer through both paths, every variant, with poisoned outputs; compared with the
/// f64 reference (compare::assemble) and, where `with_cpu`, with the CPU backend.
fn check_layer(
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
    }
    let shape = |t: usize| {
        format!(
            "{} T={t} H={} I={}",
            cfg.name, cfg.hidden_size, cfg.moe_intermediate_size
        )
    };
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
            let paths = vec![PathSpec::unfused_baseline(), PathSpec::fused(variant)];
            let out = gpu_backend
                .step(&input, &paths)
                .with_context(|| format!("{} variant {variant}", shape(t)))?;
            let rec =
                compare::assemble(&cfg, &gpu_backend, &input, &paths, &out, BackendKind::Cuda)?;
            let tag = format!("{} [{variant}]", shape(t));
            // Every output element written; ids valid; weights finite.
            for (p, run) in out.paths.iter().enumerate() {
                let bad_ids = run
                    .slot_ids
                    .iter()
                    .filter(|&&id| id as usize >= cfg.total_slots())
                    .count();
                let bad_w = run.slot_weights.iter().filter(|w| !w.is_finite()).count();
                let ok = run.output.nonfinite == 0 && bad_ids == 0 && bad_w == 0;
                table.add(
                    if p == 0 {
                        "path A written"
                    } else {
                        "path B written"
                    },
                    tag.clone(),
                    (run.output.nonfinite as usize + bad_ids + bad_w) as f64,
                    ok,
                    if ok {
                        String::new()
                    } else {
                        format!(
                            "{} non-finite outputs, {bad_ids} bad ids, {bad_w} bad weights",
                            run.output.nonfinite
                        )
                    },
                );
            }
            // Variants change the routing and weights on purpose; the correct contract must
            // match the reference.
            if variant == Variant::Correct {
                let agree = rec
                    .comparison
                    .routing_agreement_ref
                    .iter()
                    .copied()
                    .fold(1.0, f64::min);
                table.add(
                    "router ids vs ref",
                    tag.clone(),
                    1.0 - agree,
                    agree == 1.0,
                    "on the GPU's logits",
                );
                let wdiff = rec
                    .comparison
                    .weight_max_diff_ref
                    .iter()
                    .copied()
                    .fold(0.0, f64::max);
                let rel = wdiff / cfg.routed_scaling_factor;
                table.add(
                    "router weights vs ref",
                    tag.clone(),
                    rel,
                    rel <= WEIGHT_REL,
                    "",
                );
                for (p, e) in rec.comparison.output_rel_l2_ref.iter().enumerate() {
                    table.add(
                        if p == 0 {
                            "layer A vs f64 ref"
                        } else {
                            "layer B vs f64 ref"
                        },
                        tag.clone(),
                        *e,
                        *e <= OUTPUT_REL_L2,
                        format!("{} sampled tokens", rec.comparison.sampled_tokens),
                    );
                }
                let ab = rec.comparison.output_rel_l2_ab;
                table.add(
                    "layer A vs B",
                    tag.clone(),
                    ab,
                    ab <= OUTPUT_REL_L2,
                    "fused vs unfused",
                );
            }
            if let Some(cpu) = cpu.as_mut() {
                compare_with_cpu(cpu, &cfg, &input, &paths, &out, &rec, &tag, table)?;
            }
        }
    }
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

/// Same step on the CPU backend: logits, effective-weight statistics, contract verdicts, outputs.
#[allow(clippy::too_many_arguments)]
fn compare_with_cpu(
    cpu: &mut CpuBackend,
    cfg: &MoeConfig,
    input: &StepInput,
    paths: &[PathSpec],
    gpu_out: &crate::engine::BackendStep,
    gpu_rec: &crate::engine::step::StepRecord,
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
        .zip(&gpu_out.router_logits)
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
        gpu_out.sample_hidden.iter().map(|&v| v as f64),
        out.sample_hidden.iter().map(|&v| v as f64),
    );
    table.add(
        "hidden vs cpu",
        tag.to_string(),
        hidden_err,
        hidden_err == 0.0,
        "bit for bit",
    );
    for (p, (g, c)) in gpu_rec.paths.iter().zip(&rec.paths).enumerate() {
        let stats = |r: &crate::engine::step::PathRecord| {
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
            if p == 0 {
                "contract A vs cpu"
            } else {
                "contract B vs cpu"
            },
            tag.to_string(),
            err,
            err <= 1e-4 && same_verdict,
            format!(
                "verdict {}",
                if g.contract.ok { "holds" } else { "violated" }
            ),
        );
        let rel = {
            let (mut d, mut n) = (0.0f64, 0.0f64);
            for (a, b) in gpu_out.paths[p]
                .sample_outputs
                .iter()
                .zip(&out.paths[p].sample_outputs)
            {
                d += ((a - b) as f64).powi(2);
                n += (*b as f64).powi(2);
            }
            if n == 0.0 {
                d.sqrt()
            } else {
                (d / n).sqrt()
            }
        };
        table.add(
            if p == 0 {
                "layer A vs cpu"
            } else {
                "layer B vs cpu"
            },
            tag.to_string(),
            rel,
            rel <= OUTPUT_REL_L2,
            "sampled tokens",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_keeps_the_routed_slots() {
        assert_eq!(strip(&[1, 2, 9, 3, 4, 9], 2, 3, 2), vec![1, 2, 3, 4]);
    }

    #[test]
    fn max_rel_treats_nan_as_failure() {
        assert_eq!(max_rel([1.0].into_iter(), [1.0].into_iter()), 0.0);
        assert!(max_rel([f64::NAN].into_iter(), [1.0].into_iter()).is_infinite());
    }
}
