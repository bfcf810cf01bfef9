//! What `bench --json` writes and `--compare` reads: every figure of one run, with the card,
//! driver and commit it came from.

use crate::commands::route::write_atomically;
use crate::engine::cuda::gpu::Gpu;
use crate::engine::paths::{ExpertFormat, PathId};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Router logits' element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Logits {
    F32,
    Bf16,
}

impl Logits {
    pub fn bytes(self) -> usize {
        match self {
            Logits::F32 => 4,
            Logits::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Logits::F32 => "f32",
            Logits::Bf16 => "bf16",
        }
    }
}

/// Which router a row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterKernel {
    /// The fused router as callers get it.
    Fused,
    /// The general fused kernel (every shape).
    General,
    /// The lane-contiguous kernel with its f32 screen, at every T (where it covers the shape).
    Screened,
    /// The lane-contiguous kernel without the screen, at every T (where it covers the shape).
    Exact,
    /// The op-by-op router, one kernel per op.
    Unfused,
}

/// One router at one token count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouterRow {
    pub tokens: usize,
    pub logits: Logits,
    pub kernel: RouterKernel,
    /// Device time per call (graph replay).
    pub us: f64,
    /// Logits read + slots written per second; None where the time was not measurable.
    pub gb_s: Option<f64>,
    /// `gb_s` as a fraction of the copy bandwidth of the same run.
    pub of_copy: Option<f64>,
}

/// One path of the whole layer at one token count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PathRow {
    pub tokens: usize,
    pub path: PathId,
    /// The step's launches under one event pair, and with an event pair per stage.
    pub clean_us: Option<f64>,
    pub instrumented_us: f64,
    pub gemm_up_us: f64,
    pub gemm_down_us: f64,
    /// The expert GEMMs' bytes (active weights once, activations) per second, and as a fraction
    /// of the copy bandwidth (the weight-streaming floor).
    pub gemm_gb_s: Option<f64>,
    pub gemm_of_copy: Option<f64>,
    /// The routed experts' format (reports before FP8 were all bf16).
    #[serde(default)]
    pub experts: ExpertFormat,
    /// The expert GEMMs' TFLOP/s as a fraction of the dense rate of their format, same kernel
    /// and run (`BenchReport::bf16_dense_tflops`, `fp8_dense_tflops`; bf16 rows before this
    /// field had none).
    #[serde(default)]
    pub gemm_of_dense: Option<f64>,
}

/// Everything one `bench` run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub tool_version: String,
    /// RFC 3339, when the run started.
    pub date: String,
    pub device: String,
    pub arch: String,
    pub sms: u32,
    /// e.g. "13.0" (the driver's CUDA version); None where it could not be read.
    pub driver: Option<String>,
    /// `git describe --always --dirty` where run from a checkout.
    pub commit: Option<String>,
    pub layer: String,
    /// Device copy bandwidth, bytes read + written per second.
    pub copy_gbs: f64,
    /// One graph-replayed one-word kernel.
    pub launch_floor_us: f64,
    pub routers: Vec<RouterRow>,
    pub paths: Vec<PathRow>,
    /// One dense 8192 × 4096 × 7168 GEMM of the FP8 kernel, TFLOP/s (where FP8 rows ran): on
    /// the tensor cores' sums (reports before `Fp8Sum` had one kind, summed in fp32), and summed
    /// in fp32 (none before).
    #[serde(default)]
    pub fp8_dense_tflops: Option<f64>,
    #[serde(default)]
    pub fp8_fp32_dense_tflops: Option<f64>,
    /// One dense 8192 × 4096 × 7168 GEMM of the bf16 grouped kernel, TFLOP/s (where path rows
    /// ran; reports before it had none).
    #[serde(default)]
    pub bf16_dense_tflops: Option<f64>,
}

impl BenchReport {
    pub fn new(gpu: &Gpu, layer: &str, copy_gbs: f64) -> BenchReport {
        BenchReport {
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            device: gpu.name.clone(),
            arch: gpu.arch.clone(),
            sms: gpu.sms,
            driver: gpu.driver_version(),
            commit: git_commit(),
            layer: layer.to_string(),
            copy_gbs,
            launch_floor_us: f64::NAN,
            routers: Vec::new(),
            paths: Vec::new(),
            fp8_dense_tflops: None,
            fp8_fp32_dense_tflops: None,
            bf16_dense_tflops: None,
        }
    }

