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

/// One router input: tokens, exact ties, bf16 logits, top-k.
#[derive(Clone, Copy, Debug)]
struct Case {
    t: usize,
    ties: bool,
    bf16: bool,
    k: usize,
}

impl Case {
    fn kind(&self) -> &'static str {
        if self.ties {
            "ties"
        } else if self.bf16 {
            "bf16 logits"
        } else {
            "f32 logits"
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
    let case = |t, ties, bf16, k| Case { t, ties, bf16, k };
    let mut cases: Vec<Case> = ROUTER_TOKENS
        .iter()
        .map(|&t| case(t, false, false, k))
        .collect();
    cases.push(case(1000, true, false, k));
    cases.push(case(1000, false, true, k));
    if cfg.n_shared_experts > 0 {
        cases.push(case(1000, false, false, k + cfg.n_shared_experts)); // shared-dropped
    }
    for c in cases {
        check_case(gpu, cfg, bias.as_deref(), c, rng, table)?;
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
    let mut logits = random_logits(rng, t * e, c.ties)?;
    if c.bf16 {
        logits
            .iter_mut()
            .for_each(|v| *v = crate::engine::weights::round_bf16(*v));
    }
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
    let io = bufs.io(gpu, c.bf16);
    let check = Check {
        table: &mut *table,
        shape: &shape,
        cfg,
        reference: &reference,
        sh: &sh,
    };
    // The fused router as callers get it, and the general kernel (the only one for other
    // shapes) on this shape too.
    let mut check = check;
    for (name, which) in [
        ("router_fused", FusedKernel::Auto),
        ("router_fused general", FusedKernel::General),
    ] {
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
