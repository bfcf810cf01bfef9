//! FP8 grouped GEMM on the DeepSeek-V3 layer (256 routed experts, top 8, the shared expert fused
//! as slot 256: every token in 9 groups; up [4096 × 7168], down [7168 × 2048], 128×128 block
//! scales): device time per GEMM, against the FP8 weight-streaming floor (active groups' codes
//! and scales over the copy bandwidth measured in the same run) and against a dense FP8 rate
//! (one 8192 × 4096 × 7168 GEMM of the same kernel, same run).
//!
//! `cargo bench --bench fp8_gemm [-- T ...]` (default T = 1 64 512 2048 16384). Prints a notice
//! and exits 0 without a GPU.

use anyhow::Result;
use cudarc::driver::CudaSlice;
use moescope::engine::cuda;
use moescope::engine::cuda::fp8::{self as dfp8, DeviceStack, Fp8Gemm, Fp8Sum, Tile};
use moescope::engine::cuda::gpu::Gpu;
use moescope::engine::cuda::kernels::GemmRows;
use moescope::engine::cuda::timing;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;

const E: usize = 256;
const TOPK: usize = 8;
const SPT: usize = TOPK + 1;
const H: usize = 7168;
const I: usize = 2048;
const REPEATS: usize = 20;

fn main() -> Result<()> {
    if let Err(why) = cuda::probe() {
        println!("fp8_gemm: skipped, no CUDA: {why}");
        return Ok(());
    }
    let tokens: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tokens = if tokens.is_empty() {
        vec![1, 64, 512, 2048, 16384]
    } else {
        tokens
    };
    let gpu = Gpu::open()?;
    println!("device: {}", gpu.describe());
    let copy_gbs = timing::copy_bandwidth(&gpu, REPEATS)?;
    println!("copy bandwidth: {copy_gbs:.0} GB/s (read + write)");
    let fp32 = dfp8::dense_tflops(&gpu, REPEATS, Fp8Sum::Fp32)?;
    let dense = dfp8::dense_tflops(&gpu, REPEATS, Fp8Sum::TensorCore)?;
    println!("dense FP8 (this kernel, 8192 x 4096 x 7168): {dense:.0} TFLOP/s on the tensor cores' sums, {fp32:.0} summed in fp32");
    let w13 = dfp8::random_stack(&gpu, E + 1, 2 * I, H, 1)?;
    let w2 = dfp8::random_stack(&gpu, E + 1, H, I, 2)?;
    println!(
        "{:>6} {:>5} {:>4} {:>4} {:>9} {:>9} {:>7} {:>9} {:>8}",
        "T", "gemm", "tile", "splt", "us", "floor us", "% floor", "TFLOP/s", "% dense"
    );
    for &t in &tokens {
        bench_tokens(&gpu, &w13, &w2, t, copy_gbs, dense)?;
    }
    Ok(())
}

/// Median device time of `f` in µs over REPEATS event-timed calls, after a warm-up.
fn time_us(gpu: &Gpu, f: impl FnMut() -> Result<()>) -> Result<f64> {
    timing::median_us(gpu, REPEATS, f)
}

/// Routes T tokens to 8 distinct random experts and the shared slot 256; returns the order
/// (assignment index per permuted row, grouped by slot) and the group offsets.
fn route(t: usize, seed: u64) -> (Vec<i32>, Vec<i32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::with_capacity(t * SPT);
    for _ in 0..t {
        ids.extend(sample(&mut rng, E, TOPK));
        ids.push(E);
    }
    let mut order: Vec<i32> = (0..ids.len() as i32).collect();
    order.sort_by_key(|&a| ids[a as usize]);
    let mut counts = vec![0i32; E + 1];
    ids.iter().for_each(|&i| counts[i] += 1);
    let mut offsets = vec![0i32; E + 2];
    for g in 0..=E {
        offsets[g + 1] = offsets[g] + counts[g];
    }
    (order, offsets)
}

