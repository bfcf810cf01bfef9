//! One path's launch sequence, stage by stage, as the CPU backend runs it (src/engine/cpu is the
//! reference): gate GEMM → router → moe_align → expert MLP → (separate shared MLP) → combine.
//! Each stage is one method of [`PathLaunch`] that times itself under its `Stage`; a new stage is
//! a new method called from [`PathLaunch::run`] and a new `Stage` variant.

use super::super::gpu::{Gpu, Timer};
use super::super::kernels::{
    AlignCountArgs, AlignFillArgs, AlignScanArgs, CombineArgs, DevPtr, GemmRows, SiluMulArgs, Tile,
    ToBf16Args,
};
use super::super::router::{self, RouterIo, RouterShape};
use super::super::user_kernel::{self, UserKernel};
use super::device::DeviceLayer;
use super::fp8::{self, Fp8Stage};
use super::gemm::{self, Groups, Weights};
use super::workspace::Workspace;
use crate::engine::config::MoeConfig;
use crate::engine::paths::{ExpertFormat, LogitsDtype, PathSpec, RouterImpl, SharedMode};
use crate::engine::step::Stage;
use anyhow::{bail, ensure, Result};

/// What one path does, derived from its spec and the contract.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub router: RouterImpl,
    pub shape: RouterShape,
    pub out_scale: f64,
    /// The shared experts run as a separate dense MLP (not as slots).
    pub separate: bool,
    pub separate_weight: f64,
    /// What the router reads: the gate GEMM's f32 output, or it rounded to bf16.
    pub logits: LogitsDtype,
    /// The routed experts' and the shared experts' formats.
    pub experts: ExpertFormat,
    pub shared_experts: ExpertFormat,
}

impl Plan {
    pub fn new(cfg: &MoeConfig, spec: &PathSpec) -> Result<Plan> {
        let has_shared = cfg.n_shared_experts > 0;
        let contract = spec.contract(cfg.routed_scaling_factor, has_shared);
        let k = spec.routed_per_token(cfg.num_experts_per_tok, cfg.n_shared_experts);
        let s = spec.shared_slots_per_token(cfg.n_shared_experts);
        if s > 0 {
            ensure!(
                cfg.shared_fusable(),
                "the shared experts of {} cannot be fused as slots: shared intermediate {} is not {} × the routed experts' {}",
                cfg.name,
                cfg.shared_intermediate_size,
                cfg.n_shared_experts,
                cfg.moe_intermediate_size
            );
        }
        ensure!(
            spec.shared != SharedMode::FusedSlot || s == 0 || spec.experts == spec.shared_experts,
            "a fused shared slot runs in its routed experts' format ({}), not {}",
            spec.experts,
            spec.shared_experts
        );
        let shape = RouterShape::new(
            cfg,
            k,
            s,
            contract.routed_scale,
            contract.shared_slot_weight,
        )?;
        Ok(Plan {
            router: spec.router,
            shape,
            out_scale: contract.out_scale,
            separate: spec.shared == SharedMode::Separate
                && contract.separate_shared_weight != 0.0
                && has_shared,
            separate_weight: contract.separate_shared_weight,
            logits: spec.logits,
            experts: spec.experts,
            shared_experts: spec.shared_experts,
        })
    }
}

/// One path's launches for `t` tokens over the layer's weights and the step's workspace.
pub struct PathLaunch<'a> {
    pub gpu: &'a Gpu,
    pub cfg: &'a MoeConfig,
    pub layer: &'a DeviceLayer,
    pub ws: &'a Workspace,
    pub plan: &'a Plan,
    pub t: usize,
    /// The slots were uploaded from a routing trace: no gate GEMM, no router.
    pub routed: bool,
    /// Path C's kernel (None on the other paths).
    pub user: Option<&'a UserKernel>,
    /// The step's shared gate on the host, for a user kernel's shared slots.
    pub gates: &'a [f32],
    /// The FP8 weights and buffers, where some path runs FP8 experts.
    pub fp8: Option<Fp8Stage<'a>>,
}

