//! The routers: fused (the kernel callers get), the general fused kernel and the unfused
//! op-by-op router, at each token count with f32 and bf16 logits, by graph replay over rotated
//! inputs.

use super::report::{Logits, RouterKernel, RouterRow};
use super::{graph_us, say, Progress, Replay};
use crate::engine::config::MoeConfig;
use crate::engine::cuda::gpu::{Gpu, Timer};
use crate::engine::cuda::kernels::DevPtr;
use crate::engine::cuda::router::{self, FusedKernel, RouterIo, RouterShape, UnfusedBufs};
use crate::engine::stats::gb_per_s;
use anyhow::Result;
use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};

/// Inputs rotated through: together more than the L2 of an H100 or H200 (50–60 MB) where the
/// batch allows, at most this many sets.
const ROTATE_BYTES: usize = 256 << 20;
const MAX_SETS: usize = 64;

/// Logits sets of one token count, in one dtype.
enum Sets {
    F32(Vec<CudaSlice<f32>>),
    Bf16(Vec<CudaSlice<u16>>),
}

impl Sets {
    fn new(gpu: &Gpu, rng: &mut impl Rng, n: usize, logits: Logits, sets: usize) -> Result<Sets> {
        let mut out = match logits {
            Logits::F32 => Sets::F32(Vec::with_capacity(sets)),
            Logits::Bf16 => Sets::Bf16(Vec::with_capacity(sets)),
        };
        for _ in 0..sets {
            let host: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            match &mut out {
                Sets::F32(v) => v.push(gpu.upload(&host, "bench logits")?),
                Sets::Bf16(v) => {
                    let bits: Vec<u16> = host
                        .iter()
                        .map(|&x| half::bf16::from_f32(x).to_bits())
                        .collect();
                    v.push(gpu.upload(&bits, "bench logits")?);
                }
            }
        }
        Ok(out)
    }

    fn ptr(&self, gpu: &Gpu, i: usize) -> DevPtr<std::ffi::c_void> {
        match self {
            Sets::F32(v) => gpu.ptr(&v[i % v.len()]).cast(),
            Sets::Bf16(v) => gpu.ptr(&v[i % v.len()]).cast(),
        }
    }
}

