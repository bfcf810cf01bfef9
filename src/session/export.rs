//! Exports of a session: one JSON document, the Chrome Trace Event Format (Perfetto), the EPLB
//! expert-load matrix, and per-kernel timings as CSV. Each exporter streams: it takes steps one
//! at a time from an iterator (a session file, or a live headless run) and writes as it goes.

pub use super::output::{refuse_same_file, Output};
use super::summary::SummaryBuilder;
use super::{ExportFormat, SessionHeader};
use crate::engine::paths::PathId;
use crate::engine::stats::{gb_per_s, imbalance};
use crate::engine::step::{StepRecord, TelemetrySample};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::io::Write;

/// `format` field of the JSON export.
pub const JSON_EXPORT_FORMAT: &str = "moescope-export";
/// `format` field of the EPLB export.
pub const EPLB_EXPORT_FORMAT: &str = "moescope-eplb";
/// Version of the JSON export document: 2 since its steps carry typed contract violations
/// (session format 2).
pub const JSON_EXPORT_VERSION: u32 = 2;
/// Version of the EPLB export document.
pub const EPLB_EXPORT_VERSION: u32 = 1;

/// Writes `steps` of the session described by `header` to `out` in `format`.
pub fn write(
    format: ExportFormat,
    header: &SessionHeader,
    steps: impl Iterator<Item = Result<StepRecord>>,
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        ExportFormat::Json => json_document(header, steps, out),
        ExportFormat::Chrome => chrome_trace(header, steps, out),
        ExportFormat::Eplb => eplb_matrix(header, steps, out),
        ExportFormat::Csv => kernel_csv(steps, out),
        ExportFormat::EpLoad => super::export_ep::load_csv(steps, out),
        ExportFormat::EpPlacement => super::export_ep::placement_json(header, steps, out),
    }
}

/// Output errors get their own message; step errors (from the reader) already name the line.
fn put(out: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes).context("writing the export")
}

fn to_json(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer(buf, value).context("encoding the export as JSON")
}

/// `{"format", "version", "header", "steps": [...], "summary"}`; the summary is built while the
/// steps stream, so it comes last.
fn json_document(
    header: &SessionHeader,
    steps: impl Iterator<Item = Result<StepRecord>>,
    out: &mut dyn Write,
) -> Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    buf.extend_from_slice(
        format!(
            "{{\"format\":\"{JSON_EXPORT_FORMAT}\",\"version\":{JSON_EXPORT_VERSION},\"header\":"
        )
        .as_bytes(),
    );
    to_json(&mut buf, header)?;
    buf.extend_from_slice(b",\"steps\":[");
    let mut summary = SummaryBuilder::new(header);
    for (i, step) in steps.enumerate() {
        let step = step?;
        buf.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        to_json(&mut buf, &step)?;
        summary.add(&step);
        put(out, &buf)?;
        buf.clear();
    }
    buf.extend_from_slice(b"\n],\"summary\":");
    to_json(&mut buf, &summary.finish())?;
    buf.extend_from_slice(b"}\n");
    put(out, &buf)
}

/// One event of the Chrome Trace Event Format; timestamps and durations in µs.
#[derive(Serialize)]
struct TraceEvent<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cat: Option<&'static str>,
    ph: &'static str,
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    pid: u32,
    tid: u32,
    args: Value,
}

/// Process of the steps and paths, and of the GPU telemetry counters.
const PID_LAYER: u32 = 1;
const PID_TELEMETRY: u32 = 2;
/// Track of whole steps; path i runs on track i + 1.
const TID_STEPS: u32 = 0;

/// Times are laid out in whole nanoseconds, so a slice's end is exactly where the next begins
/// and children end inside their parent in every viewer; a non-finite time (a damaged record)
/// becomes 0 so every event keeps a numeric `ts` and `dur`.
fn to_ns(us: f64) -> i64 {
    if us.is_finite() {
        (us.max(0.0) * 1e3).round() as i64
    } else {
        0
    }
}

/// Nanoseconds as the format's microseconds.
fn us(ns: i64) -> f64 {
    ns as f64 / 1e3
}

