//! The layer on the device, by role:
//! - `device`: the weights in device memory (generated there or uploaded) and the weight source
//!   the f64 reference reads back;
//! - `workspace`: the step's buffers, grouped by the stage that writes them, and the GEMM splits;
//! - `gemm`: how a grouped GEMM's arguments are formed and K-split;
//! - `stages`: one path's launch sequence, a method per stage (where a new stage goes);
//! - `readback`: what comes back to the host after a path;
//! - `finite`: non-finite values counted on the device, per stage as the CPU backend counts them;
//! - `fp8`: the FP8 expert weights (`--experts fp8`), their buffers and the FP8 expert stages;
//! - `backend`: `CudaBackend`, the engine's `Backend`, which runs each path as the CPU backend
//!   runs its stages (src/engine/cpu is the reference).

mod backend;
mod device;
pub mod finite;
pub mod fp8;
pub mod gemm;
pub mod readback;
pub mod stages;
pub mod workspace;

pub use backend::{CudaBackend, CLEAN_EVERY};
pub use device::{check_shape, DeviceLayer, DeviceWeights, SIZE_MULTIPLE};

#[cfg(test)]
mod tests {
    use super::workspace::{expert_splits, gate_splits};
    use super::*;
    use crate::engine::config::MoeConfig;
    use crate::engine::cuda::kernels::{Tile, GEMM_BN};

    #[test]
    fn gate_splits_divide_the_k_steps_and_fill_the_device() {
        for (t, e, h) in [
            (1, 256, 7168),
            (64, 384, 7168),
            (2048, 256, 7168),
            (40000, 8, 4096),
            (1, 8, 64),
        ] {
            let s = gate_splits(132, t, e, h);
            assert!(s >= 1 && (h / 64) % s == 0, "{t} {e} {h}: {s}");
            let tile = Tile::for_rows(t, 1);
            let blocks = tile.max_tiles(t, 1) * e.div_ceil(GEMM_BN);
            if blocks >= 264 {
                assert_eq!(s, 1);
            }
        }
        assert!(gate_splits(132, 1, 256, 7168) > 16);
        // DeepSeek-V3 at T = 1: 9 experts × 32 column tiles would leave a 24-block last wave.
        let s = expert_splits(132, 9, 257, 4096, 7168);
        assert!(s >= 2 && 112 % s == 0, "{s}");
        assert_eq!(expert_splits(132, 4096 * 9, 257, 4096, 7168), 1);
        // The last wave as full as the divisors allow: 288 tiles × 8 splits = 8.7 waves of 264
        // block slots (4 splits would leave a fifth wave 36% full).
        assert_eq!(s, 8);
        let waves = (288 * s) as f64 / 264.0;
        assert!(waves / waves.ceil() > 0.95, "{waves}");
    }

    #[test]
    fn unsupported_shapes_name_the_limit() {
        let mut cfg = MoeConfig::preset("deepseek-v3").unwrap();
        cfg.hidden_size = 7100;
        let err = check_shape(&cfg).unwrap_err().to_string();
        assert!(err.contains("hidden_size") && err.contains("64"), "{err}");
        let mut cfg = MoeConfig::preset("qwen3-next-80b-a3b").unwrap();
        cfg.n_routed_experts = 640;
        let err = check_shape(&cfg).unwrap_err().to_string();
        assert!(err.contains("512"), "{err}");
        let mut cfg = MoeConfig::preset("deepseek-v3").unwrap();
        cfg.num_experts_per_tok = 20;
        cfg.topk_group = 8;
        let err = check_shape(&cfg).unwrap_err().to_string();
        assert!(err.contains("top_k <= 16"), "{err}");
    }
}
