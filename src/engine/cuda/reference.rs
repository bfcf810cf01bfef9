//! The device reference (kernels/reference.cu): the reference routing of every token with its
//! margins, the layer output in f64 from the bf16 inputs and weights already on the device, and
//! the comparisons of each path against it, reduced on the device. Per step only the column
//! summaries, the slot loads and the drill-down tokens' rows come back: O(E + K) to the host.
//!
//! Use: `run` after the first path's gate GEMM wrote the logits, `compare_path` after each path
//! (before the next overwrites its outputs), `finish` for the `StepNumerics`. Every launch is on
//! the backend's one stream; `finish` is the only wait.
//!
//! Memory: the f64 MLP needs `bytes_per_token` (DeepSeek-V3: ~1.0 MiB a token); every token is
//! compared while the step fits `MEMORY_BUDGET` (8 GiB: ~8000 DeepSeek-V3 tokens), beyond that an
//! evenly spread sample of as many tokens as fit, moving with the step (`sampled_tokens` says
//! how many).

use super::fp8::{DeviceStack, Fp8Slots};
use super::gpu::Gpu;
use super::kernels::{
    DevPtr, RefCombineArgs, RefCompareArgs, RefCopyArgs, RefCopyRowsArgs, RefCountArgs,
    RefFillArgs, RefGateArgs, RefGemmArgs, RefRouteArgs, RefRowsArgs, RefScanArgs, RefSetsArgs,
    RefSiluArgs, RefSummaryArgs, REF_GEMM_BM,
};
use super::layer::DeviceLayer;
use crate::engine::compare::DETAIL_TOKENS;
use crate::engine::config::{MoeConfig, ScoringFunc};
use crate::engine::numerics::{detail_tokens, StepNumerics, WORST_TOKENS};
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaEvent, CudaSlice};

/// Doubles per column summary (kernels/reference.cu REF_SUMMARY_LEN): sum, min, max, p50, p99,
/// NaN count, zero count, then WORST_TOKENS indices and WORST_TOKENS values.
pub const SUMMARY_LEN: usize = 7 + 2 * WORST_TOKENS;
/// Device memory the f64 reference may take per step.
pub const MEMORY_BUDGET: usize = 8 << 30;

/// Per-path route columns (`ref_compare_routes`), then one per shared slot.
#[derive(Clone, Copy)]
enum RouteCol {
    Agree = 0,
    Exact,
    Near,
    Real,
    WeightDiff,
    RoutedSum,
    RoutedWant,
    RoutedDev,
    SharedDev,
    Gate,
    Shared0,
}

/// Per-path row columns (`ref_compare_rows`).
#[derive(Clone, Copy)]
enum RowCol {
    RelL2 = 0,
    MaxAbs,
    Diff2,
    Norm2,
}
const ROW_COLS: usize = 4;

/// What one path left on the device for the comparison.
#[derive(Clone, Copy, Debug)]
pub struct PathOutputs {
    /// [T × spt] slot ids and the weights the kernels applied (before `out_scale`).
    pub ids: DevPtr<u32>,
    pub weights: DevPtr<f32>,
    pub spt: usize,
    pub out_scale: f64,
    /// [T] weight of the separate shared MLP; NULL where the path runs none.
    pub sep: DevPtr<f32>,
    /// [T] expected shared weight (the shared gate the kernels use); NULL: 1.
    pub gate: DevPtr<f32>,
    /// [T × H] the layer output.
    pub y: DevPtr<f32>,
    /// The near-tie width in f32 ulps for this path's router input (`numerics::near_tie_ulps`).
    pub near_ulps: u32,
}

/// f64 bytes the reference holds per compared token.
pub fn bytes_per_token(cfg: &MoeConfig) -> usize {
    let kps = cfg.num_experts_per_tok + cfg.n_shared_experts;
    let inter = cfg
        .moe_intermediate_size
        .max(cfg.shared_slot_intermediate());
    kps * ((3 * inter + cfg.hidden_size) * 8 + 8) + cfg.hidden_size * 12 + 16
}

/// Tokens of a `t`-token step the reference compares: every one where they fit the budget.
pub fn compared_tokens(cfg: &MoeConfig, t: usize) -> usize {
    (MEMORY_BUDGET / bytes_per_token(cfg)).clamp(1, t.max(1))
}

