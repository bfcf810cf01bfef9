//! Seeded synthetic weights and hidden states from a counter-based hash: any element of any
//! tensor is a pure function of (seed, tensor id, index). The CUDA backend's init kernel
//! (kernels/init.cu) computes the same function, so a device-initialized layer and the host's
//! reference hold bit-identical bf16 values without copying gigabytes.

use super::{round_bf16, ExpertWeights, WeightSource};
use crate::engine::config::MoeConfig;

/// SplitMix64 finalizer.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1): 24 hash bits, exact in f32 on every device.
pub fn uniform(seed: u64, tensor: u64, index: u64) -> f32 {
    let h = mix64(seed ^ mix64(tensor ^ mix64(index)));
    ((h >> 40) as f32) * (1.0 / 8_388_608.0) - 1.0
}

/// Approximately standard normal (Irwin–Hall sum of four uniforms, scaled to unit variance):
/// integer arithmetic only, so every device computes the same value.
pub fn normal(seed: u64, tensor: u64, index: u64) -> f32 {
    let i = index.wrapping_mul(4);
    let s = uniform(seed, tensor, i)
        + uniform(seed, tensor, i + 1)
        + uniform(seed, tensor, i + 2)
        + uniform(seed, tensor, i + 3);
    s * 0.866_025_4
}

/// Tensor ids of the hash. Routed expert e uses 16 + 4e (+0 gate, +1 up, +2 down); shared
/// slot j uses the routed ids after E.
pub mod tensor_id {
    pub const ROUTER_GATE: u64 = 1;
    pub const ROUTER_BIAS: u64 = 2;
    pub const SKEW_RANK: u64 = 3;
    pub const SHARED_GATE: u64 = 4;
    /// Hidden states of step s use HIDDEN_BASE + s.
    pub const HIDDEN_BASE: u64 = 1 << 40;
    pub fn expert(slot: usize, which: u64) -> u64 {
        16 + 4 * slot as u64 + which
    }
}

/// Amplitude of a uniform init with unit-variance outputs for `fan_in` inputs.
pub fn amplitude(fan_in: usize) -> f32 {
    (3.0 / fan_in as f32).sqrt()
}

/// A tensor of `len` elements, uniform in ±`amp`, rounded to bf16.
pub fn tensor(seed: u64, id: u64, len: usize, amp: f32) -> Vec<f32> {
    (0..len as u64)
        .map(|i| round_bf16(uniform(seed, id, i) * amp))
        .collect()
}

/// The hidden state of token `t` of step `step`, [H], rounded to bf16.
pub fn hidden_row(seed: u64, step: u64, t: usize, hidden: usize) -> Vec<f32> {
    let base = (t * hidden) as u64;
    (0..hidden as u64)
        .map(|h| round_bf16(normal(seed, tensor_id::HIDDEN_BASE + step, base + h)))
        .collect()
}

/// Synthetic weights for a config.
pub struct SyntheticWeights {
    pub cfg: MoeConfig,
    pub seed: u64,
    /// Routing skew: expert of hotness rank r gets logit offset −skew·ln(1+r).
    pub skew: f32,
}

impl SyntheticWeights {
    pub fn new(cfg: MoeConfig, seed: u64, skew: f32) -> Self {
        SyntheticWeights { cfg, seed, skew }
    }

    fn mlp(&self, slot: usize, intermediate: usize) -> ExpertWeights {
        let h = self.cfg.hidden_size;
        let a_in = amplitude(h);
        let a_down = amplitude(intermediate);
        ExpertWeights {
            hidden: h,
            intermediate,
            gate: tensor(
                self.seed,
                tensor_id::expert(slot, 0),
                intermediate * h,
                a_in,
            ),
            up: tensor(
                self.seed,
                tensor_id::expert(slot, 1),
                intermediate * h,
                a_in,
            ),
            down: tensor(
                self.seed,
                tensor_id::expert(slot, 2),
                h * intermediate,
                a_down,
            ),
        }
    }
}

