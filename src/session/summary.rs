//! `replay --summary`: aggregate statistics of a session, built one step at a time with the
//! statistics of `engine::stats` (percentiles exact).

use super::SessionHeader;
use crate::engine::paths::PathId;
use crate::engine::stats::{gb_per_s, imbalance, Dist, DistBuilder};
use crate::engine::step::{ContractViolation, PathRecord, Stage, StepRecord};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Hottest experts listed per path.
const HOTTEST: usize = 5;

/// One contract verdict worth naming.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub step: u64,
    pub violations: Vec<ContractViolation>,
    /// The violations in words (`session::words`).
    pub message: String,
    /// Larger of the routed and shared deviations.
    pub deviation: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ContractSummary {
    pub ok_steps: u64,
    pub violated_steps: u64,
    pub first_violation: Option<Violation>,
    pub worst_violation: Option<Violation>,
    pub routed_max_dev: f64,
    pub shared_max_dev: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelSummary {
    pub stage: Stage,
    pub us: Dist,
    /// Achieved bandwidth, where the kernel reports the bytes it must move.
    pub gb_per_s: Option<Dist>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathSummary {
    pub name: PathId,
    pub label: String,
    /// Labels of the path as the steps ran it, in order of first appearance, where they differ
    /// from `label` (the TUI can switch path B's variant mid-session).
    pub other_labels: Vec<String>,
    /// In the order the kernels first appeared.
    pub kernels: Vec<KernelSummary>,
    pub total_us: Dist,
    pub clean_us: Option<Dist>,
    /// Per step: the busiest routed expert's tokens over the mean routed expert's.
    pub load_imbalance: Dist,
    /// The same ratio for the load summed over the whole session.
    pub session_imbalance: f64,
    /// Routed expert id and tokens over the session, busiest first.
    pub hottest_experts: Vec<(u32, u64)>,
    /// Tokens per routed expert summed over the session.
    pub load_total: Vec<u64>,
    pub contract: ContractSummary,
    /// Fraction of tokens routed like the reference router, per step.
    pub routing_agreement_ref: Dist,
    /// Relative L2 error against the f64 reference, per step.
    pub output_rel_l2_ref: Dist,
    pub nonfinite_outputs: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TelemetrySummary {
    pub samples: u64,
    pub power_w: Dist,
    pub gpu_util_pct: Dist,
    pub sm_clock_mhz: Dist,
    pub temperature_c: Dist,
    pub mem_used_mib_max: Option<u64>,
    /// Throttle reason → steps on which it was active.
    pub throttle_reasons: BTreeMap<String, u64>,
}

/// Aggregate statistics of a session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub first_step: Option<u64>,
    pub last_step: Option<u64>,
    pub tokens: Dist,
    /// From the first step's start to the last step's end, ms.
    pub span_ms: f64,
    pub wall_us: Dist,
    pub paths: Vec<PathSummary>,
    pub routing_agreement_ab: Dist,
    pub output_rel_l2_ab: Dist,
    pub telemetry: Option<TelemetrySummary>,
}

impl Summary {
    /// Reads every step once.
    pub fn of_steps(
        header: &SessionHeader,
        steps: impl Iterator<Item = Result<StepRecord>>,
    ) -> Result<Summary> {
        let mut b = SummaryBuilder::new(header);
        for step in steps {
            b.add(&step?);
        }
        Ok(b.finish())
    }

    /// The human-readable report `replay --summary` prints.
    pub fn render(&self, source: &str) -> String {
        let mut s = String::new();
        let _ = self.render_into(&mut s, source);
        s
    }

    fn render_into(&self, s: &mut String, source: &str) -> std::fmt::Result {
        writeln!(s, "session  {source}")?;
        match (self.first_step, self.last_step) {
            (Some(a), Some(b)) => {
                let tokens = if self.tokens.min == self.tokens.max {
                    format!("{:.0}", self.tokens.min)
                } else {
                    format!("{:.0} to {:.0}", self.tokens.min, self.tokens.max)
                };
                writeln!(
                    s,
                    "steps    {} (step {a} to {b}), {tokens} tokens per step, {:.2} s recorded",
                    self.steps,
                    self.span_ms / 1e3
                )?
            }
            _ => {
                writeln!(s, "steps    none recorded")?;
                return Ok(());
            }
        }
        writeln!(
            s,
            "step wall time  p50 {}  p99 {}  max {} (both paths and the analysis)",
            us(self.wall_us.p50),
            us(self.wall_us.p99),
            us(self.wall_us.max)
        )?;
        for p in &self.paths {
            writeln!(s, "path {}   {}", p.name, p.label)?;
            for other in &p.other_labels {
                writeln!(s, "         later in the session: {other}")?;
            }
        }

        writeln!(s, "\nkernel times (µs)")?;
        writeln!(
            s,
            "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "path / kernel", "p50", "p90", "p99", "max", "mean"
        )?;
        for p in &self.paths {
            for k in &p.kernels {
                let mut name = format!("{} {}", p.name, k.stage);
                if let Some(bw) = &k.gb_per_s {
                    name.push_str(&format!(" ({:.0} GB/s p50)", bw.p50));
                }
                time_row(s, &name, &k.us)?;
            }
            time_row(s, &format!("{} total", p.name), &p.total_us)?;
            if let Some(clean) = &p.clean_us {
                time_row(s, &format!("{} clean (one event pair)", p.name), clean)?;
            }
        }

        writeln!(
            s,
            "\nload imbalance (busiest routed expert / mean, per step)"
        )?;
        for p in &self.paths {
            let hot: Vec<String> = p
                .hottest_experts
                .iter()
                .map(|(e, n)| format!("{e} ({n})"))
                .collect();
            writeln!(
                s,
                "  {}  p50 {:.2}  p99 {:.2}  max {:.2}; whole session {:.2}; hottest: {}",
                p.name,
                p.load_imbalance.p50,
                p.load_imbalance.p99,
                p.load_imbalance.max,
                p.session_imbalance,
                hot.join(", ")
            )?;
        }

        writeln!(s, "\nscaling contract")?;
        for p in &self.paths {
            let c = &p.contract;
            let total = c.ok_steps + c.violated_steps;
            if c.violated_steps == 0 {
                writeln!(
                    s,
                    "  {}  holds on all {total} steps (largest deviation: routed {:.2e}, shared {:.2e})",
                    p.name, c.routed_max_dev, c.shared_max_dev
                )?;
            } else {
                writeln!(
                    s,
                    "  {}  VIOLATED on {} of {total} steps (largest deviation: routed {:.3e}, shared {:.3e})",
                    p.name, c.violated_steps, c.routed_max_dev, c.shared_max_dev
                )?;
                if let Some(v) = &c.first_violation {
                    writeln!(s, "      first at step {}: {}", v.step, v.message)?;
                }
                if let Some(v) = c
                    .worst_violation
                    .as_ref()
                    .filter(|w| Some(*w) != c.first_violation.as_ref())
                {
                    writeln!(s, "      worst at step {}: {}", v.step, v.message)?;
                }
            }
        }

        writeln!(s, "\nnumerics")?;
        let nan = |d: &Dist| {
            if d.nonfinite > 0 {
                format!(" (NaN on {} steps)", d.nonfinite)
            } else {
                String::new()
            }
        };
        writeln!(
            s,
            "  routing agreement A/B: mean {:.4}, min {:.4}; output rel. L2 A/B: max {:.3e}{}",
            self.routing_agreement_ab.mean,
            self.routing_agreement_ab.min,
            self.output_rel_l2_ab.max,
            nan(&self.output_rel_l2_ab)
        )?;
        for p in &self.paths {
            writeln!(
                s,
                "  {} vs reference: routing agreement mean {:.4}, min {:.4}; output rel. L2 max {:.3e}{}; non-finite outputs {}",
                p.name,
                p.routing_agreement_ref.mean,
                p.routing_agreement_ref.min,
                p.output_rel_l2_ref.max,
                nan(&p.output_rel_l2_ref),
                p.nonfinite_outputs
            )?;
        }

        if let Some(t) = &self.telemetry {
            writeln!(s, "\ntelemetry ({} samples)", t.samples)?;
            let row = |s: &mut String, name: &str, d: &Dist| {
                if d.n > 0 {
                    writeln!(
                        s,
                        "  {name:<14} mean {:.1}  p50 {:.1}  max {:.1}",
                        d.mean, d.p50, d.max
                    )
                } else {
                    Ok(())
                }
            };
            row(s, "power W", &t.power_w)?;
            row(s, "GPU util %", &t.gpu_util_pct)?;
            row(s, "SM clock MHz", &t.sm_clock_mhz)?;
            row(s, "temperature C", &t.temperature_c)?;
            if let Some(m) = t.mem_used_mib_max {
                writeln!(s, "  memory used    max {m} MiB")?;
            }
            for (reason, n) in &t.throttle_reasons {
                writeln!(s, "  throttled: {reason} on {n} steps")?;
            }
        }
        Ok(())
    }
}

fn us(v: f64) -> String {
    if v >= 1e4 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{v:.1} µs")
    }
}

fn time_row(s: &mut String, name: &str, d: &Dist) -> std::fmt::Result {
    writeln!(
        s,
        "  {name:<28} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
        d.p50, d.p90, d.p99, d.max, d.mean
    )
}

#[derive(Default)]
struct KernelBuilder {
    stage: Option<Stage>,
    us: DistBuilder,
    gb_per_s: DistBuilder,
}

struct PathBuilder {
    name: PathId,
    label: String,
    other_labels: Vec<String>,
    kernels: Vec<KernelBuilder>,
    total_us: DistBuilder,
    clean_us: DistBuilder,
    imbalance: DistBuilder,
    load_total: Vec<u64>,
    contract: ContractSummary,
    agreement_ref: DistBuilder,
    rel_l2_ref: DistBuilder,
    nonfinite: u64,
}

#[derive(Default)]
struct TelemetryBuilder {
    samples: u64,
    power_w: DistBuilder,
    gpu_util_pct: DistBuilder,
    sm_clock_mhz: DistBuilder,
    temperature_c: DistBuilder,
    mem_used_mib_max: Option<u64>,
    throttle_reasons: BTreeMap<String, u64>,
}

/// Folds steps into a [`Summary`] one at a time (the JSON export builds one while streaming).
pub struct SummaryBuilder {
    routed_experts: usize,
    steps: u64,
    first_step: Option<u64>,
    last_step: Option<u64>,
    first_start_ms: Option<f64>,
    last_end_ms: f64,
    tokens: DistBuilder,
    wall_us: DistBuilder,
    paths: Vec<PathBuilder>,
    agreement_ab: DistBuilder,
    rel_l2_ab: DistBuilder,
    telemetry: Option<TelemetryBuilder>,
}

impl SummaryBuilder {
    pub fn new(header: &SessionHeader) -> SummaryBuilder {
        SummaryBuilder {
            routed_experts: header.config.n_routed_experts,
            steps: 0,
            first_step: None,
            last_step: None,
            first_start_ms: None,
            last_end_ms: 0.0,
            tokens: DistBuilder::default(),
            wall_us: DistBuilder::default(),
            paths: header
                .paths
                .iter()
                .zip(PathId::ALL)
                .map(|(spec, name)| PathBuilder::new(name, spec.label()))
                .collect(),
            agreement_ab: DistBuilder::default(),
            rel_l2_ab: DistBuilder::default(),
            telemetry: None,
        }
    }

    pub fn add(&mut self, r: &StepRecord) {
        self.steps += 1;
        self.first_step.get_or_insert(r.step);
        self.last_step = Some(r.step);
        self.first_start_ms.get_or_insert(r.t_ms - r.wall_us / 1e3);
        self.last_end_ms = self.last_end_ms.max(r.t_ms);
        self.tokens.add(r.tokens as f64);
        self.wall_us.add(r.wall_us);
        self.agreement_ab.add(r.comparison.routing_agreement_ab);
        self.rel_l2_ab.add(r.comparison.output_rel_l2_ab);
        for (i, p) in r.paths.iter().enumerate() {
            // A path the header did not name (a damaged or hand-made session) gets its own.
            let pb = match self.paths.iter().position(|b| b.name == p.name) {
                Some(j) => &mut self.paths[j],
                None => {
                    self.paths.push(PathBuilder::new(p.name, p.spec.label()));
                    self.paths.sort_by_key(|b| b.name);
                    let j = self.paths.iter().position(|b| b.name == p.name);
                    &mut self.paths[j.unwrap_or(0)]
                }
            };
            pb.add(p, r.step, self.routed_experts);
            if let Some(&v) = r.comparison.routing_agreement_ref.get(i) {
                pb.agreement_ref.add(v);
            }
            if let Some(&v) = r.comparison.output_rel_l2_ref.get(i) {
                pb.rel_l2_ref.add(v);
            }
        }
        if let Some(t) = &r.telemetry {
            let tb = self.telemetry.get_or_insert_with(TelemetryBuilder::default);
            tb.samples += 1;
            let opt = |d: &mut DistBuilder, v: Option<f64>| {
                if let Some(v) = v {
                    d.add(v)
                }
            };
            opt(&mut tb.power_w, t.power_w);
            opt(&mut tb.gpu_util_pct, t.gpu_util_pct.map(f64::from));
            opt(&mut tb.sm_clock_mhz, t.sm_clock_mhz.map(f64::from));
            opt(&mut tb.temperature_c, t.temperature_c.map(f64::from));
            if let Some(m) = t.mem_used_mib {
                tb.mem_used_mib_max = Some(tb.mem_used_mib_max.map_or(m, |x| x.max(m)));
            }
            for reason in &t.throttle_reasons {
                *tb.throttle_reasons.entry(reason.clone()).or_insert(0) += 1;
            }
        }
    }

    pub fn finish(self) -> Summary {
        Summary {
            steps: self.steps,
            first_step: self.first_step,
            last_step: self.last_step,
            tokens: self.tokens.finish(),
            span_ms: self
                .first_start_ms
                .map_or(0.0, |start| (self.last_end_ms - start).max(0.0)),
            wall_us: self.wall_us.finish(),
            paths: self.paths.into_iter().map(PathBuilder::finish).collect(),
            routing_agreement_ab: self.agreement_ab.finish(),
            output_rel_l2_ab: self.rel_l2_ab.finish(),
            telemetry: self.telemetry.map(|t| TelemetrySummary {
                samples: t.samples,
                power_w: t.power_w.finish(),
                gpu_util_pct: t.gpu_util_pct.finish(),
                sm_clock_mhz: t.sm_clock_mhz.finish(),
                temperature_c: t.temperature_c.finish(),
                mem_used_mib_max: t.mem_used_mib_max,
                throttle_reasons: t.throttle_reasons,
            }),
        }
    }
}

impl PathBuilder {
    fn new(name: PathId, label: String) -> PathBuilder {
        PathBuilder {
            name,
            label,
            other_labels: Vec::new(),
            kernels: Vec::new(),
            total_us: DistBuilder::default(),
            clean_us: DistBuilder::default(),
            imbalance: DistBuilder::default(),
            load_total: Vec::new(),
            contract: ContractSummary::default(),
            agreement_ref: DistBuilder::default(),
            rel_l2_ref: DistBuilder::default(),
            nonfinite: 0,
        }
    }

    fn add(&mut self, p: &PathRecord, step: u64, routed_experts: usize) {
        let label = p.spec.label();
        if label != self.label && !self.other_labels.contains(&label) {
            self.other_labels.push(label);
        }
        for t in &p.timings {
            let k = match self.kernels.iter().position(|k| k.stage == Some(t.stage)) {
                Some(k) => k,
                None => {
                    self.kernels.push(KernelBuilder {
                        stage: Some(t.stage),
                        ..KernelBuilder::default()
                    });
                    self.kernels.len() - 1
                }
            };
            let kb = &mut self.kernels[k];
            kb.us.add(t.us);
            if let Some(bw) = t.bytes.and_then(|b| gb_per_s(b, t.us)) {
                kb.gb_per_s.add(bw);
            }
        }
        self.total_us.add(p.total_us);
        if let Some(c) = p.clean_us {
            self.clean_us.add(c);
        }
        // Shared slots (after the E routed experts) carry every token: not load to balance.
        let routed = &p.load[..routed_experts.min(p.load.len())];
        if self.load_total.len() < routed.len() {
            self.load_total.resize(routed.len(), 0);
        }
        for (acc, &n) in self.load_total.iter_mut().zip(routed) {
            *acc += u64::from(n);
        }
        let step_load: Vec<u64> = routed.iter().map(|&n| u64::from(n)).collect();
        self.imbalance.add(imbalance(&step_load));
        self.nonfinite += p.output.nonfinite;

        let c = &p.contract;
        let cs = &mut self.contract;
        cs.routed_max_dev = cs.routed_max_dev.max(c.routed_max_dev);
        cs.shared_max_dev = cs.shared_max_dev.max(c.shared_max_dev);
        if c.ok {
            cs.ok_steps += 1;
        } else {
            cs.violated_steps += 1;
            let v = Violation {
                step,
                violations: c.violations.clone(),
                message: super::words::verdict(c),
                deviation: c.routed_max_dev.max(c.shared_max_dev),
            };
            if cs.first_violation.is_none() {
                cs.first_violation = Some(v.clone());
            }
            if cs
                .worst_violation
                .as_ref()
                .is_none_or(|w| v.deviation > w.deviation)
            {
                cs.worst_violation = Some(v);
            }
        }
    }

    fn finish(self) -> PathSummary {
        let mut hottest: Vec<(u32, u64)> = self
            .load_total
            .iter()
            .enumerate()
            .map(|(e, &n)| (e as u32, n))
            .collect();
        // Busiest first; ties toward the lower id so the list is deterministic.
        hottest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hottest.truncate(HOTTEST);
        PathSummary {
            name: self.name,
            label: self.label,
            other_labels: self.other_labels,
            kernels: self
                .kernels
                .into_iter()
                .filter_map(|k| {
                    Some(KernelSummary {
                        stage: k.stage?,
                        us: k.us.finish(),
                        gb_per_s: (!k.gb_per_s.is_empty()).then(|| k.gb_per_s.finish()),
                    })
                })
                .collect(),
            total_us: self.total_us.finish(),
            clean_us: (!self.clean_us.is_empty()).then(|| self.clean_us.finish()),
            load_imbalance: self.imbalance.finish(),
            session_imbalance: imbalance(&self.load_total),
            hottest_experts: hottest,
            load_total: self.load_total,
            contract: self.contract,
            routing_agreement_ref: self.agreement_ref.finish(),
            output_rel_l2_ref: self.rel_l2_ref.finish(),
            nonfinite_outputs: self.nonfinite,
        }
    }
}