/// The expert weights the reference multiplies: the bf16 ones of the layer, or the block-scaled
/// FP8 ones an FP8 path runs (decoded exactly, so the comparison measures that path's kernel and
/// not the format). `shared: None` keeps the shared slots in bf16.
#[derive(Clone, Copy)]
pub enum RefWeights<'a> {
    Bf16,
    Fp8 {
        routed: &'a Fp8Slots,
        shared: Option<&'a Fp8Slots>,
    },
}

impl<'a> RefWeights<'a> {
    /// (gate/up, down) stacks of the routed and of the shared slots where they are FP8.
    #[allow(clippy::type_complexity)]
    fn fp8_stacks(
        self,
    ) -> (
        Option<(&'a DeviceStack, &'a DeviceStack)>,
        Option<(&'a DeviceStack, &'a DeviceStack)>,
    ) {
        match self {
            RefWeights::Bf16 => (None, None),
            RefWeights::Fp8 { routed, shared } => (
                Some((&routed.w13, &routed.w2)),
                shared.map(|s| (&s.w13, &s.w2)),
            ),
        }
    }
}

/// The device buffers of the reference for one step size.
pub struct DeviceReference {
    cfg: MoeConfig,
    t: usize,
    n: usize,
    paths: usize,
    spt_max: usize,
    /// The compared tokens, ascending (all of them when n == t).
    tokens: Vec<usize>,
    tok: CudaSlice<u32>,
    sel: CudaSlice<f32>,
    gscore: CudaSlice<f32>,
    kept: CudaSlice<u32>,
    ids: CudaSlice<u32>,
    probs: CudaSlice<f64>,
    /// [2 × T]: expert-level margins, then group-level.
    margins: CudaSlice<f64>,
    gate: CudaSlice<f64>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    tiles: CudaSlice<i32>,
    cursor: CudaSlice<i32>,
    row_of: CudaSlice<i32>,
    pos_of: CudaSlice<i32>,
    h1: CudaSlice<f64>,
    act: CudaSlice<f64>,
    o: CudaSlice<f64>,
    y: CudaSlice<f64>,
    /// [paths × route columns × T], then the A-B set agreement [T].
    route_cols: CudaSlice<f64>,
    /// [(paths + 1) × ROW_COLS × n]: each path against the reference, then B against A.
    row_cols: CudaSlice<f64>,
    classes: CudaSlice<u8>,
    load: CudaSlice<u32>,
    /// Each path's slot ids, weights and separate weights, kept for A-B and the drill-down.
    kept_ids: CudaSlice<u32>,
    kept_w: CudaSlice<f32>,
    kept_sep: CudaSlice<f32>,
    y_a: CudaSlice<f32>,
    summary: CudaSlice<f64>,
    runs: Vec<Option<PathOutputs>>,
    timing: Vec<(CudaEvent, CudaEvent)>,
}

fn route_cols(cfg: &MoeConfig) -> usize {
    RouteCol::Shared0 as usize + cfg.n_shared_experts
}

