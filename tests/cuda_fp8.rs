//! The FP8 kernels (kernels/fp8.cu) against the CPU side (engine::weights::fp8): activation
//! quantization bit for bit, the grouped GEMM against the f64 reference of the dequantized math
//! (equal up to fp32 accumulation order; with `Fp8Sum::TensorCore` on Hopper's wgmma, up to the
//! FP8 tensor cores' accumulator within each K block). Every test skips, and says so, without a GPU.

mod gpu_support;
use gpu_support::gpu;

use moescope::engine::cuda::fp8::{self as dfp8, Fp8Gemm, Fp8Sum, Tile};
use moescope::engine::cuda::kernels::GemmRows;
use moescope::engine::weights::fp8::{gemm_reference, BlockScaled, TokenGroups};
use moescope::engine::weights::round_bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// bf16-exact values of varied magnitude per 128-group, one group all zero.
fn activations(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let (r, g) = (i / cols, (i % cols) / 128);
            if r == 1 && g == 0 {
                return 0.0;
            }
            let amp = 10f32.powi(((r + 3 * g) % 5) as i32 - 2);
            round_bf16(rng.random_range(-amp..amp))
        })
        .collect()
}

fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect()
}

#[test]
fn activation_quantization_matches_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    let (rows, cols) = (37, 384);
    let x = activations(&mut rng, rows, cols);
    let want = TokenGroups::quantize(&x, rows, cols);
    let d_x = gpu.upload(&bf16_bits(&x), "x").unwrap();
    let d_q = gpu.alloc::<u8>(rows * cols, "q").unwrap();
    let d_s = gpu.alloc::<f32>(rows * cols / 128, "s").unwrap();
    dfp8::quant_rows(
        &gpu,
        gpu.ptr(&d_x),
        rows,
        cols,
        gpu.ptr(&d_q),
        gpu.ptr(&d_s),
    )
    .unwrap();
    let q = gpu.download(&d_q, rows * cols, "q").unwrap();
    let s = gpu.download(&d_s, rows * cols / 128, "s").unwrap();
    assert_eq!(s, want.scales);
    let diff = q.iter().zip(&want.data).filter(|(a, b)| a != b).count();
    assert_eq!(diff, 0, "{diff} of {} codes differ", q.len());
}

#[test]
fn silu_mul_quantization_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, inter) = (5, 256);
    let h: Vec<f32> = (0..rows * 2 * inter)
        .map(|_| rng.random_range(-4.0f32..4.0))
        .collect();
    let act: Vec<f32> = (0..rows * inter)
        .map(|i| {
            let (r, j) = (i / inter, i % inter);
            let (g, u) = (h[r * 2 * inter + j], h[r * 2 * inter + inter + j]);
            round_bf16(g / (1.0 + (-g).exp()) * u)
        })
        .collect();
    let want = TokenGroups::quantize(&act, rows, inter);
    let d_h = gpu.upload(&h, "h").unwrap();
    let d_q = gpu.alloc::<u8>(rows * inter, "q").unwrap();
    let d_s = gpu.alloc::<f32>(rows * inter / 128, "s").unwrap();
    dfp8::silu_mul_quant(
        &gpu,
        gpu.ptr(&d_h),
        rows,
        inter,
        gpu.ptr(&d_q),
        gpu.ptr(&d_s),
    )
    .unwrap();
    let got = TokenGroups {
        rows,
        cols: inter,
        data: gpu.download(&d_q, rows * inter, "q").unwrap(),
        scales: gpu.download(&d_s, rows * inter / 128, "s").unwrap(),
    };
    // expf on the device and exp on the host may differ in the last bit: one code at most.
    let (a, b) = (got.dequantize(), want.dequantize());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let s = want.scale(i / inter, i % inter);
        assert!(
            (x - y).abs() <= y.abs() / 8.0 + s / 256.0,
            "{i}: {x} vs {y}"
        );
    }
}