fn bench_tokens(
    gpu: &Gpu,
    w13: &DeviceStack,
    w2: &DeviceStack,
    t: usize,
    copy_gbs: f64,
    dense: f64,
) -> Result<()> {
    let rows = t * SPT;
    let groups = E + 1;
    let (order, offsets) = route(t, t as u64);
    let active = (0..groups).filter(|&g| offsets[g + 1] > offsets[g]).count();
    let x = dfp8::random_bytes(gpu, t * H, 5)?;
    let sx = gpu.alloc::<f32>(t * H / 128, "x scales")?;
    gpu.fill(gpu.ptr(&sx), sx.len(), 1f32.to_bits())?;
    let act = dfp8::random_bytes(gpu, rows * I, 6)?;
    let sact = gpu.alloc::<f32>(rows * I / 128, "act scales")?;
    gpu.fill(gpu.ptr(&sact), sact.len(), 1f32.to_bits())?;
    let d_order = gpu.upload(&order, "order")?;
    let d_off = gpu.upload(&offsets, "offsets")?;
    let h1 = gpu.alloc::<f32>(rows * 2 * I, "h1")?;
    let eo = gpu.alloc::<f32>(rows * H, "eo")?;
    // As the layer runs them (fp8::ExpertBuffers): up summed in fp32, down on the tensor cores.
    let plan = |sum: Fp8Sum, n: usize, k: usize| -> Result<(Tile, usize, CudaSlice<i32>)> {
        let tile = Tile::for_fp8_rows(rows, groups, sum);
        let tiles = gpu.alloc::<i32>(groups + 1, "tiles")?;
        dfp8::tile_scan(gpu, gpu.ptr(&d_off), groups, tile, gpu.ptr(&tiles))?;
        let splits = dfp8::k_splits(gpu.sms, tile, tile.max_tiles(rows, groups), n, k);
        Ok((tile, splits, tiles))
    };
    let (up_tile, up_splits, up_tiles) = plan(Fp8Sum::Fp32, 2 * I, H)?;
    let (down_tile, down_splits, down_tiles) = plan(Fp8Sum::TensorCore, H, I)?;
    let part = |splits: usize, n: usize| if splits > 1 { splits * rows * n } else { 0 };
    let parts_len = part(up_splits, 2 * I).max(part(down_splits, H));
    let parts = gpu.alloc::<f32>(parts_len, "partials")?;
    let common = |w: &DeviceStack, tile: Tile, tiles: &CudaSlice<i32>| Fp8Gemm {
        a_map: gpu.ptr(&d_order),
        a_div: SPT as i32,
        offsets: gpu.ptr(&d_off),
        tiles: gpu.ptr(tiles),
        groups,
        rows,
        tile,
        ..Fp8Gemm::blank(gpu, w)
    };
    let up = Fp8Gemm {
        a: gpu.ptr(&x),
        a_scales: gpu.ptr(&sx),
        a_mode: GemmRows::Mapped,
        c: gpu.ptr(&h1),
        ..common(w13, up_tile, &up_tiles)
    };
    let down = Fp8Gemm {
        a: gpu.ptr(&act),
        a_scales: gpu.ptr(&sact),
        a_mode: GemmRows::Direct,
        c: gpu.ptr(&eo),
        sum: Fp8Sum::TensorCore,
        ..common(w2, down_tile, &down_tiles)
    };
    for (name, g, splits, w) in [("up", up, up_splits, w13), ("down", down, down_splits, w2)] {
        let tile = g.tile;
        let us = time_us(gpu, || dfp8::gemm_split(gpu, &g, splits, gpu.ptr(&parts)))?;
        let bytes = active * w.bytes_per_matrix();
        let floor = bytes as f64 / (copy_gbs * 1e3);
        let tflops = 2.0 * (rows * g.n * g.k) as f64 / us / 1e6;
        println!(
            "{t:>6} {name:>5} {:>4} {splits:>4} {us:>9.1} {floor:>9.1} {:>6.1}% {tflops:>9.0} {:>7.1}%",
            tile.rows(),
            100.0 * floor / us,
            100.0 * tflops / dense
        );
    }
    Ok(())
}
