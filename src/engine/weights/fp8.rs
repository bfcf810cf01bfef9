//! FP8 experts as DeepSeek-V3 stores and serves them: e4m3 weights with one f32 scale per
//! 128×128 block (`weight_scale_inv`, the factor that dequantizes: w = q · s), activations
//! quantized per token in groups of 128 along K, and the CPU reference of the dequantized math
//! the FP8 grouped GEMM (kernels/fp8.cu) is checked against.
//!
//! The quantizers here and on the device compute the same bits: s = amax / 448 in f32 (1 where
//! the block is all zero), q = e4m3(x / s) rounded to nearest even and saturated to ±448.

use super::checkpoint::files::{e4m3_to_f32, Files};
use super::{ExpertWeights, WeightSource};
use crate::engine::config::MoeConfig;
use crate::engine::inputs::tensor_to_f32;
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::ops::Range;

/// The block edge of weights and the group length of activations.
pub const BLOCK: usize = 128;
/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Encodes an f32 as OCP e4m3 ("e4m3fn"), rounding to nearest even and saturating to ±448 (as
/// PTX `cvt.rn.satfinite.e4m3x2.f32`); NaN becomes the NaN code 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    if x.is_nan() {
        return 0x7F;
    }
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7E;
    }
    // Below the smallest normal (2^-6) the step is 2^-9; code 8 is then the smallest normal.
    if a < 1.0 / 64.0 {
        return sign | (f64::from(a) * 512.0).round_ties_even() as u8;
    }
    // A normal f32 in [2^-6, 448): keep 3 of its 23 mantissa bits, rounding to nearest even
    // (a carry out of the mantissa moves to the next exponent, as the encoding does).
    let bits = a.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127;
    let m = bits & 0x7F_FFFF;
    let (mut q, rest) = (m >> 20, m & 0xF_FFFF);
    if rest > 0x8_0000 || (rest == 0x8_0000 && q & 1 == 1) {
        q += 1;
    }
    if q == 8 {
        (e, q) = (e + 1, 0);
    }
    sign | (((e + 7) as u8) << 3) | q as u8
}

/// The scale of one block or group from its largest magnitude (1 for an all-zero block).
pub fn scale_of(amax: f32) -> f32 {
    if amax > 0.0 {
        amax / E4M3_MAX
    } else {
        1.0
    }
}

/// A matrix [rows × cols] in e4m3 with one scale per 128×128 block, row-major, scales
/// [⌈rows/128⌉ × ⌈cols/128⌉] (DeepSeek-V3's `weight` and `weight_scale_inv`).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockScaled {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
    pub scale_inv: Vec<f32>,
}

impl BlockScaled {
    /// Block-quantizes `values` [rows × cols].
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> BlockScaled {
        assert_eq!(values.len(), rows * cols, "quantize: [rows × cols] values");
        let (sr, sc) = (rows.div_ceil(BLOCK), cols.div_ceil(BLOCK));
        let mut amax = vec![0f32; sr * sc];
        for r in 0..rows {
            for c in 0..cols {
                let b = &mut amax[(r / BLOCK) * sc + c / BLOCK];
                *b = b.max(values[r * cols + c].abs());
            }
        }
        let scale_inv: Vec<f32> = amax.into_iter().map(scale_of).collect();
        let data = (0..rows * cols)
            .map(|k| {
                let (r, c) = (k / cols, k % cols);
                f32_to_e4m3(values[k] / scale_inv[(r / BLOCK) * sc + c / BLOCK])
            })
            .collect();
        BlockScaled {
            rows,
            cols,
            data,
            scale_inv,
        }
    }

