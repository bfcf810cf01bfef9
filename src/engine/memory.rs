//! Sizes before allocation: what a layer needs in host and device memory for T tokens per step
//! (weights, per-token workspace, the f64 reference's expert cache), checked against what the
//! machine has before anything is allocated. A request that cannot fit is refused at once with
//! the limit and the largest T that fits, instead of allocating for a minute until an abort.
//!
//! The figures are upper bounds from the buffers the backends hold (see `cpu` and `cuda::layer`),
//! not measurements; they err on the large side by design.

use super::config::MoeConfig;
use super::BackendKind;
use anyhow::{bail, Result};

/// What one side (host or device) needs: a fixed part and a part per token of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// The layer's weights as this side holds them.
    pub weights: u64,
    /// Buffers independent of T (reference cache, small vectors).
    pub fixed: u64,
    /// Workspace per token of a step (all paths, the comparison included).
    pub per_token: u64,
}

impl Footprint {
    /// Bytes needed for `tokens` tokens per step.
    pub fn at(&self, tokens: usize) -> u64 {
        self.weights
            .saturating_add(self.fixed)
            .saturating_add(self.per_token.saturating_mul(tokens as u64))
    }

    /// The most tokens per step that fit in `limit` bytes; 0 when the weights alone do not.
    pub fn max_tokens(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.weights.saturating_add(self.fixed)) / self.per_token.max(1)
    }
}

/// Host and device footprints of one layer on one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub host: Footprint,
    /// None on the CPU backend.
    pub device: Option<Footprint>,
}

/// What the machine has: host memory available now, the device's total memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    pub host: Option<u64>,
    pub device: Option<u64>,
}

/// How the expert weights are stored on the device (bytes per weight; block scales extra).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    Bf16,
    /// FP8 e4m3 with one f32 scale per 128×128 block.
    Fp8,
}

impl WeightDtype {
    fn bytes_per_weight(self) -> f64 {
        match self {
            WeightDtype::Bf16 => 2.0,
            WeightDtype::Fp8 => 1.0 + 4.0 / (128.0 * 128.0),
        }
    }
}

/// The FP8 copies of the experts a run holds beside the bf16 weights (`--experts fp8`): the
/// routed experts' where a path runs them in FP8, the shared experts' likewise. Every run keeps
/// the bf16 weights (the router, the bf16 paths and the f64 reference read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fp8Copies {
    pub routed: bool,
    pub shared: bool,
}

impl Fp8Copies {
    /// The copies `paths` need.
    pub fn of(paths: &[super::paths::PathSpec]) -> Fp8Copies {
        Fp8Copies {
            routed: paths.iter().any(|p| p.experts.is_fp8()),
            shared: paths.iter().any(|p| p.shared_experts.is_fp8()),
        }
    }

    fn any(self) -> bool {
        self.routed || self.shared
    }
}

/// Sizes of the layer, as u64.
struct Dims {
    e: u64,
    h: u64,
    i: u64,
    s: u64,
    is: u64,
    k: u64,
    /// Expert weights (3 matrices each), routed and shared, and the router gate.
    expert_params: u64,
    shared_params: u64,
    gate_params: u64,
}

impl Dims {
    fn of(cfg: &MoeConfig) -> Dims {
        let (e, h, i) = (
            cfg.n_routed_experts as u64,
            cfg.hidden_size as u64,
            cfg.moe_intermediate_size as u64,
        );
        let (s, is) = (
            cfg.n_shared_experts as u64,
            cfg.shared_slot_intermediate() as u64,
        );
        Dims {
            e,
            h,
            i,
            s,
            is,
            k: cfg.num_experts_per_tok as u64,
            expert_params: e.saturating_mul(3 * h * i),
            shared_params: s.saturating_mul(3 * h * is),
            gate_params: e.saturating_mul(h),
        }
    }

    /// Host bytes per token every backend spends: logits kept, slots per path, the comparison
    /// (effective weights, reference routing) — two paths, rounded up.
    fn host_per_token(&self) -> u64 {
        let slots = self.k + self.s;
        4 * self.e + 2 * (8 * slots + 16 * self.k + 24 * self.s + 96) + 12 * self.k + 64
    }

    /// The f64 reference keeps the experts of the sampled tokens (8 at most) as f32.
    fn reference_cache(&self) -> u64 {
        let experts = self.e.min(8 * self.k);
        (experts * 3 * self.h * self.i + self.shared_params) * 4
    }
}

/// The footprint of `cfg` on `backend` with expert weights stored as `dtype` on the device,
/// and the FP8 copies `fp8` beside them.
pub fn estimate(
    cfg: &MoeConfig,
    backend: BackendKind,
    dtype: WeightDtype,
    fp8: Fp8Copies,
) -> MemoryEstimate {
    let mut est = estimate_bf16(cfg, backend, dtype);
    if fp8.any() {
        add_fp8(&mut est, cfg, &Dims::of(cfg), backend, fp8);
    }
    est
}