/// Random block-scaled weights [n × k] with different magnitudes per block.
fn weights(rng: &mut StdRng, n: usize, k: usize) -> BlockScaled {
    let v: Vec<f32> = (0..n * k)
        .map(|i| {
            let amp = 0.01 * (1 + (i / k / 128 + 2 * (i % k / 128)) % 4) as f32;
            rng.random_range(-amp..amp)
        })
        .collect();
    BlockScaled::quantize(&v, n, k)
}

/// Groups 0..3 from one weight stack, group 3 from another (the shared slot's place); group 2
/// empty; rows gathered from tokens (a_mode 1), as the expert GEMMs run.
#[test]
fn grouped_gemm_matches_the_dequantized_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(3);
    let (t, spt, n, k, groups) = (100usize, 2usize, 256usize, 384usize, 4usize);
    let x = activations(&mut rng, t, k);
    let qa = TokenGroups::quantize(&x, t, k);
    let bs: Vec<BlockScaled> = (0..groups).map(|_| weights(&mut rng, n, k)).collect();
    // Slot ids per (token, slot), never group 2; stable order by group, as moe_align leaves it.
    let ids: Vec<usize> = (0..t * spt)
        .map(|_| [0, 1, 3][rng.random_range(0..3)])
        .collect();
    let mut order: Vec<i32> = (0..(t * spt) as i32).collect();
    order.sort_by_key(|&a| ids[a as usize]);
    let mut offsets = vec![0i32; groups + 1];
    for g in 0..groups {
        offsets[g + 1] = offsets[g] + ids.iter().filter(|&&i| i == g).count() as i32;
    }
    let rows = t * spt;
    let refs: Vec<Vec<f64>> = bs.iter().map(|b| gemm_reference(&qa, b)).collect();

    let d_a = gpu.upload(&qa.data, "A").unwrap();
    let d_sa = gpu.upload(&qa.scales, "A scales").unwrap();
    let first = dfp8::DeviceStack::upload(&gpu, &[&bs[0], &bs[1], &bs[2]], "B0").unwrap();
    let last = dfp8::DeviceStack::upload(&gpu, &[&bs[3]], "B1").unwrap();
    let d_order = gpu.upload(&order, "order").unwrap();
    let d_off = gpu.upload(&offsets, "offsets").unwrap();
    let d_tiles = gpu.alloc::<i32>(groups + 1, "tiles").unwrap();
    let d_c = gpu.alloc::<f32>(rows * n, "C").unwrap();
    let d_parts = gpu.alloc::<f32>(3 * rows * n, "partials").unwrap();
    for tile in Tile::ALL {
        dfp8::tile_scan(&gpu, gpu.ptr(&d_off), groups, tile, gpu.ptr(&d_tiles)).unwrap();
        let tiles = gpu.download(&d_tiles, groups + 1, "tiles").unwrap();
        let bm = tile.rows() as i32;
        let want: i32 = (0..groups)
            .map(|g| (offsets[g + 1] - offsets[g] + bm - 1) / bm)
            .sum();
        assert_eq!(tiles[groups], want, "{tile:?} tile count");
        let sums = match tile {
            Tile::M16 | Tile::M32 => &[Fp8Sum::Fp32][..], // one kernel either way
            Tile::M64 | Tile::M128 => &[Fp8Sum::Fp32, Fp8Sum::TensorCore][..],
        };
        for (&sum, splits) in sums.iter().flat_map(|s| [(s, 1), (s, 3)]) {
            gpu.fill(gpu.ptr(&d_c), rows * n, 0x7fc0_0000).unwrap();
            let g = Fp8Gemm {
                a: gpu.ptr(&d_a),
                a_scales: gpu.ptr(&d_sa),
                a_mode: GemmRows::Mapped,
                a_map: gpu.ptr(&d_order),
                a_div: spt as i32,
                c: gpu.ptr(&d_c),
                offsets: gpu.ptr(&d_off),
                tiles: gpu.ptr(&d_tiles),
                groups,
                n,
                k,
                rows,
                tile,
                sum,
                k_splits: 1,
                c_split: 0,
                ..Fp8Gemm::blank(&gpu, &first)
            };
            let g = Fp8Gemm {
                b1: gpu.ptr(&last.data),
                bs1: gpu.ptr(&last.scales),
                ..g
            };
            dfp8::gemm_split(&gpu, &g, splits, gpu.ptr(&d_parts)).unwrap();
            let c = gpu.download(&d_c, rows * n, "C").unwrap();
            check(
                &c,
                &refs,
                (&order, &offsets, spt, n),
                Bound::of(tile, sum, &gpu.arch),
                &format!("{tile:?}, {sum:?}, {splits} splits"),
            );
        }
    }
}

