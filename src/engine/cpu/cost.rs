//! The CPU backend's per-expert cost model for EP straggler times: an expert MLP on n tokens
//! costs `fixed + per_token · n`, both measured once on this machine (expert 0, the fastest of
//! three runs at 1 and at `PROBE_TOKENS` tokens).

use super::mlp_rows;
use crate::engine::paths::ExpertFormat;
use crate::engine::weights::ExpertWeights;
use std::time::Instant;

const PROBE_TOKENS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpertCost {
    pub fixed_us: f64,
    pub per_token_us: f64,
}

impl ExpertCost {
    pub fn measure(w: &ExpertWeights) -> ExpertCost {
        let time = |n: usize| {
            let x: Vec<f32> = (0..n * w.hidden)
                .map(|i| ((i % 17) as f32 - 8.0) / 64.0)
                .collect();
            let rows: Vec<&[f32]> = x.chunks(w.hidden).collect();
            let mut out = vec![0.0f32; n * w.hidden];
            (0..3)
                .map(|_| {
                    let start = Instant::now();
                    mlp_rows(w, &rows, &mut out, ExpertFormat::Bf16);
                    start.elapsed().as_secs_f64() * 1e6
                })
                .fold(f64::INFINITY, f64::min)
        };
        let (one, many) = (time(1), time(PROBE_TOKENS));
        let per_token_us = ((many - one) / (PROBE_TOKENS - 1) as f64).max(0.0);
        ExpertCost {
            fixed_us: (one - per_token_us).max(0.0),
            per_token_us,
        }
    }

    /// A rank's slots (expert, tokens), run one after the other.
    pub fn rank_us(&self, slots: &[(u32, u32)]) -> f64 {
        slots
            .iter()
            .filter(|s| s.1 > 0)
            .map(|&(_, n)| self.fixed_us + self.per_token_us * n as f64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_time_adds_the_slots_with_tokens() {
        let c = ExpertCost {
            fixed_us: 2.0,
            per_token_us: 0.5,
        };
        assert_eq!(c.rank_us(&[(0, 4), (3, 0), (7, 2)]), 2.0 + 2.0 + 2.0 + 1.0);
        assert_eq!(c.rank_us(&[]), 0.0);
    }
}
