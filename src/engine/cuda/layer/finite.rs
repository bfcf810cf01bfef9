//! Non-finite values counted on the device (kernels/moe.cu `count_nonfinite`), as the CPU
//! backend counts them on the host: counters [rows × stages], zeroed once per step, one row per
//! path (and one for what the paths share), read back with one download.

use super::super::gpu::Gpu;
use super::super::kernels::{AnyPtr, CountNonfiniteArgs, DevPtr};
use crate::engine::finite::{FiniteCounts, FiniteStage};
use anyhow::Result;
use cudarc::driver::CudaSlice;

const STAGES: usize = FiniteStage::ALL.len();

/// A buffer to count: f32 or bf16 values.
#[derive(Clone, Copy, Debug)]
pub enum Values {
    F32(DevPtr<f32>, usize),
    Bf16(DevPtr<u16>, usize),
}

/// Per-row, per-stage counters on the device.
pub struct FiniteCounters {
    counts: CudaSlice<u64>,
    rows: usize,
}

impl FiniteCounters {
    /// `rows` rows of counters, zeroed.
    pub fn new(gpu: &Gpu, rows: usize) -> Result<FiniteCounters> {
        Ok(FiniteCounters {
            counts: gpu.alloc(rows * STAGES, "non-finite counters")?,
            rows,
        })
    }

    /// Zeroes the first `rows` rows, growing the buffer where it holds fewer.
    pub fn reset(&mut self, gpu: &Gpu, rows: usize) -> Result<()> {
        if rows > self.rows {
            *self = FiniteCounters::new(gpu, rows)?;
            return Ok(());
        }
        // Two 32-bit words per counter.
        gpu.fill(gpu.ptr(&self.counts).cast::<u32>(), 2 * rows * STAGES, 0)
    }

    /// Adds the non-finite values of `values` to `stage` of row `row`.
    pub fn count(&self, gpu: &Gpu, row: usize, stage: FiniteStage, values: Values) -> Result<()> {
        let (data, bf16, n): (AnyPtr, bool, usize) = match values {
            Values::F32(p, n) => (p.cast(), false, n),
            Values::Bf16(p, n) => (p.cast(), true, n),
        };
        if n == 0 {
            return Ok(());
        }
        debug_assert!(row < self.rows, "non-finite row {row} of {}", self.rows);
        gpu.launch(CountNonfiniteArgs {
            data,
            bf16,
            n: n as u64,
            counts: gpu.ptr(&self.counts),
            slot: (row * STAGES + stage as usize) as u32,
        })
    }

    /// The first `rows` rows, in one download.
    pub fn read(&self, gpu: &Gpu, rows: usize) -> Result<Vec<FiniteCounts>> {
        let raw = gpu.download(&self.counts, rows * STAGES, "non-finite counts")?;
        Ok(raw
            .chunks(STAGES)
            .map(|row| {
                let mut c = FiniteCounts::default();
                for (&stage, &n) in FiniteStage::ALL.iter().zip(row) {
                    c.add(stage, n);
                }
                c
            })
            .collect())
    }
}
