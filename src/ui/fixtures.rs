//! Deterministic StepRecords built by hand (no engine, no clock) for the view snapshots and the
//! frame benchmark: the numbers follow from a hash of (step, slot), so every run draws the same
//! screen and engine changes cannot move the snapshots.

use super::app::{App, Mode};
use super::source::{Meta, SourceEvent};
use crate::engine::config::MoeConfig;
use crate::engine::paths::{LogitsDtype, PathId, PathSpec, RouterImpl, SharedMode, Variant};
use crate::engine::step::{
    Comparison, ContractCheck, KernelTiming, OutputStats, PathRecord, SlotWeights, Stage, Stats,
    StepRecord, TelemetrySample, TokenDetail,
};
use crate::engine::BackendKind;
use crate::session::{SessionHeader, SessionWriter, SESSION_FORMAT, SESSION_VERSION};
use anyhow::Result;
use std::path::Path;

/// splitmix64: a well-mixed hash of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A number in [0, 1) from a few words.
fn unit(a: u64, b: u64, c: u64) -> f64 {
    (mix(mix(mix(a) ^ b) ^ c) >> 11) as f64 / (1u64 << 53) as f64
}

/// Experts a token picks: hash-driven with a skew toward low ids, distinct, ascending by rank.
fn pick(cfg: &MoeConfig, step: u64, token: u64, k: usize) -> Vec<u32> {
    let e = cfg.n_routed_experts as u64;
    let mut ids = Vec::with_capacity(k);
    let mut salt = 0;
    while ids.len() < k {
        let u = unit(step, token, salt);
        salt += 1;
        // Squaring skews toward low ids, so the load is visibly uneven.
        let id = ((u * u) * e as f64) as u32;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

const UNFUSED_KERNELS: &[(Stage, f64, Option<u64>)] = &[
    (Stage::RouterScores, 6.0, Some(1 << 20)),
    (Stage::RouterAddBias, 4.0, None),
    (Stage::RouterGroupScores, 5.0, None),
    (Stage::RouterGroupTopk, 5.0, None),
    (Stage::RouterMask, 3.0, None),
    (Stage::RouterExpertTopk, 7.0, None),
    (Stage::RouterGather, 1.5, None),
    (Stage::RouterRenormalize, 1.5, None),
    (Stage::RouterScale, 1.0, None),
    (Stage::MoeAlign, 9.0, None),
    (Stage::ExpertGemmUp, 180.0, Some(1 << 27)),
    (Stage::SiluMul, 6.0, None),
    (Stage::ExpertGemmDown, 95.0, Some(1 << 26)),
    (Stage::SharedMlp, 40.0, Some(1 << 25)),
    (Stage::Combine, 8.0, None),
];

const FUSED_KERNELS: &[(Stage, f64, Option<u64>)] = &[
    (Stage::RouterFused, 3.5, Some(1 << 20)),
    (Stage::MoeAlign, 9.0, None),
    (Stage::ExpertGemmUp, 205.0, Some(1 << 27)),
    (Stage::SiluMul, 6.5, None),
    (Stage::ExpertGemmDown, 108.0, Some(1 << 26)),
    (Stage::Combine, 7.0, None),
];

/// Path C: a user's router kernel, then moescope's align, GEMMs and combine.
const USER_KERNELS: &[(Stage, f64, Option<u64>)] = &[
    (Stage::RouterUser, 3.1, Some(1 << 20)),
    (Stage::MoeAlign, 9.0, None),
    (Stage::ExpertGemmUp, 205.0, Some(1 << 27)),
    (Stage::SiluMul, 6.5, None),
    (Stage::ExpertGemmDown, 108.0, Some(1 << 26)),
    (Stage::Combine, 7.0, None),
];

/// Step `step` of a run of `cfg` with `paths` at `tokens` tokens per step.
pub fn record(
    cfg: &MoeConfig,
    paths: &[PathSpec],
    tokens: usize,
    step: u64,
    telemetry: bool,
) -> StepRecord {
    let e = cfg.n_routed_experts;
    let s = cfg.n_shared_experts;
    let k = cfg.num_experts_per_tok;
    let rsf = cfg.routed_scaling_factor;
    let mut records = Vec::new();
    let mut details_paths: Vec<Vec<SlotWeights>> = Vec::new();
    let detail_tokens: Vec<usize> = (0..4.min(tokens)).map(|i| i * tokens / 4).collect();
    // Paths past C have no id; the fixtures run two or three.
    for (pi, (spec, id)) in paths.iter().zip(PathId::ALL).enumerate() {
        let c = spec.contract(rsf, s > 0);
        let routed_k = spec.routed_per_token(k, s);
        let mut load = vec![0u32; e + s];
        let mut per_detail = Vec::new();
        for t in 0..tokens {
            let ids = pick(cfg, step, t as u64, routed_k);
            for &id in &ids {
                load[id as usize] += 1;
            }
            if detail_tokens.contains(&t) {
                let w = 1.0 / routed_k as f64;
                let mut sw = SlotWeights {
                    ids: ids.clone(),
                    weights: ids.iter().map(|_| c.effective_routed(w)).collect(),
                };
                // The shared experts' effective weight, fused slot or separate MLP alike.
                let shared = if spec.variant == Variant::SharedDropped {
                    0
                } else {
                    s
                };
                for j in 0..shared {
                    sw.ids.push((e + j) as u32);
                    sw.weights.push(c.effective_shared());
                }
                per_detail.push(sw);
            }
        }
        // Every token reaches the shared experts, fused as slots or as a separate MLP, unless
        // the variant drops them.
        if spec.variant != Variant::SharedDropped {
            load[e..].iter_mut().for_each(|l| *l = tokens as u32);
        }
        details_paths.push(per_detail);
        let jitter = |j: u64| 1.0 + 0.1 * (unit(step, pi as u64, 100 + j) - 0.5);
        let kernels = match spec.router {
            RouterImpl::Unfused => UNFUSED_KERNELS,
            RouterImpl::Fused => FUSED_KERNELS,
            RouterImpl::User => USER_KERNELS,
        };
        let timings: Vec<KernelTiming> = kernels
            .iter()
            .enumerate()
            .filter(|(_, (stage, _, _))| {
                *stage != Stage::SharedMlp || spec.shared == SharedMode::Separate
            })
            .map(|(j, (stage, us, bytes))| KernelTiming {
                stage: *stage,
                us: (us * jitter(j as u64) * 10.0).round() / 10.0,
                bytes: *bytes,
            })
            .collect();
        let total_us = timings.iter().map(|t| t.us).sum::<f64>();
        let eff_routed = c.effective_routed(1.0);
        let eff_shared = c.effective_shared();
        let gate = 1.0;
        let shared_weight = (s > 0).then_some(Stats {
            mean: eff_shared * gate,
            min: eff_shared * gate,
            max: eff_shared * gate,
        });
        let routed_dev = (eff_routed - rsf).abs();
        let shared_dev = if s > 0 { (eff_shared - 1.0).abs() } else { 0.0 };
        let routed_weight_sum = Stats {
            mean: eff_routed,
            min: eff_routed - 1e-7,
            max: eff_routed + 1e-7,
        };
        let mut contract = ContractCheck {
            ok: false,
            expected_routed_sum: Stats {
                mean: rsf,
                min: rsf,
                max: rsf,
            },
            expected_shared: (s > 0).then_some(Stats {
                mean: 1.0,
                min: 1.0,
                max: 1.0,
            }),
            routed_max_dev: routed_dev,
            shared_max_dev: shared_dev,
            violations: Vec::new(),
        };
        contract.violations =
            contract.violations_of(&routed_weight_sum, shared_weight.as_ref(), 1e-3);
        contract.ok = contract.violations.is_empty();
        records.push(PathRecord {
            name: id,
            spec: spec.clone(),
            load,
            routed_weight_sum,
            shared_weight,
            contract,
            output: OutputStats {
                rms: 0.8 * eff_routed / rsf + 0.2 * eff_shared,
                max_abs: 4.0 * eff_routed / rsf + eff_shared,
                nonfinite: 0,
            },
            timings,
            total_us,
            clean_us: Some((total_us * 0.97 * 10.0).round() / 10.0),
            finite: None,
        });
    }
    let token_details = detail_tokens
        .iter()
        .enumerate()
        .map(|(d, &t)| {
            let group_scores: Vec<f32> = (0..cfg.n_group)
                .map(|g| (unit(step, t as u64, 500 + g as u64) * 2.0) as f32)
                .collect();
            let mut order: Vec<u32> = (0..cfg.n_group as u32).collect();
            order.sort_by(|a, b| {
                group_scores[*b as usize]
                    .total_cmp(&group_scores[*a as usize])
                    .then(a.cmp(b))
            });
            order.truncate(cfg.topk_group);
            let ids = pick(cfg, step, t as u64, k);
            let mut reference = SlotWeights {
                weights: ids.iter().map(|_| rsf / k as f64).collect(),
                ids,
            };
            for j in 0..s {
                reference.ids.push((e + j) as u32);
                reference.weights.push(1.0);
            }
            TokenDetail {
                token: t,
                group_scores,
                kept_groups: order,
                reference,
                paths: details_paths.iter().map(|p| p[d].clone()).collect(),
                ..TokenDetail::default()
            }
        })
        .collect();
    // A path on bf16 logits routes 3 of 64 tokens elsewhere than the f32 reference.
    let bf16 = |p: &PathSpec| p.logits == LogitsDtype::Bf16;
    let moved = |on: bool| if on { 61.0 / 64.0 } else { 1.0 };
    let agree = if paths.iter().any(|p| p.variant == Variant::SharedDropped) {
        0.0
    } else {
        1.0
    };
    StepRecord {
        step,
        tokens,
        backend: BackendKind::Cuda,
        wall_us: 1500.0,
        t_ms: 100.0 * (step + 1) as f64,
        comparison: Comparison {
            // A and B disagree where one of them (not both) reads bf16.
            routing_agreement_ab: agree
                * moved(paths.iter().take(2).filter(|p| bf16(p)).count() == 1),
            routing_agreement_ref: paths
                .iter()
                .enumerate()
                .map(|(i, p)| if i == 0 { 1.0 } else { agree } * moved(bf16(p)))
                .collect(),
            weight_max_diff_ref: records
                .iter()
                .map(|p| p.contract.routed_max_dev / k as f64 + 2e-7)
                .collect(),
            output_rel_l2_ab: 1e-4 * (1.0 + unit(step, 7, 7)),
            output_rel_l2_ref: [2e-3, 2.1e-3, 2.05e-3]
                .iter()
                .zip(8u64..)
                .take(paths.len())
                .map(|(e, j)| e * (1.0 + unit(step, j, j)))
                .collect(),
            sampled_tokens: detail_tokens.len(),
            ..Comparison::default()
        },
        paths: records,
        token_details,
        ep: None,
        telemetry: telemetry.then(|| TelemetrySample {
            t_ms: 100.0 * step as f64,
            gpu_util_pct: Some(60 + (step % 30) as u32),
            mem_util_pct: Some(40 + (step % 20) as u32),
            mem_used_mib: Some(20_000 + step * 10),
            mem_total_mib: Some(81_559),
            power_w: Some(300.0 + (step % 50) as f64 * 2.0),
            power_limit_w: Some(700.0),
            sm_clock_mhz: Some(1980 - (step % 4) as u32 * 15),
            mem_clock_mhz: Some(2619),
            temperature_c: Some(55 + (step % 10) as u32),
            pcie_tx_kib_s: Some(1000 + (step % 7) as u32 * 100),
            pcie_rx_kib_s: Some(2000 + (step % 5) as u32 * 100),
            throttle_reasons: if step.is_multiple_of(2) {
                vec!["sw_power_cap".into()]
            } else {
                vec![]
            },
            gpm_sm_occupancy_pct: Some(35.5),
            gpm_tensor_active_pct: Some(12.25),
            gpm_dram_bw_util_pct: Some(48.0 + (step % 10) as f64),
        }),
    }
}

/// An App that has received `steps` fixture steps of preset `preset` with path B in `variant`,
/// as the live engine or a replay would have sent them.
pub fn app(preset: &str, variant: Variant, steps: u64, telemetry: bool, mode: Mode) -> Result<App> {
    let paths = vec![PathSpec::unfused_baseline(), PathSpec::fused(variant)];
    app_with(preset, &paths, steps, telemetry, mode)
}

/// The name of the user kernel the three-path fixtures run as path C.
pub const USER_KERNEL: &str = "fused_router.cu";

/// Paths A and B (B in `variant`) and path C, a user kernel (`USER_KERNEL`) that declares rsf
/// on the output, as `run --kernel` builds them.
pub fn three_paths(variant: Variant) -> Vec<PathSpec> {
    vec![
        PathSpec::unfused_baseline(),
        PathSpec::fused(variant),
        PathSpec::user(USER_KERNEL, false),
    ]
}

/// As [`app`], with the given paths (two or three).
pub fn app_with(
    preset: &str,
    paths: &[PathSpec],
    steps: u64,
    telemetry: bool,
    mode: Mode,
) -> Result<App> {
    let cfg = MoeConfig::preset(preset)?;
    let paths = paths.to_vec();
    let tokens = 64;
    let mut app = App::new(mode);
    app.on_event(SourceEvent::Ready(Box::new(Meta {
        source: match mode {
            Mode::Live => "live".into(),
            Mode::Replay => "fixture.jsonl".into(),
        },
        config: cfg.clone(),
        backend: BackendKind::Cuda,
        device: "NVIDIA H100 80GB HBM3 (sm_90)".into(),
        paths: paths.clone(),
        tokens,
        weights: "synthetic, seed 7".into(),
        max_tokens: None,
    })));
    app.on_event(SourceEvent::Telemetry(
        (!telemetry).then(|| "NVML not found (libnvidia-ml.so.1)".to_string()),
    ));
    for step in 0..steps {
        app.on_event(SourceEvent::Record(Box::new(record(
            &cfg, &paths, tokens, step, telemetry,
        ))));
    }
    Ok(app)
}

/// Writes `steps` fixture steps of preset `preset` with `paths` as a session file (what a
/// recorded run leaves), for replay and export tests without a GPU.
pub fn write_session(path: &Path, preset: &str, paths: &[PathSpec], steps: u64) -> Result<()> {
    let cfg = MoeConfig::preset(preset)?;
    let header = SessionHeader {
        format: SESSION_FORMAT.to_string(),
        version: SESSION_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        backend: BackendKind::Cuda,
        device: "NVIDIA H100 80GB HBM3 (sm_90)".into(),
        config: cfg.clone(),
        paths: paths.to_vec(),
        weights: "synthetic, seed 7".into(),
        started: "2026-12-03T18:00:00Z".into(),
    };
    let mut w = SessionWriter::create(path, &header, false)?;
    for step in 0..steps {
        w.write(&record(&cfg, paths, 64, step, true))?;
    }
    Ok(())
}