    /// An earlier run's JSON.
    pub fn read(path: &Path) -> Result<BenchReport> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read bench results {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a `moescope bench --json` file", path.display()))
    }

    pub fn write(&self, path: &Path, force: bool) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialising the bench results")?;
        write_atomically(path, text.as_bytes(), force)
    }

    /// Each figure's ratio to the same figure of `old` (new / old: below 1 is faster).
    pub fn print_comparison(&self, old: &BenchReport) {
        println!();
        println!(
            "against {} on {} ({}), time new / old (< 1 is faster)",
            old.commit.as_deref().unwrap_or("an earlier run"),
            old.device,
            old.date
        );
        println!(
            "copy bandwidth: {:.3}× (new / old)",
            self.copy_gbs / old.copy_gbs
        );
        for r in &self.routers {
            let before = old
                .routers
                .iter()
                .find(|o| o.tokens == r.tokens && o.logits == r.logits && o.kernel == r.kernel);
            if let Some(o) = before {
                println!(
                    "router {:<8} {:>4} T={:<7} {:>9.2} µs  was {:>9.2}  {:.3}×",
                    format!("{:?}", r.kernel).to_lowercase(),
                    r.logits.name(),
                    r.tokens,
                    r.us,
                    o.us,
                    r.us / o.us
                );
            }
        }
        for p in &self.paths {
            let before = old
                .paths
                .iter()
                .find(|o| o.tokens == p.tokens && o.path == p.path && o.experts == p.experts);
            if let (Some(o), Some(new), Some(was)) =
                (before, p.clean_us, before.and_then(|o| o.clean_us))
            {
                println!(
                    "path {:<6} T={:<7} clean {:>9.1} µs  was {:>9.1}  {:.3}×  (gemm up {:.3}×, down {:.3}×)",
                    format!("{}·{}", p.path.name(), p.experts),
                    p.tokens,
                    new,
                    was,
                    new / was,
                    p.gemm_up_us / o.gemm_up_us,
                    p.gemm_down_us / o.gemm_down_us
                );
            }
        }
    }
}

/// The checkout's commit (with `-dirty` where the tree has changes), where bench runs from one
/// and git is there.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_what_was_written() {
        let report = BenchReport {
            tool_version: "0".into(),
            date: "2026-12-03T16:00:00Z".into(),
            device: "card".into(),
            arch: "sm_90".into(),
            sms: 132,
            driver: Some("13.0".into()),
            commit: None,
            layer: "deepseek-v3".into(),
            copy_gbs: 4000.0,
            launch_floor_us: 0.8,
            routers: vec![RouterRow {
                tokens: 64,
                logits: Logits::Bf16,
                kernel: RouterKernel::General,
                us: 4.0,
                gb_s: Some(10.0),
                of_copy: Some(0.0025),
            }],
            paths: vec![PathRow {
                tokens: 1,
                path: PathId::B,
                clean_us: Some(100.0),
                instrumented_us: 103.0,
                gemm_up_us: 20.0,
                gemm_down_us: 10.0,
                gemm_gb_s: None,
                gemm_of_copy: None,
                experts: ExpertFormat::Fp8,
                gemm_of_dense: Some(0.5),
            }],
            fp8_dense_tflops: Some(900.0),
            fp8_fp32_dense_tflops: Some(450.0),
            bf16_dense_tflops: Some(600.0),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.json");
        report.write(&path, false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"logits\": \"bf16\"") && text.contains("\"kernel\": \"general\""));
        let back = BenchReport::read(&path).unwrap();
        assert_eq!(back.routers[0].kernel, RouterKernel::General);
        assert_eq!(back.paths[0].path, PathId::B);
        assert_eq!(back.paths[0].experts, ExpertFormat::Fp8);
        // A report written before FP8 rows reads as bf16.
        let old = text
            .replace("\"experts\": \"fp8\",", "")
            .replace("\"fp8_dense_tflops\": 900.0", "\"_\": 0");
        let old: BenchReport = serde_json::from_str(&old).unwrap();
        assert_eq!(old.paths[0].experts, ExpertFormat::Bf16);
        // An existing file is refused without force; a file that is not a report names itself.
        assert!(report.write(&path, false).is_err());
        std::fs::write(&path, "{}").unwrap();
        let err = BenchReport::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("is not a `moescope bench --json` file"),
            "{err}"
        );
    }
}
