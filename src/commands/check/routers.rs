//! The router kernels against the reference router (routing::route) on the same logits: the
//! fused router as callers get it, the general fused kernel on every shape, and the unfused
//! router; random inputs, inputs with exact ties, bf16 logits, and the shared-dropped top-k.

use super::{max_rel, Table, WEIGHT_REL};
use crate::engine::config::MoeConfig;
use crate::engine::cuda::gpu::{Gpu, Timer};
use crate::engine::cuda::kernels::DevPtr;
use crate::engine::cuda::router::{self, FusedKernel, RouterIo, RouterShape, UnfusedBufs};
use crate::engine::routing::{self, Routing};
use anyhow::{anyhow, Result};
use cudarc::driver::CudaSlice;
use rand::Rng;

/// Router token counts.
const ROUTER_TOKENS: &[usize] = &[1, 7, 64, 1000, 40000];

/// What a case's logits look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logits {
    /// N(0, 2²) in f32.
    Random,
    /// Rounded to quarters, so many values repeat exactly.
    Ties,
    /// Quarters nudged by up to 2 ulp and one bias for all experts: scores a rounding apart,
    /// which the lanes kernel's f32 screen must hand to its exact path.
    NearTies,
    /// Rounded to bf16 and read as bf16.
    Bf16,
}

/// Random logits of one kind.
fn random_logits(rng: &mut impl Rng, n: usize, kind: Logits) -> Result<Vec<f32>> {
    let normal =
        rand_distr::Normal::new(0.0f32, 2.0).map_err(|e| anyhow!("normal distribution: {e}"))?;
    Ok((0..n)
        .map(|_| {
            let v: f32 = rng.sample(normal);
            match kind {
                Logits::Random => v,
                Logits::Ties => (v * 4.0).round() / 4.0,
                Logits::NearTies => {
                    let q = (v * 4.0).round() / 4.0;
                    let nudge: i32 = rng.random_range(-2..=2);
                    if q == 0.0 {
                        q // a nudge across zero would be a NaN's bits
                    } else {
                        f32::from_bits(q.to_bits().wrapping_add_signed(nudge))
                    }
                }
                Logits::Bf16 => crate::engine::weights::round_bf16(v),
            }
        })
        .collect())
}

/// One router input: tokens, kind of logits, top-k.
#[derive(Clone, Copy, Debug)]
struct Case {
    t: usize,
    logits: Logits,
    k: usize,
}

impl Case {
    fn kind(&self) -> &'static str {
        match self.logits {
            Logits::Random => "f32 logits",
            Logits::Ties => "ties",
            Logits::NearTies => "near ties",
            Logits::Bf16 => "bf16 logits",
        }
    }
}

/// Fused and unfused GPU routers against routing::route on the same logits.
pub(super) fn check_routers(
    gpu: &Gpu,
    cfg: &MoeConfig,
    rng: &mut impl Rng,
    table: &mut Table,
) -> Result<()> {
    let e = cfg.n_routed_experts;
    let bias: Option<Vec<f32>> = cfg
        .has_bias
        .then(|| (0..e).map(|_| rng.random_range(-0.05f32..0.05)).collect());
    let k = cfg.num_experts_per_tok;
    let case = |t, logits, k| Case { t, logits, k };
    let mut cases: Vec<Case> = ROUTER_TOKENS
        .iter()
        .map(|&t| case(t, Logits::Random, k))
        .collect();
    cases.push(case(1000, Logits::Ties, k));
    cases.push(case(1000, Logits::NearTies, k));
    cases.push(case(1000, Logits::Bf16, k));
    if cfg.n_shared_experts > 0 {
        cases.push(case(1000, Logits::Random, k + cfg.n_shared_experts)); // shared-dropped
    }
    // Near ties keep their closeness only under one bias for every expert.
    let flat_bias = bias.as_ref().map(|b| vec![b[0]; b.len()]);
    for c in cases {
        let bias = if c.logits == Logits::NearTies {
            flat_bias.as_deref()
        } else {
            bias.as_deref()
        };
        check_case(gpu, cfg, bias, c, rng, table)?;
    }
    Ok(())
}

/// The device buffers of one case.
struct CaseBufs {
    logits_f32: CudaSlice<f32>,
    logits_bf16: CudaSlice<u16>,
    bias: Option<CudaSlice<f32>>,
    ids: CudaSlice<u32>,
    weights: CudaSlice<f32>,
    probs: CudaSlice<f64>,
}

impl CaseBufs {
    fn new(
        gpu: &Gpu,
        logits: &[f32],
        bias: Option<&[f32]>,
        t: usize,
        sh: &RouterShape,
    ) -> Result<CaseBufs> {
        let bits: Vec<u16> = logits
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        Ok(CaseBufs {
            logits_f32: gpu.upload(logits, "logits")?,
            logits_bf16: gpu.upload(&bits, "logits")?,
            bias: bias.map(|b| gpu.upload(b, "bias")).transpose()?,
            ids: gpu.alloc::<u32>(t * sh.spt(), "ids")?,
            weights: gpu.alloc::<f32>(t * sh.spt(), "weights")?,
            probs: gpu.alloc::<f64>(t * sh.k, "probs")?,
        })
    }

    fn io(&self, gpu: &Gpu, bf16: bool) -> RouterIo {
        RouterIo {
            logits: if bf16 {
                gpu.ptr(&self.logits_bf16).cast()
            } else {
                gpu.ptr(&self.logits_f32).cast()
            },
            logits_bf16: bf16,
            bias: gpu.ptr_opt(self.bias.as_ref()),
            gate: DevPtr::NULL,
            ids: gpu.ptr(&self.ids),
            weights: gpu.ptr(&self.weights),
            probs: gpu.ptr(&self.probs),
        }
    }