impl DeviceReference {
    /// Buffers for `t` tokens, `paths` paths of at most `spt_max` slots per token.
    pub fn new(
        gpu: &Gpu,
        cfg: &MoeConfig,
        t: usize,
        paths: usize,
        spt_max: usize,
    ) -> Result<DeviceReference> {
        let (e, h, k, s) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.num_experts_per_tok,
            cfg.n_shared_experts,
        );
        let n = compared_tokens(cfg, t);
        let kps = k + s;
        let inter = cfg
            .moe_intermediate_size
            .max(cfg.shared_slot_intermediate());
        let g = cfg.n_group.max(1);
        let slots = cfg.total_slots();
        let rows = n * kps;
        let route_elems = (paths * route_cols(cfg) + 1) * t;
        let n_summary = paths * route_cols(cfg) + 1 + 2 + (paths + 1) * ROW_COLS;
        let tokens: Vec<usize> = (0..n).map(|i| i * t / n).collect();
        let tok: Vec<u32> = tokens.iter().map(|&x| x as u32).collect();
        Ok(DeviceReference {
            cfg: cfg.clone(),
            t,
            n,
            paths,
            spt_max,
            tok: gpu.upload(&tok, "reference tokens")?,
            tokens,
            sel: gpu.alloc(t * e, "reference selection values")?,
            gscore: gpu.alloc(t * g, "reference group scores")?,
            kept: gpu.alloc(t * cfg.topk_group.max(1), "reference kept groups")?,
            ids: gpu.alloc(t * k, "reference ids")?,
            probs: gpu.alloc(t * k, "reference probabilities")?,
            margins: gpu.alloc(2 * t, "reference margins")?,
            gate: gpu.alloc(n, "reference shared gate")?,
            counts: gpu.alloc(slots, "reference slot counts")?,
            offsets: gpu.alloc(slots + 1, "reference slot offsets")?,
            tiles: gpu.alloc(slots + 1, "reference tile offsets")?,
            cursor: gpu.alloc(slots, "reference cursors")?,
            row_of: gpu.alloc(rows, "reference rows")?,
            pos_of: gpu.alloc(rows, "reference positions")?,
            h1: gpu.alloc(rows * 2 * inter, "reference gate/up (f64)")?,
            act: gpu.alloc(rows * inter, "reference activations (f64)")?,
            o: gpu.alloc(rows * h, "reference expert outputs (f64)")?,
            y: gpu.alloc(n * h, "reference output (f64)")?,
            route_cols: gpu.alloc(route_elems, "routing comparisons")?,
            row_cols: gpu.alloc((paths + 1) * ROW_COLS * n, "output comparisons")?,
            classes: gpu.alloc(paths * t, "routing classes")?,
            load: gpu.alloc(paths * slots, "slot loads")?,
            kept_ids: gpu.alloc(paths * t * spt_max, "kept slot ids")?,
            kept_w: gpu.alloc(paths * t * spt_max, "kept slot weights")?,
            kept_sep: gpu.alloc(paths * t, "kept separate weights")?,
            y_a: gpu.alloc(n * h, "path A's compared rows")?,
            summary: gpu.alloc(n_summary * SUMMARY_LEN, "comparison summaries")?,
            runs: vec![None; paths],
            timing: Vec::new(),
        })
    }

    /// Whether these buffers serve a step of this shape.
    pub fn fits(&self, t: usize, paths: usize, spt_max: usize) -> bool {
        self.t == t && self.paths == paths && self.spt_max >= spt_max
    }

    /// The tokens compared against the f64 reference this step, ascending.
    pub fn tokens(&self) -> &[usize] {
        &self.tokens
    }

    /// The f64 reference output rows of the compared tokens [n × H] (tests and checks; not per
    /// step).
    pub fn reference_rows(&self, gpu: &Gpu) -> Result<Vec<f64>> {
        gpu.download(&self.y, self.n * self.cfg.hidden_size, "reference output")
    }

    /// Routes every token and computes the f64 layer output of the compared tokens. `x`: [T × H]
    /// bf16 hidden states; `logits`: [T × E] as the paths' router read them.
    pub fn run(
        &mut self,
        gpu: &Gpu,
        layer: &DeviceLayer,
        x: DevPtr<u16>,
        logits: DevPtr<f32>,
        weights: RefWeights<'_>,
        step: u64,
    ) -> Result<()> {
        self.clear_comparisons();
        if self.n < self.t {
            // A spread sample that moves with the step, so every token gets its turn.
            let stride = self.t / self.n;
            let shift = step as usize % stride.max(1);
            self.tokens = (0..self.n).map(|i| i * self.t / self.n + shift).collect();
            let tok: Vec<u32> = self.tokens.iter().map(|&x| x as u32).collect();
            gpu.stream
                .memcpy_htod(tok.as_slice(), &mut self.tok)
                .map_err(super::gpu::cuda_err("uploading the reference tokens"))?;
        }
        let start = gpu.event()?;
        self.route(gpu, layer, logits)?;
        self.mlp(gpu, layer, x, weights)?;
        let end = gpu.event()?;
        self.timing.push((start, end));
        Ok(())
    }

    fn route(&self, gpu: &Gpu, layer: &DeviceLayer, logits: DevPtr<f32>) -> Result<()> {
        let cfg = &self.cfg;
        gpu.launch(RefRouteArgs {
            logits,
            bias: DevPtr::of_opt(&gpu.stream, layer.bias.as_ref()),
            sel: gpu.ptr(&self.sel),
            gscore: gpu.ptr(&self.gscore),
            kept: gpu.ptr(&self.kept),
            ids: gpu.ptr(&self.ids),
            probs: gpu.ptr(&self.probs),
            margin_e: gpu.ptr(&self.margins),
            margin_g: gpu.ptr(&self.margins).at(self.t),
            tokens: self.t as u64,
            e: cfg.n_routed_experts as i32,
            n_group: cfg.n_group as i32,
            topk_group: cfg.topk_group as i32,
            k: cfg.num_experts_per_tok as i32,
            softmax: (cfg.scoring_func == ScoringFunc::Softmax) as i32,
            top2: cfg.has_bias as i32,
            norm: cfg.norm_topk_prob as i32,
        })
    }

    /// The grouped f64 MLP of the compared tokens and their weighted sum.
    fn mlp(
        &self,
        gpu: &Gpu,
        layer: &DeviceLayer,
        x: DevPtr<u16>,
        weights: RefWeights<'_>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (e, h, k, s) = (
            cfg.n_routed_experts,
            cfg.hidden_size,
            cfg.num_experts_per_tok,
            cfg.n_shared_experts,
        );
        let (i_r, i_s) = (cfg.moe_intermediate_size, cfg.shared_slot_intermediate());
        let inter = i_r.max(i_s);
        let (kps, slots, n) = (k + s, cfg.total_slots(), self.n);
        let rows = n * kps;
        let tok = gpu.ptr(&self.tok);
        if s > 0 {
            gpu.launch(RefGateArgs {
                x,
                gate_w: DevPtr::of_opt(&gpu.stream, layer.shared_gate_w.as_ref()),
                tok,
                out: gpu.ptr(&self.gate),
                n: n as u64,
                h: h as i32,
            })?;
        }
        gpu.fill(gpu.ptr(&self.counts), slots, 0)?;
        let rows_args = (
            self.ids_ptr(gpu),
            tok,
            n as u64,
            kps as i32,
            k as i32,
            e as i32,
        );
        gpu.launch(RefCountArgs {
            ids: rows_args.0,
            tok,
            counts: gpu.ptr(&self.counts),
            n: rows_args.2,
            kps: rows_args.3,
            k: rows_args.4,
            e: rows_args.5,
            slots: slots as i32,
        })?;
        gpu.launch(RefScanArgs {
            counts: gpu.ptr(&self.counts),
            offsets: gpu.ptr(&self.offsets),
            tiles: gpu.ptr(&self.tiles),
            cursor: gpu.ptr(&self.cursor),
            slots: slots as i32,
            bm: REF_GEMM_BM as i32,
        })?;
        gpu.launch(RefFillArgs {
            ids: rows_args.0,
            tok,
            cursor: gpu.ptr(&self.cursor),
            row_of: gpu.ptr(&self.row_of),
            pos_of: gpu.ptr(&self.pos_of),
            n: rows_args.2,
            kps: rows_args.3,
            k: rows_args.4,
            e: rows_args.5,
            slots: slots as i32,
        })?;
        let max_tiles = (rows.div_ceil(REF_GEMM_BM) + slots) as u32;
        let shared13 = layer.sw13.as_ref().unwrap_or(&layer.w13);
        let shared2 = layer.sw2.as_ref().unwrap_or(&layer.w2);
        let (fp8_routed, fp8_shared) = weights.fp8_stacks();
        let gemm = |mode: i32, b: (DevPtr<u16>, DevPtr<u16>), out: DevPtr<f64>, nk: [usize; 4]| {
            let q8 = |stacks: Option<(&DeviceStack, &DeviceStack)>| match stacks {
                Some((w13, w2)) => {
                    let w = if mode == 0 { w13 } else { w2 };
                    (gpu.ptr(&w.data), gpu.ptr(&w.scales), 1)
                }
                None => (DevPtr::NULL, DevPtr::NULL, 0),
            };
            let (bq_routed, bs_routed, fp8_r) = q8(fp8_routed);
            let (bq_shared, bs_shared, fp8_s) = q8(fp8_shared);
            let (lda, ldo) = if mode == 0 {
                (h, 2 * inter)
            } else {
                (inter, h)
            };
            gpu.launch(RefGemmArgs {
                x,
                act: gpu.ptr(&self.act),
                tok,
                row_of: gpu.ptr(&self.row_of),
                offsets: gpu.ptr(&self.offsets),
                tiles: gpu.ptr(&self.tiles),
                b_routed: b.0,
                b_shared: b.1,
                bq_routed,
                bs_routed,
                bq_shared,
                bs_shared,
                out,
                lda: lda as u64,
                ldo: ldo as u64,
                mode,
                kps: kps as i32,
                slots: slots as i32,
                e: e as i32,
                n_routed: nk[0] as i32,
                n_shared: nk[1] as i32,
                k_routed: nk[2] as i32,
                k_shared: nk[3] as i32,
                max_tiles: max_tiles as i32,
                fp8_routed: fp8_r,
                fp8_shared: fp8_s,
            })
        };
        let b13 = (gpu.ptr(&layer.w13), gpu.ptr(shared13));
        gemm(0, b13, gpu.ptr(&self.h1), [2 * i_r, 2 * i_s, h, h])?;
        gpu.launch(RefSiluArgs {
            h1: gpu.ptr(&self.h1),
            act: gpu.ptr(&self.act),
            offsets: gpu.ptr(&self.offsets),
            ld: inter as u64,
            rows: rows as u64,
            slots: slots as i32,
            e: e as i32,
            inter_routed: i_r as i32,
            inter_shared: i_s as i32,
        })?;
        let b2 = (gpu.ptr(&layer.w2), gpu.ptr(shared2));
        gemm(1, b2, gpu.ptr(&self.o), [h, h, i_r, i_s])?;
        gpu.launch(RefCombineArgs {
            o: gpu.ptr(&self.o),
            pos_of: gpu.ptr(&self.pos_of),
            probs: gpu.ptr(&self.probs),
            tok,
            gate: if s > 0 {
                gpu.ptr(&self.gate)
            } else {
                DevPtr::NULL
            },
            y: gpu.ptr(&self.y),
            rsf: cfg.routed_scaling_factor,
            n: n as u64,
            h: h as u64,
            kps: kps as i32,
            k: k as i32,
        })
    }

    fn ids_ptr(&self, gpu: &Gpu) -> DevPtr<u32> {
        gpu.ptr(&self.ids)
    }

    /// Compares path `idx` with the reference (and path B with path A); call it right after the
    /// path ran, before the next one overwrites its outputs.
    pub fn compare_path(&mut self, gpu: &Gpu, idx: usize, p: PathOutputs) -> Result<()> {
        ensure!(
            idx < self.paths && p.spt <= self.spt_max,
            "path {idx} ({} slots a token) out of the reference's {} paths × {} slots",
            p.spt,
            self.paths,
            self.spt_max
        );
        let cfg = &self.cfg;
        let (t, n, h) = (self.t, self.n, cfg.hidden_size);
        let start = gpu.event()?;
        let kept_ids = gpu.ptr(&self.kept_ids).at(idx * t * self.spt_max);
        let kept_w = gpu.ptr(&self.kept_w).at(idx * t * self.spt_max);
        let copy = |src: DevPtr<u32>, dst: DevPtr<u32>, len: usize| {
            gpu.launch(RefCopyArgs {
                src,
                dst,
                n: len as u64,
            })
        };
        copy(p.ids, kept_ids, t * p.spt)?;
        copy(p.weights.cast(), kept_w.cast(), t * p.spt)?;
        if !p.sep.is_null() {
            copy(p.sep.cast(), gpu.ptr(&self.kept_sep).at(idx * t).cast(), t)?;
        }
        if idx == 0 {
            gpu.fill(gpu.ptr(&self.load), self.paths * cfg.total_slots(), 0)?;
        }
        let nrc = route_cols(cfg);
        gpu.launch(RefCompareArgs {
            p_ids: p.ids,
            p_w: p.weights,
            sep: p.sep,
            gate: p.gate,
            r_ids: gpu.ptr(&self.ids),
            r_probs: gpu.ptr(&self.probs),
            sel: gpu.ptr(&self.sel),
            gscore: gpu.ptr(&self.gscore),
            kept: gpu.ptr(&self.kept),
            load: gpu.ptr(&self.load).at(idx * cfg.total_slots()),
            cols: gpu.ptr(&self.route_cols).at(idx * nrc * t),
            classes: gpu.ptr(&self.classes).at(idx * t),
            out_scale: p.out_scale,
            rsf: cfg.routed_scaling_factor,
            tokens: t as u64,
            spt: p.spt as i32,
            k: cfg.num_experts_per_tok as i32,
            e: cfg.n_routed_experts as i32,
            s: cfg.n_shared_experts as i32,
            n_group: cfg.n_group as i32,
            topk_group: cfg.topk_group as i32,
            near_ulps: p.near_ulps as i32,
        })?;
        let rows = |y: DevPtr<f32>, mode: i32, cols: usize| {
            gpu.launch(RefRowsArgs {
                y,
                tok: gpu.ptr(&self.tok),
                ref64: gpu.ptr(&self.y),
                ref32: gpu.ptr(&self.y_a),
                cols: gpu.ptr(&self.row_cols).at(cols * ROW_COLS * n),
                n: n as u64,
                h: h as i32,
                mode,
            })
        };
        rows(p.y, 0, idx)?;
        if idx == 0 {
            gpu.launch(RefCopyRowsArgs {
                y: p.y,
                tok: gpu.ptr(&self.tok),
                out: gpu.ptr(&self.y_a),
                n: n as u64,
                h: h as u64,
            })?;
        } else if idx == 1 {
            rows(p.y, 1, self.paths)?;
            let a = self.runs[0].context("path A was not compared before path B")?;
            gpu.launch(RefSetsArgs {
                a_ids: gpu.ptr(&self.kept_ids),
                b_ids: kept_ids,
                out: gpu.ptr(&self.route_cols).at(self.paths * nrc * t),
                tokens: t as u64,
                a_spt: a.spt as i32,
                b_spt: p.spt as i32,
                e: cfg.n_routed_experts as i32,
            })?;
        }
        self.runs[idx] = Some(p);
        let end = gpu.event()?;
        self.timing.push((start, end));
        Ok(())
    }

    /// Forgets the compared paths and the times, keeping this step's reference (routing and
    /// output): another path on the same weights is compared without computing it again.
    pub fn clear_comparisons(&mut self) {
        self.runs.iter_mut().for_each(|r| *r = None);
        self.timing.clear();
    }

    /// Summarizes every column on the device, reads the summaries, the loads and the drill-down
    /// rows back, and assembles the step's numerics.
    pub fn finish(&mut self, gpu: &Gpu, step: u64) -> Result<StepNumerics> {
        ensure!(
            self.runs.iter().all(|r| r.is_some()),
            "the reference compared {} of {} paths",
            self.runs.iter().filter(|r| r.is_some()).count(),
            self.paths
        );
        let (t, n) = (self.t, self.n);
        let start = gpu.event()?;
        let n_route = self.paths * route_cols(&self.cfg) + 1;
        let summarize = |cols: DevPtr<f64>, count: usize, stride: usize, len: usize, at: usize| {
            gpu.launch(RefSummaryArgs {
                cols,
                out: gpu.ptr(&self.summary).at(at * SUMMARY_LEN),
                stride: stride as u64,
                n: len as u64,
                columns: count as u64,
            })
        };
        summarize(gpu.ptr(&self.route_cols), n_route, t, t, 0)?;
        summarize(gpu.ptr(&self.margins), 2, t, t, n_route)?;
        let n_rows = (self.paths + 1) * ROW_COLS;
        summarize(gpu.ptr(&self.row_cols), n_rows, n, n, n_route + 2)?;
        let end = gpu.event()?;
        self.timing.push((start, end));
        let total = (n_route + 2 + n_rows) * SUMMARY_LEN;
        let sums = gpu.download(&self.summary, total, "comparison summaries")?;
        let load = gpu.download(
            &self.load,
            self.paths * self.cfg.total_slots(),
            "slot loads",
        )?;
        let mut reference_us = 0.0;
        for (a, b) in &self.timing {
            let ms = a
                .elapsed_ms(b)
                .map_err(super::gpu::cuda_err("reading the reference time"))?;
            reference_us += ms as f64 * 1e3;
        }
        let summaries = Summaries {
            all: &sums,
            nrc: route_cols(&self.cfg),
            n_route,
        };
        let mut numerics = self.assemble(&summaries, &load)?;
        numerics.comparison.reference_us = Some(reference_us);
        let sample: Vec<usize> = (0..4.min(n))
            .map(|i| self.tokens[(i * n / 4 + step as usize) % n])
            .collect();
        let picked = detail_tokens(&numerics.comparison, &sample, DETAIL_TOKENS);
        numerics.details = picked
            .into_iter()
            .map(|tok| self.detail(gpu, tok))
            .collect::<Result<_>>()?;
        Ok(numerics)
    }
}

mod readback;
use readback::Summaries;