/// The FP8 copies: weights (dequantized f32 on the host, e4m3 and scales on the device), the
/// FP8 stage's buffers per token, and the f64 references' second set (the host's expert cache,
/// the device reference on FP8 weights).
fn add_fp8(
    est: &mut MemoryEstimate,
    cfg: &MoeConfig,
    d: &Dims,
    backend: BackendKind,
    fp8: Fp8Copies,
) {
    let routed = if fp8.routed { d.expert_params } else { 0 };
    let shared = if fp8.shared { d.shared_params } else { 0 };
    est.host.fixed = est.host.fixed.saturating_add(d.reference_cache());
    match backend {
        BackendKind::Cpu => {
            // The dequantized weights (shared twice, as slots and as the dense MLP) and the
            // quantized tokens.
            let w = (routed + 2 * shared).saturating_mul(4);
            est.host.weights = est.host.weights.saturating_add(w);
            est.host.per_token += 4 * d.h;
        }
        BackendKind::Cuda => {
            let wb = WeightDtype::Fp8.bytes_per_weight();
            if let Some(dev) = est.device.as_mut() {
                dev.weights = dev
                    .weights
                    .saturating_add(((routed + shared) as f64 * wb) as u64);
                // Tokens in e4m3 (+ scales), per slot the up projection f32, the activation in
                // e4m3 (+ scales) and K-split partials; the dense shared MLP alike.
                let slots = d.k + d.s;
                let per_slot = 8 * d.i + 2 * d.i + 4 * d.h.max(2 * d.i);
                let dense = if fp8.shared {
                    d.s * (10 * d.is + 4 * d.h.max(2 * d.is))
                } else {
                    0
                };
                // The device reference on FP8 weights keeps its own f64 buffers (per compared
                // token; counted for every token, on the large side past its budget).
                let reference = super::cuda::reference::bytes_per_token(cfg) as u64;
                dev.per_token += 2 * d.h + slots * per_slot + dense + reference;
            }
        }
    }
}

/// The footprint without FP8 copies.
fn estimate_bf16(cfg: &MoeConfig, backend: BackendKind, dtype: WeightDtype) -> MemoryEstimate {
    let d = Dims::of(cfg);
    let slots = d.k + d.s;
    match backend {
        BackendKind::Cpu => {
            // f32 weights; the shared experts twice (slots and the dense separate MLP).
            let weights =
                (d.expert_params + 2 * d.shared_params + d.gate_params + 3 * d.e + d.h) * 4;
            // Inputs, router intermediates (scores, biased, masked), expert outputs per slot,
            // the output and the separate shared output, alignment permutations.
            let compute = 4 * (3 * d.h + 4 * d.e + slots * d.h) + 16 * slots;
            MemoryEstimate {
                host: Footprint {
                    weights,
                    fixed: d.reference_cache(),
                    per_token: compute + d.host_per_token(),
                },
                device: None,
            }
        }
        BackendKind::Cuda => {
            let wb = dtype.bytes_per_weight();
            let weights = ((d.expert_params + d.shared_params) as f64 * wb) as u64
                + d.gate_params * 2
                + (3 * d.e + d.h) * 4;
            // Hidden states (bf16 and captured f32), logits (f32 and their bf16 copy for
            // `--router-logits bf16`) and the unfused router's intermediates, slot
            // ids/weights/permutation, the expert activations (gate and up f32, SiLU·up bf16),
            // the down projection (f32 partial sums), the output.
            let per_slot = 16 + 8 * d.i + 2 * d.i + 8 * d.h + 4 * d.is.max(d.i);
            let per_token = 6 * d.h + 22 * d.e + slots * per_slot + 8 * d.h;
            MemoryEstimate {
                host: Footprint {
                    weights: 0,
                    fixed: d.reference_cache(),
                    per_token: d.host_per_token() + 8 * slots,
                },
                device: Some(Footprint {
                    weights,
                    fixed: 64 << 20,
                    per_token,
                }),
            }
        }
    }
}