    /// Invalid ids and NaN weights, so unwritten slots show.
    fn poison(&self, gpu: &Gpu, n: usize) -> Result<()> {
        gpu.fill(gpu.ptr(&self.ids), n, u32::MAX)?;
        gpu.fill(gpu.ptr(&self.weights), n, f32::NAN.to_bits())
    }
}

fn check_case(
    gpu: &Gpu,
    cfg: &MoeConfig,
    bias: Option<&[f32]>,
    c: Case,
    rng: &mut impl Rng,
    table: &mut Table,
) -> Result<()> {
    let (t, k, e) = (c.t, c.k, cfg.n_routed_experts);
    let logits = random_logits(rng, t * e, c.logits)?;
    let reference = routing::route(cfg, &logits, bias, k);
    let shape = format!("{} T={t} E={e} k={k} {}", cfg.name, c.kind());
    // Shared slots appended with the on-output contract's weight 1/rsf.
    let sh = RouterShape::new(
        cfg,
        k,
        cfg.n_shared_experts,
        1.0,
        1.0 / cfg.routed_scaling_factor,
    )?;
    let spt = sh.spt();
    let bufs = CaseBufs::new(gpu, &logits, bias, t, &sh)?;
    let io = bufs.io(gpu, c.logits == Logits::Bf16);
    let check = Check {
        table: &mut *table,
        shape: &shape,
        cfg,
        reference: &reference,
        sh: &sh,
    };
    // The fused router as callers get it, the general kernel (the only one for other shapes) on
    // this shape too, and where the lanes kernel covers the shape, it with and without its f32
    // screen whatever Auto picks at this T.
    let mut check = check;
    let mut kernels = vec![
        ("router_fused", FusedKernel::Auto),
        ("router_fused general", FusedKernel::General),
    ];
    let general = router::fused_kernel(&sh, &io, t, FusedKernel::General);
    for (name, screen) in [
        ("router_fused screened", true),
        ("router_fused exact", false),
    ] {
        let which = FusedKernel::Lanes { screen };
        if router::fused_kernel(&sh, &io, t, which) != general {
            kernels.push((name, which));
        }
    }
    for (name, which) in kernels {
        bufs.poison(gpu, t * spt)?;
        router::fused_with(gpu, &sh, &io, t, which)?;
        let ids = gpu.download(&bufs.ids, t * spt, "ids")?;
        let w = gpu.download(&bufs.weights, t * spt, "weights")?;
        let got = Routing {
            k,
            ids: strip(&ids, t, spt, k),
            probs: gpu.download(&bufs.probs, t * k, "probs")?,
        };
        check.report(name, &got, &ids, &w);
    }
    bufs.poison(gpu, t * spt)?;
    let unfused_bufs = UnfusedBufs::new(gpu, t, e, cfg.n_group, k)?;
    let io = RouterIo {
        probs: DevPtr::NULL,
        ..io
    };
    router::unfused(gpu, &sh, &io, t, &unfused_bufs, &mut Timer::new(false))?;
    let ids = gpu.download(&bufs.ids, t * spt, "ids")?;
    let w = gpu.download(&bufs.weights, t * spt, "weights")?;
    let got = Routing {
        k,
        ids: strip(&ids, t, spt, k),
        probs: strip(&w, t, spt, k).iter().map(|&w| w as f64).collect(),
    };
    check.report("router_unfused", &got, &ids, &w);
    Ok(())
}

/// The first `k` of every `spt` values.
fn strip<T: Copy>(v: &[T], t: usize, spt: usize, k: usize) -> Vec<T> {
    (0..t)
        .flat_map(|tok| v[tok * spt..tok * spt + k].iter().copied())
        .collect()
}

/// What a router's outputs are checked against.
struct Check<'a> {
    table: &'a mut Table,
    shape: &'a str,
    cfg: &'a MoeConfig,
    reference: &'a Routing,
    sh: &'a RouterShape,
}

impl Check<'_> {
    /// Ids equal to the reference's; routed weights its probabilities (rsf 1 here), the shared
    /// slots' ids E + j and their weight.
    fn report(&mut self, kernel: &str, got: &Routing, slot_ids: &[u32], slot_w: &[f32]) {
        let (reference, sh, shape) = (self.reference, self.sh, self.shape);
        let t = reference.tokens();
        let mismatched = (0..t)
            .filter(|&tok| {
                let r = tok * reference.k..(tok + 1) * reference.k;
                reference.ids[r.clone()] != got.ids[r]
            })
            .count();
        let note = if mismatched == 0 {
            String::new()
        } else {
            format!("{mismatched} of {t} tokens differ")
        };
        let ok = mismatched == 0;
        self.table
            .add(kernel, format!("{shape} ids"), mismatched as f64, ok, note);
        let spt = sh.spt();
        let routed_err = max_rel(
            strip(slot_w, t, spt, sh.k).iter().map(|&w| w as f64),
            reference.probs.iter().copied(),
        );
        let e = self.cfg.n_routed_experts as u32;
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
        let note = if shared_ok {
            ""
        } else {
            "shared slot ids wrong"
        };
        let ok = err <= WEIGHT_REL && shared_ok;
        self.table
            .add(kernel, format!("{shape} weights"), err, ok, note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_keeps_the_routed_slots() {
        assert_eq!(strip(&[1, 2, 9, 3, 4, 9], 2, 3, 2), vec![1, 2, 3, 4]);
    }
}
