//! The grouped bf16 GEMM (kernels/grouped_gemm.cuh with the bf16 MMA) against an f64 product of
//! the same bf16 values, for every tile height, with and without K splits, in each of the ways
//! the layer forms its rows (tokens gathered by the assignment order; direct rows with a column
//! bias, as the gate GEMM). Skips, and says so, without a GPU.

mod gpu_support;
use gpu_support::gpu;

use moescope::engine::cuda::kernels::{DevPtr, GemmRows, Tile};
use moescope::engine::cuda::layer::gemm::{self, Groups, Weights};
use moescope::engine::weights::round_bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn bf16_values(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|_| round_bf16(rng.random_range(-amp..amp)))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect()
}

/// Tile offsets of `tile`-row tiles over the groups' row offsets.
fn tile_offsets(offsets: &[i32], tile: Tile) -> Vec<i32> {
    let bm = tile.rows() as i32;
    let mut t = vec![0];
    for g in 0..offsets.len() - 1 {
        let rows = offsets[g + 1] - offsets[g];
        t.push(t[g] + (rows + bm - 1) / bm);
    }
    t
}

/// rel-L2 and max error of `got` against `want` (every element written).
fn check(got: &[f32], want: &[f64], what: &str) {
    let (mut e2, mut r2, mut max_err, mut max_ref) = (0f64, 0f64, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        assert!(g.is_finite(), "{what}: element {i} not written ({g})");
        e2 += (g - w).powi(2);
        r2 += w * w;
        max_err = max_err.max((g - w).abs());
        max_ref = max_ref.max(w.abs());
    }
    let rel = (e2 / r2).sqrt();
    println!("{what}: rel-L2 {rel:.2e}, max err {max_err:.2e} of max |ref| {max_ref:.2e}");
    assert!(rel <= 1e-5, "{what}: rel-L2 {rel:.3e}");
    assert!(max_err <= 1e-4 * max_ref, "{what}: max err {max_err:.3e}");
}

/// Groups 0..3 from one weight tensor, group 3 from another (the shared slot's place), group 2
/// empty, group 1 larger than a 64-row tile; rows are tokens gathered by the assignment order.
#[test]
fn grouped_bf16_gemm_matches_the_f64_product_for_both_tiles() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(11);
    let (t, spt, n, k, groups) = (90usize, 2usize, 320usize, 384usize, 4usize);
    let x = bf16_values(&mut rng, t * k, 1.0);
    let b: Vec<Vec<f32>> = (0..groups)
        .map(|_| bf16_values(&mut rng, n * k, 0.1))
        .collect();
    let ids: Vec<usize> = (0..t * spt)
        .map(|a| {
            if a % 3 == 0 {
                1
            } else {
                [0, 1, 3][rng.random_range(0..3)]
            }
        })
        .collect();
    let mut order: Vec<i32> = (0..(t * spt) as i32).collect();
    order.sort_by_key(|&a| ids[a as usize]);
    let mut offsets = vec![0i32; groups + 1];
    for g in 0..groups {
        offsets[g + 1] = offsets[g] + ids.iter().filter(|&&i| i == g).count() as i32;
    }
    assert!(
        offsets[2] - offsets[1] > 64,
        "group 1 spans several 64-row tiles"
    );
    let rows = t * spt;
    let mut want = vec![0f64; rows * n];
    for g in 0..groups {
        for p in offsets[g] as usize..offsets[g + 1] as usize {
            let token = order[p] as usize / spt;
            for j in 0..n {
                want[p * n + j] = (0..k)
                    .map(|q| f64::from(x[token * k + q]) * f64::from(b[g][j * k + q]))
                    .sum();
            }
        }
    }

    let d_x = gpu.upload(&bits(&x), "A").unwrap();
    let first: Vec<u16> = b[..3].iter().flat_map(|m| bits(m)).collect();
    let d_b0 = gpu.upload(&first, "B0").unwrap();
    let d_b1 = gpu.upload(&bits(&b[3]), "B1").unwrap();
    let d_order = gpu.upload(&order, "order").unwrap();
    let d_off = gpu.upload(&offsets, "offsets").unwrap();
    let d_c = gpu.alloc::<f32>(rows * n, "C").unwrap();
    let d_parts = gpu.alloc::<f32>(3 * rows * n, "partials").unwrap();
    let w = Weights {
        b0: gpu.ptr(&d_b0),
        b1: gpu.ptr(&d_b1),
        n_first: 3,
        stride: n * k,
    };
    for tile in Tile::ALL {
        let d_tiles = gpu.upload(&tile_offsets(&offsets, tile), "tiles").unwrap();
        let grp = Groups {
            offsets: gpu.ptr(&d_off),
            tiles: gpu.ptr(&d_tiles),
            count: groups,
            rows,
            tile,
        };
        for splits in [1, 3] {
            gpu.fill(gpu.ptr(&d_c), rows * n, 0x7fc0_0000).unwrap();
            let g = gemm::args(
                gpu.ptr(&d_x),
                GemmRows::Mapped,
                gpu.ptr(&d_order),
                spt,
                w,
                grp,
                gpu.ptr(&d_c),
                DevPtr::NULL,
                n,
                k,
            );
            gemm::run_split(&gpu, g, splits, rows, gpu.ptr(&d_parts)).unwrap();
            let c = gpu.download(&d_c, rows * n, "C").unwrap();
            check(&c, &want, &format!("{tile:?}, {splits} splits"));
        }
    }
}