/// The limits of this machine: host memory available now (Linux `MemAvailable`), and the total
/// memory of CUDA device 0 when `cuda` (the backend was resolved to CUDA, so the driver is there).
pub fn limits(cuda: bool) -> MemoryLimits {
    MemoryLimits {
        host: host_available(),
        device: if cuda {
            super::cuda::device_memory()
        } else {
            None
        },
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `tokens` per step when either side would not fit its limit, naming the limit, what
/// the request needs and the largest T that fits.
pub fn check(est: &MemoryEstimate, tokens: usize, limits: &MemoryLimits) -> Result<()> {
    let sides = [
        ("host memory", "available now", Some(est.host), limits.host),
        ("device memory", "the device has", est.device, limits.device),
    ];
    for (what, there, footprint, limit) in sides {
        let (Some(f), Some(limit)) = (footprint, limit) else {
            continue;
        };
        let need = f.at(tokens);
        if need <= limit {
            continue;
        }
        let weights = f.weights.saturating_add(f.fixed);
        if weights > limit {
            bail!(
                "the layer's weights alone need about {} of {what}, more than the {} {there}; \
                 choose a smaller layer (fewer experts, --hidden/--intermediate, --tp)",
                human(weights),
                human(limit)
            );
        }
        bail!(
            "{tokens} tokens per step need about {} of {what} ({} for the weights, {} a token), \
             more than the {} {there}; at most {} tokens per step fit",
            human(need),
            human(f.weights),
            human(f.per_token),
            human(limit),
            f.max_tokens(limit)
        );
    }
    Ok(())
}

/// The most tokens per step both sides allow (None when no limit is known).
pub fn max_tokens(est: &MemoryEstimate, limits: &MemoryLimits) -> Option<u64> {
    let host = limits.host.map(|l| est.host.max_tokens(l));
    let device = est.device.zip(limits.device).map(|(f, l)| f.max_tokens(l));
    match (host, device) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Bytes as KiB/MiB/GiB/TiB with three significant digits.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.3} {}", UNITS[u])
            .replace(".000 ", " ")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3() -> MoeConfig {
        MoeConfig::preset("deepseek-v3").unwrap()
    }

    #[test]
    fn the_full_deepseek_v3_layer_in_bf16_is_about_21_gib() {
        let none = Fp8Copies::default();
        let est = estimate(&v3(), BackendKind::Cuda, WeightDtype::Bf16, none);
        let w = est.device.unwrap().weights as f64 / (1u64 << 30) as f64;
        // 257 × 3 × 7168 × 2048 bf16 weights + the gate.
        assert!((w - 21.1).abs() < 0.2, "{w}");
        let fp8 = estimate(&v3(), BackendKind::Cuda, WeightDtype::Fp8, none);
        assert!(fp8.device.unwrap().weights < est.device.unwrap().weights / 2 + (1 << 28));
    }

    #[test]
    fn fp8_copies_add_half_the_bf16_weights_and_refuse_what_does_not_fit() {
        let (v3, cuda) = (v3(), BackendKind::Cuda);
        let bf16 = estimate(&v3, cuda, WeightDtype::Bf16, Fp8Copies::default());
        let all = Fp8Copies {
            routed: true,
            shared: true,
        };
        let both = estimate(&v3, cuda, WeightDtype::Bf16, all);
        let (a, b) = (bf16.device.unwrap(), both.device.unwrap());
        let extra = (b.weights - a.weights) as f64 / (1u64 << 30) as f64;
        // 257 × 3 × 7168 × 2048 e4m3 weights and their block scales.
        assert!((extra - 10.55).abs() < 0.1, "{extra}");
        assert!(b.per_token > a.per_token && both.host.fixed > bf16.host.fixed);
        // 32 GiB holds the bf16 layer and not both copies: refused before allocating.
        let limits = MemoryLimits {
            host: None,
            device: Some(32 << 30),
        };
        assert!(check(&bf16, 256, &limits).is_ok());
        let err = check(&both, 256, &limits).unwrap_err().to_string();
        assert!(err.contains("device memory"), "{err}");
        // Only the shared expert in FP8: a small addition.
        let shared = Fp8Copies {
            routed: false,
            shared: true,
        };
        let s = estimate(&v3, cuda, WeightDtype::Bf16, shared)
            .device
            .unwrap();
        assert!(s.weights - a.weights < 64 << 20);
        // The CPU holds them dequantized, as f32.
        let cpu = |f| {
            estimate(&v3, BackendKind::Cpu, WeightDtype::Bf16, f)
                .host
                .weights
        };
        assert!(cpu(all) > cpu(Fp8Copies::default()) * 3 / 2);
    }

    #[test]
    fn refuses_with_the_limit_and_the_largest_t_that_fits() {
        let est = estimate(
            &v3(),
            BackendKind::Cuda,
            WeightDtype::Bf16,
            Fp8Copies::default(),
        );
        let limits = MemoryLimits {
            host: Some(64 << 30),
            device: Some(80 << 30),
        };
        let max = max_tokens(&est, &limits).unwrap();
        assert!(check(&est, max as usize, &limits).is_ok());
        let err = check(&est, max as usize + 1, &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("device memory") && err.contains(&format!("at most {max} tokens")),
            "{err}"
        );
        let err = check(
            &est,
            1,
            &MemoryLimits {
                host: None,
                device: Some(8 << 30),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("weights alone"), "{err}");
        assert!(check(&est, 100_000_000, &MemoryLimits::default()).is_ok());
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3 GiB");
        assert_eq!(human(1536), "1.500 KiB");
    }
}
