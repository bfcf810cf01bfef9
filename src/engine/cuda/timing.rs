//! Device-time measurements shared by `bench` and the benches: the median of event-timed runs,
//! and the copy bandwidth every "fraction of the floor" figure is taken against.

use super::gpu::{cuda_err, Gpu};
use super::kernels::CopyArgs;
use crate::engine::stats::gb_per_s;
use anyhow::{anyhow, Result};

/// Times `f` (which enqueues work) with an event pair, `repeats` times after a warm-up; the
/// median in µs.
pub fn median_us(gpu: &Gpu, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.sync("warm-up")?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let a = gpu.event()?;
        f()?;
        let b = gpu.event()?;
        gpu.sync("timed work")?;
        let ms = a
            .elapsed_ms(&b)
            .map_err(cuda_err("reading an event time"))?;
        times.push(ms as f64 * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Device-to-device copy of 1 GiB by a plain kernel: the bandwidth ceiling in GB/s, read + write
/// bytes.
pub fn copy_bandwidth(gpu: &Gpu, repeats: usize) -> Result<f64> {
    let n = 1usize << 30;
    let src = gpu.alloc::<u8>(n, "copy source")?;
    let dst = gpu.alloc::<u8>(n, "copy destination")?;
    let copy = CopyArgs {
        src: gpu.ptr(&src).cast(),
        dst: gpu.ptr(&dst).cast(),
        n: (n / 16) as u64,
    };
    let us = median_us(gpu, repeats, || gpu.launch(copy))?;
    gb_per_s(2 * n as u64, us).ok_or_else(|| anyhow!("the copy kernel took no measurable time"))
}