    fn scale_cols(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    /// The scale of element (r, c).
    pub fn scale(&self, r: usize, c: usize) -> f32 {
        self.scale_inv[(r / BLOCK) * self.scale_cols() + c / BLOCK]
    }

    /// q · s per element, in f32 (exact where the product fits f32, as for every DeepSeek-V3
    /// scale and code).
    pub fn dequantize(&self) -> Vec<f32> {
        // Rows in parallel: a full-size expert is tens of millions of values, and the FP8
        // paths' host reference dequantizes several a step.
        use rayon::prelude::*;
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .zip(self.data.par_chunks(self.cols.max(1)))
            .enumerate()
            .for_each(|(r, (o, q))| {
                for (c, (o, &q)) in o.iter_mut().zip(q).enumerate() {
                    *o = e4m3_to_f32(q) * self.scale(r, c);
                }
            });
        out
    }
}

/// Activations [rows × cols] in e4m3, one scale per row and group of 128 columns, scales
/// [rows × ⌈cols/128⌉].
#[derive(Clone, Debug, PartialEq)]
pub struct TokenGroups {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
    pub scales: Vec<f32>,
}

impl TokenGroups {
    /// Quantizes `values` [rows × cols] per row and group of 128.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> TokenGroups {
        assert_eq!(values.len(), rows * cols, "quantize: [rows × cols] values");
        let groups = cols.div_ceil(BLOCK);
        let mut data = vec![0u8; rows * cols];
        let mut scales = vec![0f32; rows * groups];
        for r in 0..rows {
            for g in 0..groups {
                let span = r * cols + g * BLOCK..r * cols + ((g + 1) * BLOCK).min(cols);
                let amax = values[span.clone()]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                let s = scale_of(amax);
                scales[r * groups + g] = s;
                for k in span {
                    data[k] = f32_to_e4m3(values[k] / s);
                }
            }
        }
        TokenGroups {
            rows,
            cols,
            data,
            scales,
        }
    }

    pub fn scale(&self, r: usize, c: usize) -> f32 {
        self.scales[r * self.cols.div_ceil(BLOCK) + c / BLOCK]
    }

    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows * self.cols)
            .map(|k| e4m3_to_f32(self.data[k]) * self.scale(k / self.cols, k % self.cols))
            .collect()
    }
}

/// The dequantized math of one FP8 GEMM, in f64: C[r, n] = Σ_k a[r, k] · b[n, k] with
/// a = qa · sa (per row and K group) and b = qb · sb (per block). [a.rows × b.rows].
pub fn gemm_reference(a: &TokenGroups, b: &BlockScaled) -> Vec<f64> {
    assert_eq!(a.cols, b.cols, "gemm_reference: K of A and B");
    let (k, n) = (a.cols, b.rows);
    let av: Vec<f64> = a.dequantize().into_iter().map(f64::from).collect();
    let bv: Vec<f64> = b.dequantize().into_iter().map(f64::from).collect();
    let mut c = vec![0f64; a.rows * n];
    for r in 0..a.rows {
        let ar = &av[r * k..(r + 1) * k];
        for j in 0..n {
            c[r * n + j] = ar
                .iter()
                .zip(&bv[j * k..(j + 1) * k])
                .map(|(x, y)| x * y)
                .sum();
        }
    }
    c
}

/// One SwiGLU MLP in FP8: gate and up [I × H], down [H × I].
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Mlp {
    pub hidden: usize,
    pub intermediate: usize,
    pub gate: BlockScaled,
    pub up: BlockScaled,
    pub down: BlockScaled,
}

impl Fp8Mlp {
    /// Block-quantizes bf16 (or any f32) weights with the 128×128 scheme.
    pub fn quantize(w: &ExpertWeights) -> Fp8Mlp {
        let (h, i) = (w.hidden, w.intermediate);
        Fp8Mlp {
            hidden: h,
            intermediate: i,
            gate: BlockScaled::quantize(&w.gate, i, h),
            up: BlockScaled::quantize(&w.up, i, h),
            down: BlockScaled::quantize(&w.down, h, i),
        }
    }

    /// The weights the FP8 GEMMs apply, as f32: what the f64 reference of an FP8 path reads.
    pub fn dequantize(&self) -> ExpertWeights {
        ExpertWeights {
            hidden: self.hidden,
            intermediate: self.intermediate,
            gate: self.gate.dequantize(),
            up: self.up.dequantize(),
            down: self.down.dequantize(),
        }
    }

    /// Bytes of weights and scales, as they stream through the GEMMs.
    pub fn bytes(&self) -> usize {
        [&self.gate, &self.up, &self.down]
            .iter()
            .map(|m| m.data.len() + 4 * m.scale_inv.len())
            .sum()
    }
}

/// Refuses a layer whose FP8 matrices would cut 128×128 blocks: the hidden size, and the
/// intermediate size of the routed experts (`routed`) or of a shared slot (`shared`), must be
/// multiples of 128.
pub fn check_sizes(cfg: &MoeConfig, routed: bool, shared: bool) -> Result<()> {
    let mut sizes = vec![("hidden_size", cfg.hidden_size)];
    if routed {
        sizes.push(("moe_intermediate_size", cfg.moe_intermediate_size));
    }
    if shared && cfg.n_shared_experts > 0 {
        sizes.push((
            "shared slot intermediate size",
            cfg.shared_slot_intermediate(),
        ));
    }
    for (what, v) in sizes {
        ensure!(
            v.is_multiple_of(BLOCK),
            "--experts fp8 needs {what} to be a multiple of {BLOCK} (the FP8 block edge); {} has {v}",
            cfg.name
        );
    }
    Ok(())
}