/// One dense group of direct rows with a column bias (the gate GEMM's form), N not a multiple
/// of the 128-column tile; and a K the kernel cannot stage is refused, not run.
#[test]
fn dense_bf16_gemm_adds_the_bias_and_refuses_an_unstageable_k() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(12);
    let (m, n, k) = (37usize, 200usize, 512usize);
    let x = bf16_values(&mut rng, m * k, 1.0);
    let b = bf16_values(&mut rng, n * k, 0.1);
    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 3.0).collect();
    let want: Vec<f64> = (0..m * n)
        .map(|i| {
            let (r, j) = (i / n, i % n);
            f64::from(bias[j])
                + (0..k)
                    .map(|q| f64::from(x[r * k + q]) * f64::from(b[j * k + q]))
                    .sum::<f64>()
        })
        .collect();
    let d_x = gpu.upload(&bits(&x), "A").unwrap();
    let d_b = gpu.upload(&bits(&b), "B").unwrap();
    let d_bias = gpu.upload(&bias, "bias").unwrap();
    let d_off = gpu.upload(&[0i32, m as i32], "offsets").unwrap();
    let d_c = gpu.alloc::<f32>(m * n, "C").unwrap();
    let d_parts = gpu.alloc::<f32>(4 * m * n, "partials").unwrap();
    for tile in Tile::ALL {
        let d_tiles = gpu
            .upload(&tile_offsets(&[0, m as i32], tile), "tiles")
            .unwrap();
        let grp = Groups {
            offsets: gpu.ptr(&d_off),
            tiles: gpu.ptr(&d_tiles),
            count: 1,
            rows: m,
            tile,
        };
        let args = |k| {
            gemm::args(
                gpu.ptr(&d_x),
                GemmRows::Direct,
                DevPtr::NULL,
                1,
                Weights::one(gpu.ptr(&d_b), 1, 0),
                grp,
                gpu.ptr(&d_c),
                gpu.ptr(&d_bias),
                n,
                k,
            )
        };
        for splits in [1, 4] {
            gpu.fill(gpu.ptr(&d_c), m * n, 0x7fc0_0000).unwrap();
            gemm::run_split(&gpu, args(k), splits, m, gpu.ptr(&d_parts)).unwrap();
            let c = gpu.download(&d_c, m * n, "C").unwrap();
            check(&c, &want, &format!("dense {tile:?}, {splits} splits"));
        }
        let err = gemm::run_split(&gpu, args(k - 32), 1, m, gpu.ptr(&d_parts))
            .unwrap_err()
            .to_string();
        assert!(err.contains("multiple of 64"), "{err}");
        let err = gemm::run_split(&gpu, args(k), 3, m, gpu.ptr(&d_parts))
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not divide"), "{err}");
    }
}
