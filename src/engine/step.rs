//! `StepRecord`: what one engine step produces. It is the one data model that the UI draws, the
//! session writer stores and the exporters read, so it is plain serde data.
//!
//! Longer than most files: every type a StepRecord holds is here, so its shape reads in one place.

use super::finite::{FiniteCheck, FiniteStage, Verdict};
use super::paths::{PathId, PathSpec};
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
    /// The paths in order: A, B, then C where the user brings a kernel.
    #[serde(deserialize_with = "legacy::paths")]
    pub paths: Vec<PathRecord>,
    pub comparison: Comparison,
    /// Drill-down of a few sampled tokens (the ones compared against the f64 reference).
    pub token_details: Vec<TokenDetail>,
    /// Latest NVML sample, when telemetry runs.
    pub telemetry: Option<TelemetrySample>,
    /// Expert-parallel placements of this step's routing (`--ep`); absent in older sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ep: Option<super::ep::EpRecord>,
}

/// One path of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathRecord {
    /// Which path: serialised "A", "B" or "C".
    pub name: PathId,
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
    /// Non-finite values this path saw, per stage; None in sessions recorded before they were
    /// counted. Any count makes the step invalid (see `finite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finite: Option<FiniteCheck>,
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

/// Relative tolerance of the contract verdict: weights are f32, the bugs are off by far more.
pub const CONTRACT_TOLERANCE: f64 = 1e-3;

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
    /// What broke, with the numbers; empty when the contract holds. (Sessions of format
    /// version 1 carried an English `message` instead; reading one derives these from the
    /// path's weights.)
    #[serde(default)]
    pub violations: Vec<ContractViolation>,
}

/// One way a path's effective weights break the scaling contract: the mean over tokens of what
/// the path applied and what the reference says. The UI and the session layer word it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContractViolation {
    /// The effective weight on the shared experts' output is not the expected one (the
    /// shared gate; 1 for DeepSeek, Kimi and GLM).
    SharedWeight {
        #[serde(deserialize_with = "nan_as_null::f64")]
        got: f64,
        #[serde(deserialize_with = "nan_as_null::f64")]
        expected: f64,
    },
    /// The effective routed weights do not sum to the reference router's (rsf included).
    RoutedSum {
        #[serde(deserialize_with = "nan_as_null::f64")]
        got: f64,
        #[serde(deserialize_with = "nan_as_null::f64")]
        expected: f64,
    },
    /// Non-finite values went through the path: the step cannot be judged (see `finite`).
    NonFinite { first: FiniteStage, count: u64 },
}

impl ContractCheck {
    /// The violations a check with these deviations reports for a path whose effective means
    /// are `routed` and `shared` (the engine's rule, also used to read version 1 sessions).
    pub fn violations_of(
        &self,
        routed: &Stats,
        shared: Option<&Stats>,
        tolerance: f64,
    ) -> Vec<ContractViolation> {
        let mut out = Vec::new();
        // (A NaN deviation compares false here, as it always has; non-finite values get
        // their own verdict.)
        if let (Some(got), Some(want)) = (shared, &self.expected_shared) {
            if self.shared_max_dev > tolerance {
                out.push(ContractViolation::SharedWeight {
                    got: got.mean,
                    expected: want.mean,
                });
            }
        }
        if self.routed_max_dev > tolerance {
            out.push(ContractViolation::RoutedSum {
                got: routed.mean,
                expected: self.expected_routed_sum.mean,
            });
        }
        out
    }

    /// Makes the verdict of a step with non-finite values say so: a NaN deviation compares as
    /// no deviation, so without this a layer full of NaN would read "contract holds". The
    /// violation goes first: it is why the other figures cannot be trusted.
    pub fn judge_finite(&mut self, check: &FiniteCheck) {
        if let Verdict::Invalid { first, count } = check.verdict() {
            self.ok = false;
            self.violations
                .retain(|v| !matches!(v, ContractViolation::NonFinite { .. }));
            self.violations
                .insert(0, ContractViolation::NonFinite { first, count });
        }
    }
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

/// A timed stage of a path: one kernel on the GPU (or a few that belong together), one pass on
/// the CPU. Serialised by the names sessions have always used (`gate_gemm`, `router_scores`..).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Router logits: x · gateᵀ (+ the skew offset).
    GateGemm,
    /// The fused router, shared-slot append included.
    RouterFused,
    /// A user's router kernel (path C).
    RouterUser,
    // The unfused router, one stage per step of the PyTorch sequence.
    RouterScores,
    RouterAddBias,
    RouterGroupScores,
    RouterGroupTopk,
    RouterMask,
    RouterExpertTopk,
    RouterGather,
    RouterRenormalize,
    RouterScale,
    /// Tokens grouped by slot (counts, offsets, permutation).
    MoeAlign,
    /// FP8 experts: the tokens quantized per group of 128 (and the GEMM's tile offsets).
    Fp8Quant,
    /// Grouped expert GEMM, gate and up projections.
    ExpertGemmUp,
    SiluMul,
    /// Grouped expert GEMM, down projection.
    ExpertGemmDown,
    /// The whole expert MLP as one stage (CPU backend).
    ExpertMlp,
    /// The separate dense shared MLP.
    SharedMlp,
    /// Weighted sum back to tokens (+ shared output, × output scale).
    Combine,
}