/// Fused vs general vs unfused router over token counts, f32 and bf16 logits.
pub fn bench_routers(
    gpu: &Gpu,
    cfg: &MoeConfig,
    tokens: &[usize],
    copy_gbs: f64,
    progress: &Progress,
) -> Result<Vec<RouterRow>> {
    let (k, s) = (cfg.num_experts_per_tok, cfg.n_shared_experts);
    // Path B's router: fused shared slots, rsf on the output.
    let sh = RouterShape::new(cfg, k, s, 1.0, 1.0 / cfg.routed_scaling_factor)?;
    say!(progress, "");
    say!(
        progress,
        "router, {} shape, top-{k} + {s} shared slots; fused = the kernel callers get \
         (lane-contiguous where it covers the shape), general = the kernel for every shape; \
         graph replay over rotated inputs; GB/s of logits read + slots written",
        cfg.name
    );
    say!(
        progress,
        "screened / exact = the lane-contiguous kernel with / without its f32 screen at every T \
         (fused takes one of them by T where they cover the shape)"
    );
    say!(
        progress,
        "{:>7}  {:>6}  {:>10}  {:>10}  {:>11}  {:>8}  {:>10}  {:>8}  {:>11}  {:>9}",
        "tokens",
        "logits",
        "fused µs",
        "general µs",
        "unfused µs",
        "speedup",
        "fused GB/s",
        "of copy",
        "screened µs",
        "exact µs"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut rows = Vec::new();
    for &t in tokens.iter().filter(|&&t| t > 0) {
        for logits in [Logits::F32, Logits::Bf16] {
            progress.measuring(format!("routers at T={t}, {} logits", logits.name()));
            let row = bench_tokens(gpu, cfg, &sh, t, logits, copy_gbs, &mut rng)?;
            progress.measured();
            print_row(progress, t, logits, &row);
            rows.extend(row);
        }
    }
    Ok(rows)
}

/// The three routers at `t` tokens.
fn bench_tokens(
    gpu: &Gpu,
    cfg: &MoeConfig,
    sh: &RouterShape,
    t: usize,
    logits: Logits,
    copy_gbs: f64,
    rng: &mut impl Rng,
) -> Result<Vec<RouterRow>> {
    let (e, spt) = (cfg.n_routed_experts, sh.spt());
    let logits_bytes = t * e * logits.bytes();
    let sets = (ROTATE_BYTES / logits_bytes).clamp(2, MAX_SETS);
    let inputs = Sets::new(gpu, rng, t * e, logits, sets)?;
    let bias: Vec<f32> = (0..e).map(|_| rng.random_range(-0.05f32..0.05)).collect();
    let d_bias = gpu.upload(&bias, "bias")?;
    let ids = gpu.alloc::<u32>(t * spt, "ids")?;
    let weights = gpu.alloc::<f32>(t * spt, "weights")?;
    let bufs = UnfusedBufs::new(gpu, t, e, cfg.n_group, sh.k)?;
    let io = |i: usize| RouterIo {
        logits: inputs.ptr(gpu, i),
        logits_bf16: logits == Logits::Bf16,
        bias: if cfg.has_bias {
            gpu.ptr(&d_bias)
        } else {
            DevPtr::NULL
        },
        gate: DevPtr::NULL,
        ids: gpu.ptr(&ids),
        weights: gpu.ptr(&weights),
        probs: DevPtr::NULL,
    };
    // Enough calls per graph to cycle the sets; fewer, longer replays at large T.
    let replay = Replay {
        calls: sets.max(if t <= 2048 { 50 } else { 10 }),
        replays: if t <= 2048 { 20 } else { 4 },
    };
    let bytes = (logits_bytes + t * spt * 8) as u64;
    let row = |kernel, us: f64| {
        let gb_s = gb_per_s(bytes, us);
        RouterRow {
            tokens: t,
            logits,
            kernel,
            us,
            gb_s,
            of_copy: gb_s.map(|g| g / copy_gbs),
        }
    };
    let fused = |i| router::fused_with(gpu, sh, &io(i), t, FusedKernel::Auto);
    let general = |i| router::fused_with(gpu, sh, &io(i), t, FusedKernel::General);
    let unfused = |i| router::unfused(gpu, sh, &io(i), t, &bufs, &mut Timer::new(false));
    let mut rows = vec![
        row(RouterKernel::Fused, graph_us(gpu, replay, &fused)?),
        row(RouterKernel::General, graph_us(gpu, replay, &general)?),
        row(RouterKernel::Unfused, graph_us(gpu, replay, &unfused)?),
    ];
    // Both forms of the lanes kernel at every T, where it covers the shape: what the screen buys.
    let general_id = router::fused_kernel(sh, &io(0), t, FusedKernel::General);
    for (kernel, screen) in [(RouterKernel::Screened, true), (RouterKernel::Exact, false)] {
        let which = FusedKernel::Lanes { screen };
        if router::fused_kernel(sh, &io(0), t, which) != general_id {
            let call = |i| router::fused_with(gpu, sh, &io(i), t, which);
            rows.push(row(kernel, graph_us(gpu, replay, &call)?));
        }
    }
    Ok(rows)
}

fn print_row(progress: &Progress, t: usize, logits: Logits, rows: &[RouterRow]) {
    let us = |k: RouterKernel| {
        rows.iter()
            .find(|r| r.kernel == k)
            .map_or(f64::NAN, |r| r.us)
    };
    let fused = rows.iter().find(|r| r.kernel == RouterKernel::Fused);
    let gbs = fused.and_then(|r| r.gb_s).unwrap_or(f64::NAN);
    let of_copy = fused.and_then(|r| r.of_copy).unwrap_or(f64::NAN);
    let (f, g, u) = (
        us(RouterKernel::Fused),
        us(RouterKernel::General),
        us(RouterKernel::Unfused),
    );
    let (sc, ex) = (us(RouterKernel::Screened), us(RouterKernel::Exact));
    say!(
        progress,
        "{t:>7}  {:>6}  {f:>10.2}  {g:>10.2}  {u:>11.2}  {:>7.1}x  {gbs:>10.0}  {:>7.0}%  {sc:>11.2}  {ex:>9.2}",
        logits.name(),
        u / f,
        100.0 * of_copy
    );
}