/// Routed expert `e` in FP8: as the checkpoint stores it where it is FP8, else block-quantized.
pub fn expert(source: &dyn WeightSource, e: usize) -> Result<Fp8Mlp> {
    match source.expert_fp8(e)? {
        Some(m) => Ok(m),
        None => Ok(Fp8Mlp::quantize(&source.expert(e)?)),
    }
}

/// Shared slot `j` in FP8, as `expert`.
pub fn shared_slot(source: &dyn WeightSource, j: usize) -> Result<Fp8Mlp> {
    match source.shared_slot_fp8(j)? {
        Some(m) => Ok(m),
        None => Ok(Fp8Mlp::quantize(&source.shared_slot(j)?)),
    }
}

/// Where one FP8 matrix lives in a checkpoint: a tensor, its slab (fused 3-D experts) and the
/// rows and columns taken.
pub struct StoredMatrix {
    pub name: String,
    pub slab: Option<usize>,
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

/// Reads a block-aligned part of an F8_E4M3 tensor and its `_scale_inv` exactly as stored
/// (no re-quantization). None where the tensor is not FP8.
pub fn read_stored(files: &Files, m: &StoredMatrix) -> Result<Option<BlockScaled>> {
    let (meta, bytes) = files.raw(&m.name)?;
    if meta.dtype != Dtype::F8_E4M3 {
        return Ok(None);
    }
    ensure!(
        files.block == [BLOCK, BLOCK],
        "FP8 tensor `{}` has {:?} blocks; the FP8 GEMM takes {BLOCK}×{BLOCK} blocks (DeepSeek-V3's)",
        m.name,
        files.block
    );
    let (nr, nc) = match (meta.shape.as_slice(), m.slab) {
        ([r, c], None) | ([_, r, c], Some(_)) => (*r, *c),
        (shape, _) => bail!("FP8 tensor `{}` has shape {shape:?}", m.name),
    };
    let aligned = |x: usize, n: usize| x.is_multiple_of(BLOCK) || x == n;
    ensure!(
        aligned(m.rows.start, nr)
            && aligned(m.rows.end, nr)
            && aligned(m.cols.start, nc)
            && aligned(m.cols.end, nc),
        "FP8 tensor `{}`: rows {:?} and columns {:?} cut its {BLOCK}×{BLOCK} scale blocks (tensor parallelism or shared slots must split at multiples of {BLOCK}); use --experts bf16",
        m.name,
        m.rows,
        m.cols
    );
    let s = m.slab.unwrap_or(0);
    let base = s * nr * nc;
    let (rows, cols) = (m.rows.len(), m.cols.len());
    let mut data = Vec::with_capacity(rows * cols);
    for r in m.rows.clone() {
        let at = base + r * nc;
        data.extend_from_slice(&bytes[at + m.cols.start..at + m.cols.end]);
    }
    let scale_name = format!("{}_scale_inv", m.name);
    let (smeta, sbytes) = files.raw(&scale_name)?;
    let (sr, sc) = (nr.div_ceil(BLOCK), nc.div_ceil(BLOCK));
    let es = smeta.dtype.bitsize() / 8;
    let slab_bytes = sbytes
        .get(s * sr * sc * es..(s + 1) * sr * sc * es)
        .with_context(|| format!("scale tensor `{scale_name}` is shorter than its shape"))?;
    let view = TensorView::new(smeta.dtype, vec![sr * sc], slab_bytes)
        .with_context(|| format!("scale tensor `{scale_name}`"))?;
    let all = tensor_to_f32(&scale_name, &view)?;
    let (r0, r1) = (m.rows.start / BLOCK, m.rows.end.div_ceil(BLOCK));
    let (c0, c1) = (m.cols.start / BLOCK, m.cols.end.div_ceil(BLOCK));
    let scale_inv = (r0..r1)
        .flat_map(|br| all[br * sc + c0..br * sc + c1].iter().copied())
        .collect();
    Ok(Some(BlockScaled {
        rows,
        cols,
        data,
        scale_inv,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_inverts_decoding_for_every_finite_code() {
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                assert_eq!(f32_to_e4m3(v), 0x7F);
                continue;
            }
            // Negative zero keeps its sign bit.
            assert_eq!(f32_to_e4m3(v), b, "code {b:#04x} = {v}");
        }
    }

    /// The encoding by arithmetic on the value (log2 and powers of two), written apart from
    /// the bit-level encoder it checks.
    fn e4m3_by_arithmetic(x: f32) -> u8 {
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        if x.is_nan() {
            return 0x7F;
        }
        let a = f64::from(x.abs());
        if a >= f64::from(E4M3_MAX) {
            return sign | 0x7E;
        }
        if a < 1.0 / 64.0 {
            return sign | (a * 512.0).round_ties_even() as u8;
        }
        let e = a.log2().floor() as i32;
        let e = if a < 2f64.powi(e) {
            e - 1
        } else if a >= 2f64.powi(e + 1) {
            e + 1
        } else {
            e
        };
        let m = ((a / 2f64.powi(e) - 1.0) * 8.0).round_ties_even() as i32;
        let (e, m) = if m == 8 { (e + 1, 0) } else { (e, m) };
        sign | (((e + 7) as u8) << 3) | m as u8
    }

    #[test]
    fn the_bit_level_encoder_is_the_arithmetic_one() {
        // Every f32 exponent of the normal range, with mantissas around each rounding boundary
        // and a spread of others; both signs.
        for exp in 100u32..140 {
            for m in (0..(1u32 << 23)).step_by(4093).chain((0..8).flat_map(|q| {
                let mid = (q << 20) | 0x8_0000;
                [mid - 1, mid, mid + 1]
            })) {
                for sign in [0u32, 1 << 31] {
                    let x = f32::from_bits(sign | (exp << 23) | m);
                    assert_eq!(f32_to_e4m3(x), e4m3_by_arithmetic(x), "{x:e}");
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_saturates() {
        // Between 1.0 (0x38) and 1.125 (0x39): the midpoint goes to the even code.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.0626), 0x39);
        // Between 1.125 and 1.25 (0x3A): the midpoint goes up, to the even 0x3A.
        assert_eq!(f32_to_e4m3(1.1875), 0x3A);
        assert_eq!(f32_to_e4m3(500.0), 0x7E);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xFE);
        // Half the smallest subnormal rounds to zero; just above it, up.
        assert_eq!(f32_to_e4m3(1.0 / 1024.0), 0x00);
        assert_eq!(f32_to_e4m3(1.01 / 1024.0), 0x01);
        // The last subnormal rounds up into the smallest normal.
        assert_eq!(f32_to_e4m3(7.6 / 512.0), 0x08);
    }

    #[test]
    fn block_quantization_keeps_each_block_within_half_a_step() {
        let (rows, cols) = (200, 130);
        let values: Vec<f32> = (0..rows * cols)
            .map(|k| ((k * 7919 % 1000) as f32 - 500.0) * 1e-4 * (1 + k / 9000) as f32)
            .collect();
        let q = BlockScaled::quantize(&values, rows, cols);
        assert_eq!(q.scale_inv.len(), 2 * 2);
        let back = q.dequantize();
        for (k, (&v, &d)) in values.iter().zip(&back).enumerate() {
            let s = q.scale(k / cols, k % cols);
            // e4m3 has 3 mantissa bits: relative error ≤ 2^-4, absolute ≤ half a subnormal step.
            assert!(
                (v - d).abs() <= v.abs() / 16.0 + s / 1024.0,
                "{k}: {v} vs {d}"
            );
        }
        // The largest element of each block maps to ±448 exactly.
        let amax = (0..128)
            .flat_map(|r| values[r * cols..r * cols + 128].iter())
            .fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(q.scale_inv[0], amax / 448.0);
    }

    #[test]
    fn all_zero_groups_get_scale_one() {
        let q = TokenGroups::quantize(&[0.0; 256], 1, 256);
        assert_eq!(q.scales, vec![1.0, 1.0]);
        assert!(q.data.iter().all(|&b| b == 0));
    }

    #[test]
    fn reference_gemm_is_the_dequantized_product() {
        let (m, n, k) = (3, 5, 256);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 - 8.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let (qa, qb) = (
            TokenGroups::quantize(&a, m, k),
            BlockScaled::quantize(&b, n, k),
        );
        let c = gemm_reference(&qa, &qb);
        let (da, db) = (qa.dequantize(), qb.dequantize());
        let want: f64 = (0..k)
            .map(|x| f64::from(da[k + x]) * f64::from(db[2 * k + x]))
            .sum();
        assert_eq!(c[n + 2], want);
    }
}
