//! The CPU backend's FP8 experts (`--experts fp8`): the weights as an FP8 checkpoint stores
//! them, else block-quantized from the bf16 ones, held dequantized; activations quantized per
//! token and group of 128 before each GEMM. The same math as the FP8 GEMM's CPU reference
//! (engine::weights::fp8), accumulated in f32.

use super::concat_mlps;
use crate::engine::config::MoeConfig;
use crate::engine::paths::{ExpertFormat, PathSpec};
use crate::engine::weights::fp8::{check_sizes, Fp8Mlp, TokenGroups};
use crate::engine::weights::{ExpertWeights, WeightSource};
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// The FP8 weights of the layer, dequantized (what the FP8 GEMMs multiply).
pub struct Fp8Weights {
    /// E: slots below it are routed experts.
    pub n_routed: usize,
    pub experts: Vec<Arc<ExpertWeights>>,
    pub shared_slots: Vec<Arc<ExpertWeights>>,
    /// The shared slots as one dense MLP (the separate path); quantizing each slot is
    /// quantizing the whole, since every slot's size is a multiple of the block.
    pub shared_dense: Option<ExpertWeights>,
}

impl Fp8Weights {
    /// From the checkpoint's stored FP8 where it has it, else from `experts` and `shared`
    /// (the bf16 weights the backend holds), block-quantized.
    pub fn new(
        source: &dyn WeightSource,
        experts: &[Arc<ExpertWeights>],
        shared: &[Arc<ExpertWeights>],
    ) -> Result<Fp8Weights> {
        // Only what fits the blocks is made: a path needing the rest was refused (`check_path`).
        let cfg = source.config();
        check_sizes(cfg, false, false)?;
        let fits = |routed: bool| check_sizes(cfg, routed, !routed).is_ok();
        let experts = if fits(true) { experts } else { &[] };
        let shared = if fits(false) { shared } else { &[] };
        let experts = experts
            .par_iter()
            .enumerate()
            .map(|(e, w)| {
                let m = match source.expert_fp8(e)? {
                    Some(m) => m,
                    None => Fp8Mlp::quantize(w),
                };
                Ok(Arc::new(m.dequantize()))
            })
            .collect::<Result<Vec<_>>>()
            .context("FP8 routed experts")?;
        let shared_slots = shared
            .iter()
            .enumerate()
            .map(|(j, w)| {
                let m = match source.shared_slot_fp8(j)? {
                    Some(m) => m,
                    None => Fp8Mlp::quantize(w),
                };
                Ok(Arc::new(m.dequantize()))
            })
            .collect::<Result<Vec<_>>>()
            .context("FP8 shared experts")?;
        let shared_dense = concat_mlps(&shared_slots);
        Ok(Fp8Weights {
            n_routed: cfg.n_routed_experts,
            experts,
            shared_slots,
            shared_dense,
        })
    }

    /// Slot `slot`'s dequantized MLP (routed below E, then shared slots).
    pub fn slot(&self, slot: usize) -> &Arc<ExpertWeights> {
        let e = self.n_routed;
        if slot < e {
            &self.experts[slot]
        } else {
            &self.shared_slots[slot - e]
        }
    }
}

/// Refuses a path whose FP8 matrices would cut blocks (before its FP8 weights are made).
pub fn check_path(cfg: &MoeConfig, spec: &PathSpec) -> Result<()> {
    check_sizes(
        cfg,
        spec.experts == ExpertFormat::Fp8,
        spec.shared_experts == ExpertFormat::Fp8,
    )
}

/// `rows` × `cols` values quantized per row and group of 128 and back: what an FP8 GEMM
/// multiplies in place of them.
pub fn quantize_rows(values: &[f32], cols: usize) -> Vec<f32> {
    values
        .par_chunks(cols.max(1))
        .flat_map_iter(|row| TokenGroups::quantize(row, 1, cols).dequantize())
        .collect()
}