impl PathLaunch<'_> {
    /// The whole path, every stage timed by `timer` (a clean run passes an off timer).
    pub fn run(&self, timer: &mut Timer) -> Result<()> {
        if !self.routed {
            self.gate_gemm(timer)?;
            self.router(timer)?;
        }
        self.align(timer)?;
        self.experts(timer)?;
        if self.plan.separate {
            self.shared_mlp(timer)?;
        }
        self.combine(timer)
    }

    /// Alignment and the grouped expert MLP only, over slots already in `ws.router.ids` (an EP
    /// rank's share of the GEMM, timed on its own).
    pub fn experts_only(&self, timer: &mut Timer) -> Result<()> {
        self.align(timer)?;
        self.experts(timer)
    }

    /// The FP8 weights and buffers (made before a path that runs FP8 experts).
    fn fp8_stage(&self) -> Result<Fp8Stage<'_>> {
        self.fp8.ok_or_else(|| {
            anyhow::anyhow!("a path runs FP8 experts, but no FP8 weights are on the device")
        })
    }

    /// Assignments of the step: tokens × slots per token.
    fn assignments(&self) -> usize {
        self.t * self.plan.shape.spt()
    }

    /// The tile height of the grouped expert GEMMs (and of moe_align's tile offsets).
    fn expert_tile(&self) -> Tile {
        Tile::for_rows(self.assignments(), self.cfg.total_slots())
    }

    /// logits [T × E] = x · gate^T + logit offset; rounded to bf16 as well where the path's
    /// router reads bf16 (a bf16 router GEMM's output: the same f32 sum, rounded once).
    fn gate_gemm(&self, timer: &mut Timer) -> Result<()> {
        let (gpu, ws, l, t) = (self.gpu, self.ws, self.layer, self.t);
        let (e, h) = (self.cfg.n_routed_experts, self.cfg.hidden_size);
        let groups = Groups {
            offsets: gpu.ptr(&ws.gate.offsets),
            tiles: gpu.ptr(&ws.gate.tiles),
            count: 1,
            rows: t,
            tile: ws.gate.tile,
        };
        let g = gemm::args(
            gpu.ptr(&ws.inputs.x),
            GemmRows::Direct,
            DevPtr::NULL,
            1,
            Weights::one(gpu.ptr(&l.gate_w), 1, 0),
            groups,
            gpu.ptr(&ws.gate.logits),
            gpu.ptr(&l.offset),
            e,
            h,
        );
        timer.start(gpu)?;
        gemm::run_split(gpu, g, ws.gate.splits, t, gpu.ptr(&ws.gate.parts))?;
        let mut bytes = (2 * t * h + 2 * e * h + 4 * t * e) as u64;
        if self.plan.logits == LogitsDtype::Bf16 {
            gpu.launch(ToBf16Args {
                input: gpu.ptr(&ws.gate.logits),
                out: gpu.ptr(&ws.gate.logits_bf16),
                n: (t * e) as u64,
            })?;
            bytes += (6 * t * e) as u64;
        }
        timer.stop(gpu, Stage::GateGemm, Some(bytes))
    }

    /// The buffers the router reads and writes.
    pub fn router_io(&self) -> RouterIo {
        let (gpu, ws, l) = (self.gpu, self.ws, self.layer);
        let bf16 = self.plan.logits == LogitsDtype::Bf16;
        RouterIo {
            logits: if bf16 {
                gpu.ptr(&ws.gate.logits_bf16).cast()
            } else {
                gpu.ptr(&ws.gate.logits).cast()
            },
            logits_bf16: bf16,
            bias: gpu.ptr_opt(l.bias.as_ref()),
            gate: if self.cfg.n_shared_experts > 0 {
                gpu.ptr(&ws.inputs.gates)
            } else {
                DevPtr::NULL
            },
            ids: gpu.ptr(&ws.router.ids),
            weights: gpu.ptr(&ws.router.weights),
            probs: DevPtr::NULL,
        }
    }

    /// Slot ids and weights [T × spt], by the path's router.
    fn router(&self, timer: &mut Timer) -> Result<()> {
        let (gpu, t, sh) = (self.gpu, self.t, &self.plan.shape);
        let io = self.router_io();
        match self.plan.router {
            RouterImpl::Fused => {
                timer.start(gpu)?;
                router::fused(gpu, sh, &io, t)?;
                let logit_bytes = if io.logits_bf16 { 2 } else { 4 };
                let bytes = (logit_bytes * t * sh.e + 8 * self.assignments()) as u64;
                timer.stop(gpu, Stage::RouterFused, Some(bytes))
            }
            RouterImpl::Unfused => router::unfused(gpu, sh, &io, t, &self.ws.router.unfused, timer),
            RouterImpl::User => self.user_router(&io, timer),
        }
    }

    /// Path C: the user's kernel writes the slots moescope's align, GEMM and combine then take.
    fn user_router(&self, io: &RouterIo, timer: &mut Timer) -> Result<()> {
        let (gpu, t) = (self.gpu, self.t);
        let user = self
            .user
            .ok_or_else(|| anyhow::anyhow!("path C has no user kernel"))?;
        let args = user_kernel::RouterArgs {
            logits: io.logits.addr(),
            bias: io.bias.addr(),
            shared_gate: io.gate.addr(),
            ids: io.ids.addr(),
            weights: io.weights.addr(),
            ..user_kernel::args_for(self.cfg, t, self.plan.logits)
        };
        timer.start(gpu)?;
        user.launch(gpu, &args)?;
        let logit_bytes = if io.logits_bf16 { 2 } else { 4 };
        let bytes = (logit_bytes * t * self.plan.shape.e + 8 * self.assignments()) as u64;
        timer.stop(gpu, Stage::RouterUser, Some(bytes))?;
        let gates = (self.cfg.shared_expert_gate && !self.gates.is_empty()).then_some(self.gates);
        user.finish_in_layer(
            gpu,
            self.cfg,
            t,
            &self.ws.router.ids,
            &self.ws.router.weights,
            gates,
        )
    }

    /// moe_align: counts per slot, offsets, and the permutation grouping assignments by slot.
    fn align(&self, timer: &mut Timer) -> Result<()> {
        let (gpu, b) = (self.gpu, &self.ws.align);
        let (a, slots) = (self.assignments(), self.cfg.total_slots());
        let ids = gpu.ptr(&self.ws.router.ids);
        timer.start(gpu)?;
        gpu.fill(gpu.ptr(&b.counts), slots, 0)?;
        gpu.launch(AlignCountArgs {
            ids,
            n: a as u64,
            counts: gpu.ptr(&b.counts),
        })?;
        gpu.launch(AlignScanArgs {
            counts: gpu.ptr(&b.counts),
            slots: slots as i32,
            bm: self.expert_tile().rows() as i32,
            offsets: gpu.ptr(&b.offsets),
            tiles: gpu.ptr(&b.tiles),
            cursor: gpu.ptr(&b.cursor),
        })?;
        gpu.launch(AlignFillArgs {
            ids,
            n: a as u64,
            cursor: gpu.ptr(&b.cursor),
            order: gpu.ptr(&b.order),
            position: gpu.ptr(&b.position),
        })?;
        timer.stop(gpu, Stage::MoeAlign, Some((16 * a) as u64))
    }

    /// The grouped expert MLP over every slot: up GEMM, SiLU·mul, down GEMM. The GEMMs' bytes
    /// are filled in once the step's active slots are known (`readback::fill_weight_bytes`).
    fn experts(&self, timer: &mut Timer) -> Result<()> {
        if self.plan.experts == ExpertFormat::Fp8 {
            let f = self.fp8_stage()?;
            let fused = self.plan.shape.spt() > self.plan.shape.k;
            let spt = self.plan.shape.spt();
            return fp8::experts(self.gpu, f.layer, f.bufs, self.ws, spt, fused, timer);
        }
        let (gpu, ws, l, cfg) = (self.gpu, self.ws, self.layer, self.cfg);
        let (e, h, i) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
        );
        let (spt, a, slots) = (self.plan.shape.spt(), self.assignments(), cfg.total_slots());
        let b = &ws.experts;
        let groups = Groups {
            offsets: gpu.ptr(&ws.align.offsets),
            tiles: gpu.ptr(&ws.align.tiles),
            count: slots,
            rows: a,
            tile: self.expert_tile(),
        };
        // Routed experts, then the shared slots (in their own tensors, or none).
        let weights = |routed: DevPtr<u16>, shared: DevPtr<u16>, stride: usize| Weights {
            b0: routed,
            b1: if shared.is_null() { routed } else { shared },
            n_first: e,
            stride,
        };
        let grouped = |x: DevPtr<u16>, rows: GemmRows, w: Weights, c, n, k| {
            let order = gpu.ptr(&ws.align.order);
            gemm::args(x, rows, order, spt, w, groups, c, DevPtr::NULL, n, k)
        };
        let parts = gpu.ptr(&b.parts);
        timer.start(gpu)?;
        let w13 = weights(gpu.ptr(&l.w13), gpu.ptr_opt(l.sw13.as_ref()), 2 * i * h);
        let up = grouped(
            gpu.ptr(&ws.inputs.x),
            GemmRows::Mapped,
            w13,
            gpu.ptr(&b.h1),
            2 * i,
            h,
        );
        gemm::run_split(gpu, up, b.up_splits[spt], a, parts)?;
        timer.stop(gpu, Stage::ExpertGemmUp, None)?;
        timer.start(gpu)?;
        silu(gpu, gpu.ptr(&b.h1), gpu.ptr(&b.act), a, i)?;
        timer.stop(gpu, Stage::SiluMul, Some((8 * a * i + 2 * a * i) as u64))?;
        timer.start(gpu)?;
        let w2 = weights(gpu.ptr(&l.w2), gpu.ptr_opt(l.sw2.as_ref()), h * i);
        let down = grouped(gpu.ptr(&b.act), GemmRows::Direct, w2, gpu.ptr(&b.eo), h, i);
        gemm::run_split(gpu, down, b.down_splits[spt], a, parts)?;
        timer.stop(gpu, Stage::ExpertGemmDown, None)
    }

    /// The shared experts as one dense MLP over all tokens, S groups of T rows.
    fn shared_mlp(&self, timer: &mut Timer) -> Result<()> {
        if self.plan.shared_experts == ExpertFormat::Fp8 {
            let f = self.fp8_stage()?;
            return fp8::shared_mlp(self.gpu, f.layer, f.bufs, self.ws, self.cfg, timer);
        }
        let (gpu, ws, l, cfg, t) = (self.gpu, self.ws, self.layer, self.cfg, self.t);
        let (h, s, is) = (
            cfg.hidden_size,
            cfg.n_shared_experts,
            cfg.shared_slot_intermediate(),
        );
        let (sw13, sw2) = match (&l.sw13, &l.sw2) {
            (Some(a), Some(b)) => (gpu.ptr(a), gpu.ptr(b)),
            _ => bail!("the separate shared MLP has no weights"),
        };
        let b = &ws.shared;
        let groups = Groups {
            offsets: gpu.ptr(&b.offsets),
            tiles: gpu.ptr(&b.tiles),
            count: s,
            rows: s * t,
            tile: b.tile,
        };
        let dense = |x: DevPtr<u16>, rows: GemmRows, w: DevPtr<u16>, stride, c, n, k| {
            let w = Weights::one(w, s, stride);
            gemm::args(x, rows, DevPtr::NULL, 1, w, groups, c, DevPtr::NULL, n, k)
        };
        let (rows, parts) = (s * t, gpu.ptr(&ws.experts.parts));
        timer.start(gpu)?;
        let x = gpu.ptr(&ws.inputs.x);
        let up = dense(
            x,
            GemmRows::PerGroup,
            sw13,
            2 * is * h,
            gpu.ptr(&b.h1),
            2 * is,
            h,
        );
        gemm::run_split(gpu, up, b.splits.0, rows, parts)?;
        silu(gpu, gpu.ptr(&b.h1), gpu.ptr(&b.act), rows, is)?;
        let down = dense(
            gpu.ptr(&b.act),
            GemmRows::Direct,
            sw2,
            h * is,
            gpu.ptr(&b.out),
            h,
            is,
        );
        gemm::run_split(gpu, down, b.splits.1, rows, parts)?;
        let wbytes = (2 * s * 3 * is * h) as u64;
        let bytes = wbytes + (2 * t * h + 4 * rows * h) as u64;
        timer.stop(gpu, Stage::SharedMlp, Some(bytes))
    }

    /// y = out_scale · Σ slot weight · expert output (+ the separate shared MLP's output).
    fn combine(&self, timer: &mut Timer) -> Result<()> {
        let (gpu, ws, t) = (self.gpu, self.ws, self.t);
        let (h, s) = (self.cfg.hidden_size, self.cfg.n_shared_experts);
        let (spt, a, separate) = (
            self.plan.shape.spt(),
            self.assignments(),
            self.plan.separate,
        );
        let shared = |b| if separate { gpu.ptr(b) } else { DevPtr::NULL };
        timer.start(gpu)?;
        gpu.launch(CombineArgs {
            eo: gpu.ptr(&ws.experts.eo),
            position: gpu.ptr(&ws.align.position),
            w: gpu.ptr(&ws.router.weights),
            spt: spt as i32,
            out_scale: self.plan.out_scale as f32,
            so: shared(&ws.shared.out),
            sep: shared(&ws.inputs.sep),
            s: s as i32,
            t: t as i32,
            h: h as i32,
            y: gpu.ptr(&ws.out.y),
        })?;
        let shared_read = if separate { 4 * s * t * h } else { 0 };
        let bytes = (4 * a * h + 8 * a + shared_read + 4 * t * h) as u64;
        timer.stop(gpu, Stage::Combine, Some(bytes))
    }
}

/// act [rows × inter] = bf16(silu(gate) · up).
fn silu(gpu: &Gpu, h1: DevPtr<f32>, act: DevPtr<u16>, rows: usize, inter: usize) -> Result<()> {
    gpu.launch(SiluMulArgs {
        h: h1,
        act,
        rows: rows as u64,
        inter: inter as i32,
    })
}