impl Stage {
    /// Every stage, in the order a path runs them.
    pub const ALL: &'static [Stage] = &[
        Stage::GateGemm,
        Stage::RouterFused,
        Stage::RouterUser,
        Stage::RouterScores,
        Stage::RouterAddBias,
        Stage::RouterGroupScores,
        Stage::RouterGroupTopk,
        Stage::RouterMask,
        Stage::RouterExpertTopk,
        Stage::RouterGather,
        Stage::RouterRenormalize,
        Stage::RouterScale,
        Stage::MoeAlign,
        Stage::Fp8Quant,
        Stage::ExpertGemmUp,
        Stage::SiluMul,
        Stage::ExpertGemmDown,
        Stage::ExpertMlp,
        Stage::SharedMlp,
        Stage::Combine,
    ];

    /// The name sessions, exports and the Kernels view use (its serde name).
    pub fn name(self) -> &'static str {
        match self {
            Stage::GateGemm => "gate_gemm",
            Stage::RouterFused => "router_fused",
            Stage::RouterUser => "router_user",
            Stage::RouterScores => "router_scores",
            Stage::RouterAddBias => "router_add_bias",
            Stage::RouterGroupScores => "router_group_scores",
            Stage::RouterGroupTopk => "router_group_topk",
            Stage::RouterMask => "router_mask",
            Stage::RouterExpertTopk => "router_expert_topk",
            Stage::RouterGather => "router_gather",
            Stage::RouterRenormalize => "router_renormalize",
            Stage::RouterScale => "router_scale",
            Stage::MoeAlign => "moe_align",
            Stage::Fp8Quant => "fp8_quant",
            Stage::ExpertGemmUp => "expert_gemm_up",
            Stage::SiluMul => "silu_mul",
            Stage::ExpertGemmDown => "expert_gemm_down",
            Stage::ExpertMlp => "expert_mlp",
            Stage::SharedMlp => "shared_mlp",
            Stage::Combine => "combine",
        }
    }

    /// A stage of the router (fused or unfused).
    pub fn is_router(self) -> bool {
        matches!(
            self,
            Stage::RouterFused
                | Stage::RouterUser
                | Stage::RouterScores
                | Stage::RouterAddBias
                | Stage::RouterGroupScores
                | Stage::RouterGroupTopk
                | Stage::RouterMask
                | Stage::RouterExpertTopk
                | Stage::RouterGather
                | Stage::RouterRenormalize
                | Stage::RouterScale
        )
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Time of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelTiming {
    #[serde(rename = "name")]
    pub stage: Stage,
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
    /// How many tokens were compared against the f64 reference this step (= `tokens` when
    /// every token is; scripts read it).
    pub sampled_tokens: usize,
    // Fields below were added with the all-token device reference; older sessions lack them.
    /// Per path: disagreements with the reference router by class (exact tie, near tie, real).
    #[serde(default)]
    pub ties_ref: Vec<TieCounts>,
    /// Per path: per-token output errors against the f64 reference (p50/p99/max, worst tokens).
    #[serde(default)]
    pub token_errors_ref: Vec<TokenErrors>,
    /// Per-token output errors of B against A.
    #[serde(default)]
    pub token_errors_ab: Option<TokenErrors>,
    /// Reference margins over the step's tokens.
    #[serde(default)]
    pub margins: Option<MarginSummary>,
    /// A few tokens where some path's routed set differs from the reference's, ascending.
    #[serde(default)]
    pub disagreeing_tokens: Vec<usize>,
    /// Device time of the reference and the comparisons, µs, where measured.
    #[serde(default)]
    pub reference_us: Option<f64>,
    /// Per path, where some path runs FP8 experts (`--experts fp8`): that path's errors of
    /// the format (None for a bf16 path); empty when every path runs bf16, and in older
    /// sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expert_formats: Vec<Option<FormatErrors>>,
}

/// The numerics of a path that runs FP8 experts, over the tokens compared this step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FormatErrors {
    /// Tokens compared.
    pub tokens: usize,
    /// Where the f64 reference ran: on the device (every token) or the host (a sample).
    pub on_device: bool,
    /// Whether that reference quantizes the activations per token and group of 128.
    pub activations_quantized: bool,
    /// Against the f64 layer of the same slots and weights the path applied, through the
    /// dequantized FP8 weights it multiplied (relative L2 over the tokens): with
    /// `activations_quantized`, the activations quantized as the kernels quantize them (the
    /// kernels' own error); else exact (the activations' quantization included).
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub dequant_rel_l2: f64,
    pub dequant: TokenErrors,
    /// The first path running bf16 experts, where one runs: this path's output against its
    /// output on the same tokens, the format's whole error as a user sees it.
    pub bf16_path: Option<PathId>,
    /// (A NaN is written as `null` and reads back as None.)
    #[serde(default)]
    pub bf16_rel_l2: Option<f64>,
    pub bf16: Option<TokenErrors>,
}

