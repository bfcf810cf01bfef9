//! Non-finite values are findings. A tool that exists to catch numerical bugs must never call a
//! layer healthy when NaN or Inf went through it, so every stage that can produce one is counted
//! per step and any non-finite value makes the step's verdict `invalid`, naming the first stage
//! (in pipeline order) where one appeared and how many there were in all.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Where in the layer a non-finite value was counted, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FiniteStage {
    /// Hidden states (synthetic or captured) or router logits read from a file.
    Input,
    /// Router gate, correction bias, logit offset, expert and shared weights, block scales.
    Weights,
    /// Router logits, scores and the slot weights the router produced.
    Router,
    /// Expert (and shared expert) MLP outputs.
    Experts,
    /// The layer output after the weighted sum.
    Combine,
}

impl FiniteStage {
    /// Every stage, in pipeline order.
    pub const ALL: [FiniteStage; 5] = [
        FiniteStage::Input,
        FiniteStage::Weights,
        FiniteStage::Router,
        FiniteStage::Experts,
        FiniteStage::Combine,
    ];

    /// The serde name.
    pub fn name(self) -> &'static str {
        match self {
            FiniteStage::Input => "input",
            FiniteStage::Weights => "weights",
            FiniteStage::Router => "router",
            FiniteStage::Experts => "experts",
            FiniteStage::Combine => "combine",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for FiniteStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How many non-finite values one stage held in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFinite {
    pub stage: FiniteStage,
    pub count: u64,
}

/// Running counts per stage, as a backend fills them (host loops or the device counting
/// kernel). Shared stages (input, weights) are counted once per step and merged into each path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FiniteCounts([u64; 5]);

impl FiniteCounts {
    pub fn add(&mut self, stage: FiniteStage, count: u64) {
        self.0[stage.index()] += count;
    }

    /// Counts `values` that are NaN or infinite into `stage`.
    pub fn count(&mut self, stage: FiniteStage, values: &[f32]) {
        self.add(stage, count_nonfinite(values));
    }

    pub fn get(&self, stage: FiniteStage) -> u64 {
        self.0[stage.index()]
    }

    /// Both sets of counts added.
    pub fn merged(mut self, other: &FiniteCounts) -> FiniteCounts {
        self.0.iter_mut().zip(other.0).for_each(|(a, b)| *a += b);
        self
    }

    /// Per stage, the larger of the two: what the engine sees itself of a step is a floor under
    /// the backend's own counts, so a backend that counts less (or nothing yet) cannot make a
    /// step look finite.
    pub fn at_least(mut self, floor: &FiniteCounts) -> FiniteCounts {
        self.0
            .iter_mut()
            .zip(floor.0)
            .for_each(|(a, b)| *a = (*a).max(b));
        self
    }

    /// What a StepRecord stores: the stages with a non-zero count, in pipeline order.
    pub fn check(&self) -> FiniteCheck {
        FiniteCheck {
            nonfinite: FiniteStage::ALL
                .iter()
                .filter(|s| self.get(**s) > 0)
                .map(|&stage| NonFinite {
                    stage,
                    count: self.get(stage),
                })
                .collect(),
        }
    }
}

/// The non-finite values one path saw in one step. Sessions recorded before this existed have
/// none (the field is optional), which means "not counted", not "finite".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiniteCheck {
    /// Stages with at least one non-finite value, in pipeline order; empty when all were finite.
    pub nonfinite: Vec<NonFinite>,
}

impl FiniteCheck {
    pub fn verdict(&self) -> Verdict {
        match self.nonfinite.first() {
            None => Verdict::Valid,
            Some(first) => Verdict::Invalid {
                first: first.stage,
                count: self.nonfinite.iter().map(|n| n.count).sum(),
            },
        }
    }
}

/// Whether a step's numbers can be judged at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    /// Every counted value was finite.
    Valid,
    /// Non-finite values: `first` is the earliest stage that held one, `count` the total.
    Invalid { first: FiniteStage, count: u64 },
}

impl Verdict {
    pub fn is_valid(self) -> bool {
        matches!(self, Verdict::Valid)
    }
}

/// NaN or infinite elements of `values` (in parallel on large buffers).
pub fn count_nonfinite(values: &[f32]) -> u64 {
    const CHUNK: usize = 1 << 16;
    if values.len() <= CHUNK {
        return values.iter().filter(|v| !v.is_finite()).count() as u64;
    }
    values
        .par_chunks(CHUNK)
        .map(|c| c.iter().filter(|v| !v.is_finite()).count() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stage_in_pipeline_order_and_the_total() {
        let mut c = FiniteCounts::default();
        c.count(FiniteStage::Combine, &[f32::NAN, 1.0, f32::INFINITY]);
        c.add(FiniteStage::Router, 3);
        let check = c.check();
        assert_eq!(
            check.verdict(),
            Verdict::Invalid {
                first: FiniteStage::Router,
                count: 5
            }
        );
        assert_eq!(check.nonfinite.len(), 2);
        assert_eq!(FiniteCounts::default().check().verdict(), Verdict::Valid);
    }

    #[test]
    fn serde_names_are_lowercase() {
        let v = Verdict::Invalid {
            first: FiniteStage::Weights,
            count: 2,
        };
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text, r#"{"verdict":"invalid","first":"weights","count":2}"#);
        assert_eq!(serde_json::from_str::<Verdict>(&text).unwrap(), v);
        for s in FiniteStage::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn counts_large_buffers_in_parallel() {
        let mut v = vec![0.5f32; 300_000];
        v[7] = f32::NAN;
        v[299_999] = f32::NEG_INFINITY;
        assert_eq!(count_nonfinite(&v), 2);
        let merged = {
            let mut a = FiniteCounts::default();
            a.add(FiniteStage::Input, 1);
            a.merged(&a)
        };
        assert_eq!(merged.get(FiniteStage::Input), 2);
    }
}
