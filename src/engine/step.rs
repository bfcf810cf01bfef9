//! `StepRecord`: what one engine step produces. It is the one data model that the UI draws, the
//! session writer stores and the exporters read (design §2), so it is plain serde data.

use super::paths::PathSpec;
use super::BackendKind;
use serde::{Deserialize, Serialize};

/// Everything one step of the layer produced, for both paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based step counter.
    pub step: u64,
    /// Tokens in this step's batch.
    pub tokens: usize,
    pub backend: BackendKind,
    /// Host wall time of the whole step (both paths, analysis included), µs.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub wall_us: f64,
    /// Milliseconds since the run started, when the step finished.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub t_ms: f64,
    /// Path A then path B.
    pub paths: Vec<PathRecord>,
    pub comparison: Comparison,
    /// Drill-down of a few sampled tokens (the ones compared against the f64 reference).
    pub token_details: Vec<TokenDetail>,
    /// Latest NVML sample, when telemetry runs.
    pub telemetry: Option<TelemetrySample>,
}

/// One path of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathRecord {
    /// "A" or "B".
    pub name: String,
    pub spec: PathSpec,
    /// Tokens assigned to each slot: E routed experts, then S shared slots. A separate shared
    /// expert counts every token.
    pub load: Vec<u32>,
    /// Effective routed-weight sum per token (every scale the path applies included).
    pub routed_weight_sum: Stats,
    /// Effective weight on each shared expert's output per token (gate included); None when
    /// the model has no shared experts.
    pub shared_weight: Option<Stats>,
    pub contract: ContractCheck,
    pub output: OutputStats,
    /// Per-kernel (per-stage) times of this path, in launch order.
    pub timings: Vec<KernelTiming>,
    /// Sum of the instrumented kernel times, µs.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub total_us: f64,
    /// Time of the path without per-kernel instrumentation (one event pair), where measured.
    pub clean_us: Option<f64>,
}

/// Mean, minimum and maximum over tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub mean: f64,
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub min: f64,
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub max: f64,
}

impl Stats {
    /// Statistics of a sequence; all zero when it is empty.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Stats {
        let (mut n, mut sum, mut min, mut max) = (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            n += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        if n == 0 {
            return Stats::default();
        }
        Stats {
            mean: sum / n as f64,
            min,
            max,
        }
    }
}

/// Whether the path's effective weights equal the reference contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContractCheck {
    pub ok: bool,
    /// Expected effective routed-weight sum per token (reference).
    pub expected_routed_sum: Stats,
    /// Expected effective shared weight per token (the shared gate; 1 for DeepSeek/Kimi/GLM).
    pub expected_shared: Option<Stats>,
    /// Largest |effective − expected| over tokens, routed sum.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub routed_max_dev: f64,
    /// Largest |effective − expected| over tokens and shared experts.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub shared_max_dev: f64,
    /// One line for humans, e.g. "shared weight 0.400, expected 1.000".
    pub message: String,
}

/// Statistics of the layer output over all tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputStats {
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub rms: f64,
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub max_abs: f64,
    /// NaN or infinite elements.
    pub nonfinite: u64,
}

/// Time of one kernel (GPU) or stage (CPU).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelTiming {
    pub name: String,
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub us: f64,
    /// Fewest bytes the kernel must move through memory, where meaningful (for GB/s).
    pub bytes: Option<u64>,
}

/// Numerics between the paths and against the f64 reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Fraction of tokens whose routed expert set is the same under A and B.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub routing_agreement_ab: f64,
    /// Per path: fraction of tokens whose routed expert set equals the reference router's.
    #[serde(deserialize_with = "nan_as_null::vec_f64")]
    pub routing_agreement_ref: Vec<f64>,
    /// Per path: largest |effective − reference| routed weight over tokens whose sets agree.
    #[serde(deserialize_with = "nan_as_null::vec_f64")]
    pub weight_max_diff_ref: Vec<f64>,
    /// Relative L2 difference of the outputs of A and B over the sampled tokens.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub output_rel_l2_ab: f64,
    /// Per path: relative L2 error against the f64 reference layer on the sampled tokens.
    #[serde(deserialize_with = "nan_as_null::vec_f64")]
    pub output_rel_l2_ref: Vec<f64>,
    /// How many tokens the output comparisons cover.
    pub sampled_tokens: usize,
}

/// One token's routing under the reference and each path (the numerics drill-down).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenDetail {
    pub token: usize,
    /// Group scores as the reference router computed them.
    #[serde(deserialize_with = "nan_as_null::vec_f32")]
    pub group_scores: Vec<f32>,
    /// Kept groups, best first.
    pub kept_groups: Vec<u32>,
    pub reference: SlotWeights,
    /// Per path, the slots and effective weights it applied.
    pub paths: Vec<SlotWeights>,
}

/// Slots (expert ids; shared slots are E..E+S-1) and the effective weight on each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotWeights {
    pub ids: Vec<u32>,
    #[serde(deserialize_with = "nan_as_null::vec_f64")]
    pub weights: Vec<f64>,
}

/// One NVML reading; each field is None where the device or driver does not report it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    /// Milliseconds since the sampler started.
    pub t_ms: f64,
    pub gpu_util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
    pub mem_used_mib: Option<u64>,
    pub mem_total_mib: Option<u64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub temperature_c: Option<u32>,
    pub pcie_tx_kib_s: Option<u32>,
    pub pcie_rx_kib_s: Option<u32>,
    /// Active clock-throttle reasons by name; empty when none.
    pub throttle_reasons: Vec<String>,
    /// Hopper GPM metrics, percent, where supported.
    pub gpm_sm_occupancy_pct: Option<f64>,
    pub gpm_tensor_active_pct: Option<f64>,
    pub gpm_dram_bw_util_pct: Option<f64>,
}

/// serde_json writes a non-finite float as `null` and refuses `null` for a float when reading.
/// These read `null` back as NaN, so a step with NaN numerics — what a broken kernel produces,
/// and what moescope exists to show — survives a session round trip (±inf comes back as NaN).
mod nan_as_null {
    use serde::{Deserialize, Deserializer};

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn vec_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v = Vec::<Option<f64>>::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }

    pub fn vec_f32<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let v = Vec::<Option<f32>>::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f32::NAN)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_values_and_of_nothing() {
        let s = Stats::of([1.0, 3.0, 2.0]);
        assert_eq!(
            s,
            Stats {
                mean: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Stats::of(std::iter::empty()), Stats::default());
    }

    #[test]
    fn nan_survives_a_json_round_trip() {
        let s = Stats {
            mean: f64::NAN,
            min: 1.0,
            max: f64::INFINITY,
        };
        let text = serde_json::to_string(&s).unwrap();
        let back: Stats = serde_json::from_str(&text).unwrap();
        assert!(back.mean.is_nan() && back.max.is_nan());
        assert_eq!(back.min, 1.0);
        let c: Comparison = serde_json::from_str(
            r#"{"routing_agreement_ab":null,"routing_agreement_ref":[1.0,null],
                "weight_max_diff_ref":[],"output_rel_l2_ab":0.5,"output_rel_l2_ref":[null],
                "sampled_tokens":3}"#,
        )
        .unwrap();
        assert!(c.routing_agreement_ab.is_nan() && c.routing_agreement_ref[1].is_nan());
        assert!(c.output_rel_l2_ref[0].is_nan());
        // A missing field is still an error, not a silent NaN.
        assert!(serde_json::from_str::<Stats>(r#"{"mean":1.0,"min":1.0}"#).is_err());
    }
}