/// Event args without nulls: an absent reading (`clean_us` on the CPU) or a NaN comparison
/// (serialized as null) is left out rather than shown as null.
fn args(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// Counter values must be numbers: NaN (written as null) would break the counter track.
fn finite(v: f64) -> Option<Value> {
    v.is_finite().then(|| json!(v))
}

/// Trace events, comma-separated into a buffer that goes out once per step.
struct Events {
    buf: Vec<u8>,
    first: bool,
}

impl Events {
    fn push(&mut self, e: &TraceEvent) -> Result<()> {
        if !self.first {
            self.buf.extend_from_slice(b",\n");
        }
        self.first = false;
        to_json(&mut self.buf, e)
    }

    /// An `M` event naming or ordering a process or track.
    fn meta(&mut self, name: &'static str, pid: u32, tid: u32, args: Value) -> Result<()> {
        self.push(&TraceEvent {
            name,
            cat: None,
            ph: "M",
            ts: 0.0,
            dur: None,
            pid,
            tid,
            args,
        })
    }

    /// An `X` slice on a track of the layer process; times in ns.
    fn slice(
        &mut self,
        name: &str,
        cat: &'static str,
        tid: u32,
        ts: i64,
        dur: i64,
        a: Value,
    ) -> Result<()> {
        self.push(&TraceEvent {
            name,
            cat: Some(cat),
            ph: "X",
            ts: us(ts),
            dur: Some(us(dur)),
            pid: PID_LAYER,
            tid,
            args: args(a),
        })
    }

    /// A `C` sample of one or more series; time in ns.
    fn counter(
        &mut self,
        name: &str,
        cat: &'static str,
        pid: u32,
        ts: i64,
        series: Value,
    ) -> Result<()> {
        self.push(&TraceEvent {
            name,
            cat: Some(cat),
            ph: "C",
            ts: us(ts),
            dur: None,
            pid,
            tid: 0,
            args: series,
        })
    }

    fn flush(&mut self, out: &mut dyn Write) -> Result<()> {
        put(out, &self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// The Chrome Trace Event Format as a JSON object (`traceEvents`), which Perfetto and
/// chrome://tracing open. Layout (docs/session-format.md): one process for the layer with a
/// "steps" track and one track per path — each step's kernels laid back to back as `X` events
/// under a path slice — `C` counters for per-expert load, load imbalance and effective weights,
/// and a second process of `C` counters for the NVML telemetry; `M` events name them all.
fn chrome_trace(
    header: &SessionHeader,
    steps: impl Iterator<Item = Result<StepRecord>>,
    out: &mut dyn Write,
) -> Result<()> {
    let paths: Vec<String> = header
        .paths
        .iter()
        .zip(PathId::ALL)
        .map(|(p, id)| format!("{id}: {}", p.label()))
        .collect();
    let other = json!({
        "moescope_format": header.format,
        "moescope_version": header.tool_version,
        "layer": header.config.name,
        "backend": header.backend,
        "device": header.device,
        "weights": header.weights,
        "started": header.started,
        "paths": paths.join("; "),
    });
    // Kernels take microseconds: "ns" keeps the viewer's overlap arithmetic precise.
    let mut ev = Events {
        buf: b"{\"displayTimeUnit\":\"ns\",\"otherData\":".to_vec(),
        first: true,
    };
    to_json(&mut ev.buf, &other)?;
    ev.buf.extend_from_slice(b",\"traceEvents\":[\n");

    let process = format!(
        "moescope {} on {} ({})",
        header.config.name, header.device, header.backend
    );
    ev.meta("process_name", PID_LAYER, 0, json!({ "name": process }))?;
    ev.meta(
        "process_sort_index",
        PID_LAYER,
        0,
        json!({ "sort_index": 0 }),
    )?;
    ev.meta(
        "thread_name",
        PID_LAYER,
        TID_STEPS,
        json!({ "name": "steps" }),
    )?;
    ev.meta(
        "thread_sort_index",
        PID_LAYER,
        TID_STEPS,
        json!({ "sort_index": 0 }),
    )?;
    for (i, label) in paths.iter().enumerate() {
        let tid = i as u32 + 1;
        ev.meta(
            "thread_name",
            PID_LAYER,
            tid,
            json!({ "name": format!("path {label}") }),
        )?;
        ev.meta(
            "thread_sort_index",
            PID_LAYER,
            tid,
            json!({ "sort_index": tid }),
        )?;
    }
    let telemetry = format!("GPU telemetry ({})", header.device);
    ev.meta(
        "process_name",
        PID_TELEMETRY,
        0,
        json!({ "name": telemetry }),
    )?;
    ev.meta(
        "process_sort_index",
        PID_TELEMETRY,
        0,
        json!({ "sort_index": 1 }),
    )?;
    ev.flush(out)?;

    // Series names of the per-expert load counters, zero-padded so they sort by expert id.
    let experts = header.config.n_routed_experts;
    let digits = experts.saturating_sub(1).max(1).to_string().len();
    let mut load_keys: Vec<String> = (0..experts).map(|e| format!("e{e:0digits$}")).collect();
    // Steps are laid out in order; a step never starts before the previous one ended, so the
    // slices on each track nest properly even where recorded clocks disagree.
    let mut cursor = 0i64;
    for step in steps {
        let r = step?;
        let start = (to_ns(r.t_ms * 1e3) - to_ns(r.wall_us)).max(cursor);
        while load_keys.len() < r.paths.iter().map(|p| p.load.len()).max().unwrap_or(0) {
            load_keys.push(format!("shared{}", load_keys.len() - experts));
        }
        cursor = chrome_step(&mut ev, &r, start, experts, &load_keys)?;
        if let Some(t) = &r.telemetry {
            chrome_telemetry(&mut ev, t, start)?;
        }
        ev.flush(out)?;
    }
    put(out, b"\n]}\n")
}

/// One step's slices and counters from `start` (ns); returns when the step ends.
fn chrome_step(
    ev: &mut Events,
    r: &StepRecord,
    start: i64,
    experts: usize,
    load_keys: &[String],
) -> Result<i64> {
    let wall = to_ns(r.wall_us);
    let mut end = start + wall;
    let step_args = json!({
        "step": r.step,
        "tokens": r.tokens,
        "routing_agreement_ab": r.comparison.routing_agreement_ab,
        "output_rel_l2_ab": r.comparison.output_rel_l2_ab,
    });
    ev.slice(
        &format!("step {}", r.step),
        "step",
        TID_STEPS,
        start,
        wall,
        step_args,
    )?;
    let (mut imbalances, mut routed_sum, mut shared) = (Map::new(), Map::new(), Map::new());
    for (i, p) in r.paths.iter().enumerate() {
        let tid = i as u32 + 1;
        let kernel_sum: i64 = p.timings.iter().map(|t| to_ns(t.us)).sum();
        // The path slice encloses its kernels exactly, so they nest in every viewer.
        let path_dur = to_ns(p.total_us).max(kernel_sum);
        let path_args = json!({
            "step": r.step,
            "total_us": p.total_us,
            "clean_us": p.clean_us,
            "contract_ok": p.contract.ok,
            "contract": super::words::verdict(&p.contract),
        });
        let name = format!("path {} step {}", p.name, r.step);
        ev.slice(&name, "path", tid, start, path_dur, path_args)?;
        let mut ts = start;
        for t in &p.timings {
            let dur = to_ns(t.us);
            let mut a = json!({ "step": r.step, "tokens": r.tokens });
            if let Some(bytes) = t.bytes {
                a["bytes"] = json!(bytes);
                if let Some(bw) = gb_per_s(bytes, t.us) {
                    a["gb_per_s"] = json!(bw);
                }
            }
            ev.slice(t.stage.name(), "kernel", tid, ts, dur, a)?;
            ts += dur;
        }
        end = end.max(start + path_dur);

        let load: Map<String, Value> = load_keys
            .iter()
            .zip(&p.load)
            .map(|(k, &n)| (k.clone(), json!(n)))
            .collect();
        let name = format!("load {}", p.name);
        ev.counter(&name, "load", PID_LAYER, start, Value::Object(load))?;
        let routed: Vec<u64> = p.load.iter().take(experts).map(|&n| n.into()).collect();
        imbalances.insert(p.name.to_string(), json!(imbalance(&routed)));
        if let Some(v) = finite(p.routed_weight_sum.mean) {
            routed_sum.insert(p.name.to_string(), v);
        }
        if let Some(v) = p.shared_weight.and_then(|s| finite(s.mean)) {
            shared.insert(p.name.to_string(), v);
        }
    }
    for (name, series) in [
        ("load imbalance (max/mean)", imbalances),
        ("routed weight sum (mean)", routed_sum),
        ("shared weight (mean)", shared),
    ] {
        if !series.is_empty() {
            ev.counter(name, "contract", PID_LAYER, start, Value::Object(series))?;
        }
    }
    Ok(end)
}

/// One counter per NVML reading the device reported, at `ts` (ns).
fn chrome_telemetry(ev: &mut Events, t: &TelemetrySample, ts: i64) -> Result<()> {
    let throttled = if t.throttle_reasons.is_empty() {
        0.0
    } else {
        1.0
    };
    let series: [(&str, Option<f64>); 14] = [
        ("power W", t.power_w),
        ("power limit W", t.power_limit_w),
        ("GPU util %", t.gpu_util_pct.map(f64::from)),
        ("memory util %", t.mem_util_pct.map(f64::from)),
        ("memory used MiB", t.mem_used_mib.map(|v| v as f64)),
        ("SM clock MHz", t.sm_clock_mhz.map(f64::from)),
        ("memory clock MHz", t.mem_clock_mhz.map(f64::from)),
        ("temperature C", t.temperature_c.map(f64::from)),
        ("PCIe tx KiB/s", t.pcie_tx_kib_s.map(f64::from)),
        ("PCIe rx KiB/s", t.pcie_rx_kib_s.map(f64::from)),
        ("throttled", Some(throttled)),
        ("GPM SM occupancy %", t.gpm_sm_occupancy_pct),
        ("GPM tensor active %", t.gpm_tensor_active_pct),
        ("GPM DRAM bandwidth %", t.gpm_dram_bw_util_pct),
    ];
    for (name, value) in series {
        if let Some(v) = value.and_then(finite) {
            ev.counter(name, "telemetry", PID_TELEMETRY, ts, json!({ "value": v }))?;
        }
    }
    Ok(())
}

/// DeepSeek EPLB's `rebalance_experts` takes `weight` [layers, logical experts]. moescope runs
/// one layer, so row i holds step i's tokens per routed (logical) expert of path A — the
/// reference-routed path; `total` [1 × E] is the sum over steps, the single-layer input.
fn eplb_matrix(
    header: &SessionHeader,
    steps: impl Iterator<Item = Result<StepRecord>>,
    out: &mut dyn Write,
) -> Result<()> {
    let experts = header.config.n_routed_experts;
    let mut buf = Vec::with_capacity(16 * 1024);
    let head = json!({
        "layer": header.config.name,
        "path": PathId::A,
        "path_label": header.paths.first().map(|p| p.label()),
        "rows": "steps",
        "device": header.device,
        "started": header.started,
    });
    buf.extend_from_slice(
        format!(
            "{{\"format\":\"{EPLB_EXPORT_FORMAT}\",\"version\":{EPLB_EXPORT_VERSION},\
             \"num_logical_experts\":{experts},\"source\":"
        )
        .as_bytes(),
    );
    to_json(&mut buf, &head)?;
    buf.extend_from_slice(b",\"weight\":[");
    let mut total = vec![0u64; experts];
    let mut rows = 0u64;
    for step in steps {
        let r = step?;
        let Some(a) = r.paths.first() else {
            bail!("step {} has no paths; expected path A's load", r.step);
        };
        if a.load.len() < experts {
            bail!(
                "step {}: path A's load has {} entries; expected at least {experts} (one per routed expert)",
                r.step,
                a.load.len()
            );
        }
        let row = &a.load[..experts];
        for (t, &n) in total.iter_mut().zip(row) {
            *t += u64::from(n);
        }
        buf.extend_from_slice(if rows == 0 { b"\n" } else { b",\n" });
        to_json(&mut buf, &row)?;
        rows += 1;
        put(out, &buf)?;
        buf.clear();
    }
    buf.extend_from_slice(format!("\n],\"steps\":{rows},\"total\":[").as_bytes());
    to_json(&mut buf, &total)?;
    buf.extend_from_slice(b"]}\n");
    put(out, &buf)
}

/// CSV header of the timing export: one row per step, path and kernel, in launch order.
pub const CSV_HEADER: &str = "step,t_ms,tokens,path,kernel,index,us,bytes,gb_per_s,experts";

fn kernel_csv(steps: impl Iterator<Item = Result<StepRecord>>, out: &mut dyn Write) -> Result<()> {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(4096);
    // The header on its own: a session without steps still exports a CSV with its columns.
    put(out, format!("{CSV_HEADER}\n").as_bytes())?;
    for step in steps {
        let r = step?;
        for p in &r.paths {
            for (i, t) in p.timings.iter().enumerate() {
                let bytes = t.bytes.map_or(String::new(), |b| b.to_string());
                let bw = t
                    .bytes
                    .and_then(|b| gb_per_s(b, t.us))
                    .map_or(String::new(), |g| g.to_string());
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{i},{},{bytes},{bw},{}",
                    r.step,
                    r.t_ms,
                    r.tokens,
                    csv_field(p.name.name()),
                    csv_field(t.stage.name()),
                    t.us,
                    p.spec.experts
                );
            }
        }
        put(out, s.as_bytes())?;
        s.clear();
    }
    Ok(())
}

/// Quotes a field that holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