/// How far a tile's output may be from the f64 reference: rel-L2, and the largest error as a
/// share of the largest |reference|.
struct Bound {
    rel_l2: f64,
    max_err: f64,
}

impl Bound {
    /// mma.sync accumulates in fp32 (measured rel-L2 6e-8). Hopper's wgmma sums each 128-deep K
    /// block in the FP8 tensor cores' narrower accumulator before the kernel promotes it to fp32
    /// (measured 1.1e-4, run G32): 4x that, and the 1e-3 for the largest error.
    fn of(tile: Tile, sum: Fp8Sum, arch: &str) -> Bound {
        match sum == Fp8Sum::TensorCore && tile.on_wgmma(arch) {
            false => Bound {
                rel_l2: 1e-5,
                max_err: 1e-4,
            },
            true => Bound {
                rel_l2: 5e-4,
                max_err: 1e-3,
            },
        }
    }
}

/// Every element written and equal to the reference up to the tile's accumulation; `rows` are
/// the assignment order, group offsets, slots per token and columns.
fn check(
    c: &[f32],
    refs: &[Vec<f64>],
    rows: (&[i32], &[i32], usize, usize),
    bound: Bound,
    what: &str,
) {
    let (order, offsets, spt, n) = rows;
    let (mut err2, mut ref2, mut max_ref, mut max_err) = (0f64, 0f64, 0f64, 0f64);
    for g in 0..offsets.len() - 1 {
        for p in offsets[g] as usize..offsets[g + 1] as usize {
            let token = order[p] as usize / spt;
            for j in 0..n {
                let (got, want) = (f64::from(c[p * n + j]), refs[g][token * n + j]);
                assert!(got.is_finite(), "{what}: C[{p}, {j}] not written ({got})");
                err2 += (got - want).powi(2);
                ref2 += want * want;
                max_ref = max_ref.max(want.abs());
                max_err = max_err.max((got - want).abs());
            }
        }
    }
    let rel = (err2 / ref2).sqrt();
    println!("{what}: rel-L2 {rel:.2e}, max err {max_err:.2e} of max |ref| {max_ref:.2e}");
    assert!(rel <= bound.rel_l2, "{what}: rel-L2 {rel:.3e}");
    assert!(
        max_err <= bound.max_err * max_ref,
        "{what}: max err {max_err:.3e}"
    );
}