// The all-token numerics; their rules and constructors are in the numerics module.

/// How a path's routed set for one token compares with the reference's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteClass {
    Agree,
    /// The swapped experts (or groups) have exactly the selection value at the boundary: a
    /// tie-rule difference.
    ExactTie,
    /// Within a few ulps (NEAR_TIE_ULPS) of the boundary: a rounding difference.
    NearTie,
    /// Further away, or a different number of experts: a bug.
    Real,
}

/// Disagreements with the reference by class, over the step's tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieCounts {
    pub exact: usize,
    pub near: usize,
    pub real: usize,
}

/// p50 / p99 / max of a per-token quantity over the compared tokens, and the worst tokens
/// (largest first; NaN counts as the largest).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenDist {
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub p50: f64,
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub p99: f64,
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub max: f64,
    /// Token indices in the batch, worst first.
    pub worst: Vec<usize>,
}

/// Per-token output errors of a path, against the reference or against another path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenErrors {
    /// Relative L2 of the token's output row.
    pub rel_l2: TokenDist,
    /// Largest absolute difference in the token's output row.
    pub max_abs: TokenDist,
}

/// One token's margins under the reference: the gap between the last chosen and the best
/// unchosen selection value. None where nothing is left unchosen (every group kept; ungrouped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenMargins {
    pub expert: Option<f64>,
    pub group: Option<f64>,
}

/// The margins over the step's tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MarginSummary {
    /// Smallest and median expert-level margin (None where no token has a boundary).
    pub expert_min: Option<f64>,
    pub expert_p50: Option<f64>,
    /// Tokens whose expert boundary is an exact tie (margin 0).
    pub expert_ties: usize,
    pub group_min: Option<f64>,
    pub group_p50: Option<f64>,
    pub group_ties: usize,
}

/// One token's routing under the reference and each path (the numerics drill-down).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The reference's margins for this token (absent in older sessions).
    #[serde(default)]
    pub margins: Option<TokenMargins>,
    /// Per path, how its routed set compares with the reference's (absent in older sessions).
    #[serde(default)]
    pub classes: Vec<RouteClass>,
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

/// Reading records of session format version 1, whose contract carried an English `message`
/// and no `violations`: the violations are derived from the path's own numbers, exactly as
/// the engine then worded them.
mod legacy {
    use super::{PathRecord, CONTRACT_TOLERANCE};
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    pub fn paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathRecord>, D::Error> {
        let raw = Vec::<serde_json::Value>::deserialize(d)?;
        raw.into_iter()
            .map(|v| {
                let old = v
                    .get("contract")
                    .is_some_and(|c| c.get("violations").is_none() && c.get("message").is_some());
                let mut p: PathRecord = serde_json::from_value(v).map_err(D::Error::custom)?;
                if old && !p.contract.ok {
                    p.contract.violations = p.contract.violations_of(
                        &p.routed_weight_sum,
                        p.shared_weight.as_ref(),
                        CONTRACT_TOLERANCE,
                    );
                    if let Some(f) = &p.finite {
                        p.contract.judge_finite(f);
                    }
                }
                Ok(p)
            })
            .collect()
    }
}

/// serde_json writes a non-finite float as `null` and refuses `null` for a float when reading.
/// These read `null` back as NaN, so a step with NaN numerics — what a broken kernel produces,
/// and what moescope exists to show — survives a session round trip (±inf comes back as NaN).
pub(crate) mod nan_as_null {
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
    fn stage_names_are_their_serde_names() {
        for &st in Stage::ALL {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.name()));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), st);
        }
    }

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