impl WeightSource for SyntheticWeights {
    fn config(&self) -> &MoeConfig {
        &self.cfg
    }
    fn router_gate(&self) -> anyhow::Result<Vec<f32>> {
        let (e, h) = (self.cfg.n_routed_experts, self.cfg.hidden_size);
        Ok(tensor(
            self.seed,
            tensor_id::ROUTER_GATE,
            e * h,
            amplitude(h),
        ))
    }
    fn router_bias(&self) -> anyhow::Result<Option<Vec<f32>>> {
        if !self.cfg.has_bias {
            return Ok(None);
        }
        let e = self.cfg.n_routed_experts as u64;
        Ok(Some(
            (0..e)
                .map(|i| uniform(self.seed, tensor_id::ROUTER_BIAS, i) * 0.05)
                .collect(),
        ))
    }
    fn logit_offset(&self) -> anyhow::Result<Vec<f32>> {
        let e = self.cfg.n_routed_experts;
        if self.skew == 0.0 {
            return Ok(vec![0.0; e]);
        }
        // Hotness rank: experts ordered by a hash, so hot experts spread over the groups.
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by_key(|&i| mix64(self.seed ^ mix64(tensor_id::SKEW_RANK ^ mix64(i as u64))));
        let mut offset = vec![0.0; e];
        for (rank, &expert) in order.iter().enumerate() {
            offset[expert] = -self.skew * (1.0 + rank as f32).ln();
        }
        Ok(offset)
    }
    fn expert(&self, e: usize) -> anyhow::Result<ExpertWeights> {
        anyhow::ensure!(e < self.cfg.n_routed_experts, "expert {e} out of range");
        Ok(self.mlp(e, self.cfg.moe_intermediate_size))
    }
    fn shared_slot(&self, j: usize) -> anyhow::Result<ExpertWeights> {
        anyhow::ensure!(
            j < self.cfg.n_shared_experts,
            "shared slot {j} out of range"
        );
        Ok(self.mlp(
            self.cfg.n_routed_experts + j,
            self.cfg.shared_slot_intermediate(),
        ))
    }
    fn shared_gate(&self) -> anyhow::Result<Option<Vec<f32>>> {
        if !self.cfg.shared_expert_gate {
            return Ok(None);
        }
        let h = self.cfg.hidden_size;
        Ok(Some(tensor(
            self.seed,
            tensor_id::SHARED_GATE,
            h,
            amplitude(h),
        )))
    }
    fn synthetic(&self) -> Option<&SyntheticWeights> {
        Some(self)
    }
    fn describe(&self) -> String {
        if self.skew == 0.0 {
            format!("synthetic, seed {}", self.seed)
        } else {
            format!("synthetic, seed {}, skew {}", self.seed, self.skew)
        }
    }
}

/// A weight source that hides that it is synthetic, so the backend uploads it from the host as
/// it does a checkpoint's weights (checks the upload path against device generation).
pub struct HostOnly(pub SyntheticWeights);

impl WeightSource for HostOnly {
    fn config(&self) -> &MoeConfig {
        self.0.config()
    }
    fn router_gate(&self) -> anyhow::Result<Vec<f32>> {
        self.0.router_gate()
    }
    fn router_bias(&self) -> anyhow::Result<Option<Vec<f32>>> {
        self.0.router_bias()
    }
    fn logit_offset(&self) -> anyhow::Result<Vec<f32>> {
        self.0.logit_offset()
    }
    fn expert(&self, e: usize) -> anyhow::Result<super::ExpertWeights> {
        self.0.expert(e)
    }
    fn shared_slot(&self, j: usize) -> anyhow::Result<super::ExpertWeights> {
        self.0.shared_slot(j)
    }
    fn shared_gate(&self) -> anyhow::Result<Option<Vec<f32>>> {
        self.0.shared_gate()
    }
    fn describe(&self) -> String {
        format!("{} (uploaded)", self.0.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_seeded() {
        let xs: Vec<f32> = (0..10_000).map(|i| uniform(7, 1, i)).collect();
        assert!(xs.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert_ne!(uniform(7, 1, 0), uniform(8, 1, 0));
        assert_eq!(uniform(7, 1, 3), uniform(7, 1, 3));
    }

    #[test]
    fn normal_has_unit_variance() {
        let n = 20_000;
        let var = (0..n).map(|i| normal(1, 9, i).powi(2) as f64).sum::<f64>() / n as f64;
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn skew_makes_one_expert_hottest() {
        let cfg = MoeConfig::preset("deepseek-v3").unwrap();
        let w = SyntheticWeights::new(cfg, 3, 1.0);
        let off = w.logit_offset().unwrap();
        assert_eq!(off.iter().filter(|&&o| o == 0.0).count(), 1);
        assert!(off.iter().all(|&o| o <= 0.0));
    }
}