/// The tiny FP8 checkpoint's experts, uploaded as stored (no re-quantization), with the shared
/// expert as slot E (path B), on routed tokens: against the f64 math of the FP8 format (the
/// kernels' error), and against f64 with unquantized activations through the same weights (the
/// activations' share of the format's error, printed).
#[test]
fn tiny_fp8_checkpoint_experts_run_as_stored() {
    use moescope::engine::weights::checkpoint::open_layer;
    use moescope::engine::weights::fp8::Fp8Mlp;
    use moescope::engine::weights::WeightSource;
    let Some(gpu) = gpu() else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fp8-tiny");
    let layer = open_layer(&dir, None, 1).unwrap();
    let cfg = layer.config().clone();
    let (e, h, i) = (
        cfg.n_routed_experts,
        cfg.hidden_size,
        cfg.moe_intermediate_size,
    );
    let routed: Vec<Fp8Mlp> = (0..e)
        .map(|x| layer.expert_fp8(x).unwrap().unwrap())
        .collect();
    let shared = layer.shared_slot_fp8(0).unwrap().unwrap();
    let mlps: Vec<&Fp8Mlp> = routed.iter().chain([&shared]).collect();
    let w = dfp8::Fp8Experts {
        routed: dfp8::Fp8Slots::upload(&gpu, &routed, "routed").unwrap(),
        shared: Some(
            dfp8::Fp8Slots::upload(&gpu, std::slice::from_ref(&shared), "shared").unwrap(),
        ),
    };
    let (t, spt) = (16usize, 3usize);
    let mut rng = StdRng::seed_from_u64(4);
    let x: Vec<f32> = (0..t * h)
        .map(|_| round_bf16(rng.random_range(-2.0..2.0)))
        .collect();
    let mut ids = Vec::new();
    for _ in 0..t {
        let a = rng.random_range(0..e);
        ids.extend([a, (a + 1 + rng.random_range(0..e - 1)) % e, e]);
    }
    let mut order: Vec<i32> = (0..(t * spt) as i32).collect();
    order.sort_by_key(|&a| ids[a as usize]);
    let mut offsets = vec![0i32; e + 2];
    for g in 0..=e {
        offsets[g + 1] = offsets[g] + ids.iter().filter(|&&s| s == g).count() as i32;
    }
    let b = dfp8::ExpertBuffers::new(&gpu, &w, t, spt).unwrap();
    let d_x = gpu.upload(&bf16_bits(&x), "x").unwrap();
    let d_order = gpu.upload(&order, "order").unwrap();
    let d_off = gpu.upload(&offsets, "offsets").unwrap();
    let d_eo = gpu.alloc::<f32>(t * spt * h, "eo").unwrap();
    gpu.fill(gpu.ptr(&d_eo), t * spt * h, 0x7fc0_0000).unwrap();
    let io = dfp8::ExpertInputs {
        x: gpu.ptr(&d_x),
        rows_mode: GemmRows::Mapped,
        order: gpu.ptr(&d_order),
        offsets: gpu.ptr(&d_off),
        spt,
        eo: gpu.ptr(&d_eo),
    };
    dfp8::run_experts(&gpu, &w, &b, &io).unwrap();
    let eo = gpu.download(&d_eo, t * spt * h, "eo").unwrap();

    let xq = TokenGroups::quantize(&x, t, h);
    let (mut kernel, mut format, mut norm) = (0f64, 0f64, 0f64);
    for (p, &asg) in order.iter().enumerate() {
        let (token, slot) = (asg as usize / spt, ids[asg as usize]);
        let m = mlps[slot];
        // The FP8 math in f64: quantized tokens, dequantized weights, quantized activations.
        let row = TokenGroups {
            rows: 1,
            cols: h,
            data: xq.data[token * h..(token + 1) * h].to_vec(),
            scales: xq.scales[token * 2..token * 2 + 2].to_vec(),
        };
        let (g, u) = (gemm_reference(&row, &m.gate), gemm_reference(&row, &m.up));
        let act: Vec<f32> = (0..i)
            .map(|j| {
                let (g, u) = (g[j] as f32, u[j] as f32);
                round_bf16(g / (1.0 + (-g).exp()) * u)
            })
            .collect();
        let want = gemm_reference(&TokenGroups::quantize(&act, 1, i), &m.down);
        // Unquantized activations through the dequantized weights, in f64.
        let d = m.dequantize();
        let xr = &x[token * h..(token + 1) * h];
        let act64: Vec<f64> = (0..i)
            .map(|j| {
                let dot = |w: &[f32]| -> f64 {
                    (0..h)
                        .map(|k| f64::from(w[j * h + k]) * f64::from(xr[k]))
                        .sum()
                };
                let (g, u) = (dot(&d.gate), dot(&d.up));
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        for n in 0..h {
            let got = f64::from(eo[p * h + n]);
            assert!(got.is_finite(), "eo[{p}, {n}] not written");
            let exact: f64 = (0..i)
                .map(|j| f64::from(d.down[n * i + j]) * act64[j])
                .sum();
            kernel += (got - want[n]).powi(2);
            format += (got - exact).powi(2);
            norm += exact * exact;
        }
    }
    let (kernel, format) = ((kernel / norm).sqrt(), (format / norm).sqrt());
    println!("tiny FP8 checkpoint, experts: kernel rel-L2 {kernel:.2e}, with activation quantization {format:.2e}");
    assert!(kernel <= 1e-3, "kernel error {kernel:.3e}");
    assert!(format <= 0.1, "activation quantization error {format:.3e}");
}
