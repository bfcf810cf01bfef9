//! A path is `router × shared × contract`. This module says, for every path and
//! known-bug variant, which weight each slot carries and what scales the output — the scaling
//! contract — so every backend applies exactly the same arithmetic and the engine can report the
//! *effective* weight on every routed expert and shared slot.
//!
//! Longer than most files: a path's whole description lives here (router, shared mode, rsf
//! placement, variant, router-logits precision, expert formats, path C's file) with the
//! contract it implies and its words for labels, and the tests of all of it (~140 lines).

use serde::{Deserialize, Serialize};
use std::fmt;

/// How the routing decision is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterImpl {
    /// One kernel per step of the PyTorch sequence.
    Unfused,
    /// One kernel for all of it, shared-slot append included.
    Fused,
    /// A kernel the user brings (path C, docs/kernel-abi.md), shared slots fused.
    User,
}

/// How the shared experts are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharedMode {
    /// A dense shared MLP whose output is added after the routed experts.
    Separate,
    /// S extra slots E..E+S-1 of the grouped expert computation.
    FusedSlot,
}

/// Where the routed scaling factor (rsf) is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsfPlacement {
    /// Inside the router weights; the shared slot carries 1 (× gate).
    InRouter,
    /// On the summed output afterwards; the shared slot carries 1/rsf (× gate).
    OnOutput,
}

/// The correct contract or one of the known scaling bugs, runnable on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The contract honoured for the path's rsf placement.
    Correct,
    /// rsf in the router, shared slot holds `sum/rsf` after renormalizing the routed slots only,
    /// nothing scales the output: the shared weight stays at 1/rsf (review of vLLM PR #28540).
    SharedInvRsf,
    /// rsf inside the router weights and again on the output (vLLM #24119, #24132, #45037).
    RsfTwice,
    /// Shared slot hard-coded as `sum/2.5` with rsf on the output (early sglang `moe_fused_gate`):
    /// right only where rsf is 2.5.
    Hardcoded2_5,
    /// The shared-expert count is not passed: a (top_k+S)-th routed expert replaces the shared
    /// slot (sglang #38963).
    SharedDropped,
}

pub const VARIANTS: &[Variant] = &[
    Variant::Correct,
    Variant::SharedInvRsf,
    Variant::RsfTwice,
    Variant::Hardcoded2_5,
    Variant::SharedDropped,
];

impl Variant {
    /// The name used on the command line (`--variant`) and in sessions.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Correct => "correct",
            Variant::SharedInvRsf => "shared-inv-rsf",
            Variant::RsfTwice => "rsf-twice",
            Variant::Hardcoded2_5 => "hardcoded-2.5",
            Variant::SharedDropped => "shared-dropped",
        }
    }

    /// One line on what the variant does and where it shipped.
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Correct => "the scaling contract honoured",
            Variant::SharedInvRsf => {
                "shared slot holds sum/rsf, routed renormalized, output unscaled: shared weight 1/rsf (vLLM PR #28540 review)"
            }
            Variant::RsfTwice => "rsf in the router weights and on the output (vLLM #24119, #24132, #45037)",
            Variant::Hardcoded2_5 => "shared slot hard-coded as sum/2.5, output × rsf (early sglang moe_fused_gate)",
            Variant::SharedDropped => "shared count not passed: an extra routed expert replaces the shared slot (sglang #38963)",
        }
    }

    pub fn from_name(name: &str) -> Option<Variant> {
        VARIANTS.iter().copied().find(|v| v.name() == name)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a path stores and multiplies its expert weights (`--experts`, `--shared-experts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertFormat {
    /// bf16 weights and activations, f32 accumulation (what sessions before FP8 ran).
    #[default]
    Bf16,
    /// e4m3 weights with one f32 scale per 128×128 block (as DeepSeek-V3 stores them),
    /// activations quantized per token in groups of 128, f32 accumulation.
    Fp8,
}

impl ExpertFormat {
    pub const ALL: [ExpertFormat; 2] = [ExpertFormat::Bf16, ExpertFormat::Fp8];
    /// The names `FromStr` takes (the command line's and the sessions').
    pub const NAMES: &'static [&'static str] = &["bf16", "fp8"];

    pub fn name(self) -> &'static str {
        match self {
            ExpertFormat::Bf16 => "bf16",
            ExpertFormat::Fp8 => "fp8",
        }
    }

    pub fn is_fp8(self) -> bool {
        self == ExpertFormat::Fp8
    }

    /// bf16 is not written into sessions: a bf16 path reads back as sessions before FP8 wrote it.
    pub fn is_bf16(&self) -> bool {
        *self == ExpertFormat::Bf16
    }
}

impl fmt::Display for ExpertFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExpertFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ExpertFormat::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown expert format `{s}`; expected bf16 or fp8"))
    }
}

/// Which path a record belongs to: A and B as `run` compares them by default, C a kernel the
/// user brings. Serialised as "A", "B", "C", as sessions have always named them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathId {
    A,
    B,
    C,
}

impl PathId {
    pub const ALL: [PathId; 3] = [PathId::A, PathId::B, PathId::C];

    /// The path at position `i` of a run (A first); None past the last one there can be.
    pub fn nth(i: usize) -> Option<PathId> {
        PathId::ALL.get(i).copied()
    }

    /// Position of the path in a run.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            PathId::A => "A",
            PathId::B => "B",
            PathId::C => "C",
        }
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so `{:>10}` aligns a path name like any string.
        f.pad(self.name())
    }
}

/// The router logits' precision: the gate GEMM accumulates in f32 either way; `Bf16` rounds
/// its output to bf16 before the router reads it (what a bf16 router GEMM writes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogitsDtype {
    #[default]
    F32,
    Bf16,
}

impl LogitsDtype {
    /// The name used on the command line (`--router-logits`) and in sessions.
    pub fn name(self) -> &'static str {
        match self {
            LogitsDtype::F32 => "f32",
            LogitsDtype::Bf16 => "bf16",
        }
    }

    pub fn from_name(name: &str) -> Option<LogitsDtype> {
        [LogitsDtype::F32, LogitsDtype::Bf16]
            .into_iter()
            .find(|d| d.name() == name)
    }

    fn is_f32(&self) -> bool {
        *self == LogitsDtype::F32
    }
}

impl fmt::Display for LogitsDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Each path's logits precision, as `--router-logits` gives it: one precision for every path
/// (`bf16`) or per path by name (`A=bf16,C=f32`; a path not named reads f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathLogits {
    per_path: [Option<LogitsDtype>; 3],
    /// Whether paths were named (so naming path C without a kernel is an error).
    named: bool,
}

impl PathLogits {
    /// Every path in `dtype`.
    pub fn all(dtype: LogitsDtype) -> PathLogits {
        PathLogits {
            per_path: [Some(dtype); 3],
            named: false,
        }
    }

    /// The precision of path `id`.
    pub fn of(&self, id: PathId) -> LogitsDtype {
        self.per_path[id.index()].unwrap_or_default()
    }

    /// Whether path `id` was named explicitly (`C=bf16`).
    pub fn names(&self, id: PathId) -> bool {
        self.named && self.per_path[id.index()].is_some()
    }

    /// `f32`, `bf16`, or a comma list of `PATH=f32|bf16` with PATH one of A, B, C.
    pub fn parse(s: &str) -> Result<PathLogits, String> {
        let dtype = |v: &str| {
            LogitsDtype::from_name(v.trim()).ok_or_else(|| {
                format!(
                    "unknown logits precision `{}`; expected f32 or bf16",
                    v.trim()
                )
            })
        };
        if !s.contains('=') {
            return dtype(s).map(PathLogits::all);
        }
        let mut out = PathLogits {
            named: true,
            ..PathLogits::default()
        };
        for item in s.split(',') {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not PATH=PRECISION (e.g. A=bf16)"))?;
            let id = PathId::ALL
                .into_iter()
                .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| format!("unknown path `{}`; expected A, B or C", name.trim()))?;
            let slot = &mut out.per_path[id.index()];
            if slot.is_some() {
                return Err(format!("path {id} is given twice"));
            }
            *slot = Some(dtype(value)?);
        }
        Ok(out)
    }
}

/// One of the paths run side by side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathSpec {
    pub router: RouterImpl,
    pub shared: SharedMode,
    pub rsf: RsfPlacement,
    pub variant: Variant,
    /// What the router reads: the gate GEMM's output as f32 or rounded to bf16 (f32 in
    /// sessions recorded before it was an option).
    #[serde(default, skip_serializing_if = "LogitsDtype::is_f32")]
    pub logits: LogitsDtype,
    /// Path C: the user kernel's file name ("fused_router.cu"); None on moescope's own paths
    /// and in sessions recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The routed experts' format (sessions recorded before FP8 read as bf16).
    #[serde(default, skip_serializing_if = "ExpertFormat::is_bf16")]
    pub experts: ExpertFormat,
    /// The shared experts' format: the separate shared MLP, or the fused shared slots.
    #[serde(default, skip_serializing_if = "ExpertFormat::is_bf16")]
    pub shared_experts: ExpertFormat,
}

impl PathSpec {
    /// Path A by default: the baseline engineers run today.
    pub fn unfused_baseline() -> PathSpec {
        PathSpec {
            router: RouterImpl::Unfused,
            shared: SharedMode::Separate,
            rsf: RsfPlacement::InRouter,
            variant: Variant::Correct,
            logits: LogitsDtype::F32,
            kernel: None,
            experts: ExpertFormat::Bf16,
            shared_experts: ExpertFormat::Bf16,
        }
    }

    /// Path B by default: fused router with the shared expert fused in as slot(s).
    pub fn fused(variant: Variant) -> PathSpec {
        PathSpec {
            router: RouterImpl::Fused,
            shared: SharedMode::FusedSlot,
            rsf: RsfPlacement::OnOutput,
            variant,
            logits: LogitsDtype::F32,
            kernel: None,
            experts: ExpertFormat::Bf16,
            shared_experts: ExpertFormat::Bf16,
        }
    }

    /// Path C: the user's router kernel in file `kernel` (its name, e.g. "fused_router.cu");
    /// its declared rsf placement decides the output scale.
    pub fn user(kernel: &str, rsf_in_router: bool) -> PathSpec {
        PathSpec {
            router: RouterImpl::User,
            shared: SharedMode::FusedSlot,
            rsf: if rsf_in_router {
                RsfPlacement::InRouter
            } else {
                RsfPlacement::OnOutput
            },
            variant: Variant::Correct,
            logits: LogitsDtype::F32,
            kernel: Some(kernel.to_string()),
            experts: ExpertFormat::Bf16,
            shared_experts: ExpertFormat::Bf16,
        }
    }

    /// The same path with its routed and shared experts in these formats.
    pub fn with_formats(self, experts: ExpertFormat, shared_experts: ExpertFormat) -> PathSpec {
        PathSpec {
            experts,
            shared_experts,
            ..self
        }
    }

    /// Whether any of the path's experts (routed or shared) run in FP8.
    pub fn uses_fp8(&self) -> bool {
        self.experts.is_fp8() || self.shared_experts.is_fp8()
    }

    /// The format of slot `slot` (routed experts below `e`, then the shared slots).
    pub fn slot_format(&self, slot: usize, e: usize) -> ExpertFormat {
        if slot < e {
            self.experts
        } else {
            self.shared_experts
        }
    }

    /// The expert formats as the labels show them: None for bf16 throughout (the labels
    /// sessions have always had), `fp8`, or `fp8 routed, bf16 shared`.
    pub fn formats_label(&self) -> Option<String> {
        match (self.experts, self.shared_experts) {
            (ExpertFormat::Bf16, ExpertFormat::Bf16) => None,
            (a, b) if a == b => Some(a.name().to_string()),
            (a, b) => Some(format!("{a} routed, {b} shared")),
        }
    }

    /// The paths `run` compares by default: A unfused + separate shared, B fused + fused slot.
    pub fn default_pair() -> Vec<PathSpec> {
        vec![
            PathSpec::unfused_baseline(),
            PathSpec::fused(Variant::Correct),
        ]
    }

    /// Short label, e.g. `fused router + fused slot, rsf on-output [rsf-twice]`.
    pub fn label(&self) -> String {
        let router = match self.router {
            RouterImpl::Unfused => "unfused router",
            RouterImpl::Fused => "fused router",
            RouterImpl::User => "user kernel",
        };
        let shared = match self.shared {
            SharedMode::Separate => "separate shared",
            SharedMode::FusedSlot => "fused slot",
        };
        let rsf = match self.rsf {
            RsfPlacement::InRouter => "rsf in-router",
            RsfPlacement::OnOutput => "rsf on-output",
        };
        let mut s = match &self.kernel {
            Some(file) => format!("{router} {file} + {shared}, {rsf}"),
            None => format!("{router} + {shared}, {rsf}"),
        };
        if self.logits == LogitsDtype::Bf16 {
            s.push_str(", bf16 logits");
        }
        if self.variant != Variant::Correct {
            s.push_str(&format!(" [{}]", self.variant));
        }
        if let Some(f) = self.formats_label() {
            s.push_str(&format!(" · {f}"));
        }
        s
    }

    /// The path's name in the views: its letter, the user kernel's file, "bf16" where the
    /// router reads bf16 logits (e.g. `C fused_router.cu`, `B bf16`).
    pub fn title(&self, id: PathId) -> String {
        let mut s = id.name().to_string();
        if let Some(file) = &self.kernel {
            s.push(' ');
            s.push_str(file);
        }
        if self.logits == LogitsDtype::Bf16 {
            s.push_str(" bf16");
        }
        if self.uses_fp8() {
            s.push_str(" fp8");
        }
        s
    }

    /// Routed experts the router picks per token under this path (shared-dropped picks S more).
    pub fn routed_per_token(&self, top_k: usize, n_shared: usize) -> usize {
        if self.variant == Variant::SharedDropped {
            top_k + n_shared
        } else {
            top_k
        }
    }

    /// Shared slots appended per token (0 unless the shared experts are fused as slots).
    pub fn shared_slots_per_token(&self, n_shared: usize) -> usize {
        match (self.shared, self.variant) {
            (_, Variant::SharedDropped) => 0,
            (SharedMode::FusedSlot, _) => n_shared,
            (SharedMode::Separate, _) => 0,
        }
    }

    /// The arithmetic this path applies (see [`Contract`]).
    pub fn contract(&self, rsf: f64, has_shared: bool) -> Contract {
        // `routed_scale`: factor on the router's (renormalized) probabilities.
        // `shared_weight`: weight on the shared output per unit of gate, before `out_scale`.
        // `out_scale`: factor on the sum of the slots (routed and fused shared).
        let (routed_scale, shared_weight, out_scale) = match (self.variant, self.rsf) {
            (Variant::Correct, RsfPlacement::InRouter) => (rsf, 1.0, 1.0),
            (Variant::Correct, RsfPlacement::OnOutput) => (1.0, 1.0 / rsf, rsf),
            (Variant::SharedInvRsf, _) => (rsf, 1.0 / rsf, 1.0),
            (Variant::RsfTwice, _) => (rsf, 1.0 / rsf, rsf),
            (Variant::Hardcoded2_5, _) => (1.0, 1.0 / 2.5, rsf),
            (Variant::SharedDropped, RsfPlacement::InRouter) => (rsf, 0.0, 1.0),
            (Variant::SharedDropped, RsfPlacement::OnOutput) => (1.0, 0.0, rsf),
        };
        // A separate shared MLP is added after the output scale, so it carries its weight
        // already multiplied by what the fused slot would have been scaled by.
        let separate_shared_weight = match self.shared {
            SharedMode::Separate if has_shared => shared_weight * out_scale,
            _ => 0.0,
        };
        Contract {
            routed_scale,
            shared_slot_weight: if self.shared == SharedMode::FusedSlot && has_shared {
                shared_weight
            } else {
                0.0
            },
            out_scale,
            separate_shared_weight,
        }
    }
}

/// The arithmetic one path applies; every backend follows it.
///
/// Output for a token: `out_scale · (Σ_i routed_scale·p_i·E_i(x) + Σ_j shared_slot_weight·g·S_j(x))
/// + separate_shared_weight·g·S(x)`, where `p_i` are the router's probabilities (renormalized if
/// `norm_topk_prob`, rsf not included) and `g` the shared gate (1 unless Qwen3-Next).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    pub routed_scale: f64,
    pub shared_slot_weight: f64,
    pub out_scale: f64,
    pub separate_shared_weight: f64,
}

impl Contract {
    /// Weight the routed-expert slot carries in the kernels (before `out_scale`).
    pub fn routed_slot_weight(&self, p: f64) -> f64 {
        self.routed_scale * p
    }
    /// Effective weight on a routed expert's output, every scale included.
    pub fn effective_routed(&self, p: f64) -> f64 {
        self.routed_scale * p * self.out_scale
    }
    /// Effective weight on each shared expert's output per unit of gate, every scale included.
    pub fn effective_shared(&self) -> f64 {
        self.shared_slot_weight * self.out_scale + self.separate_shared_weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correct_contracts_give_rsf_on_routed_and_one_on_shared() {
        for shared in [SharedMode::Separate, SharedMode::FusedSlot] {
            for rsf_at in [RsfPlacement::InRouter, RsfPlacement::OnOutput] {
                let spec = PathSpec {
                    shared,
                    rsf: rsf_at,
                    ..PathSpec::fused(Variant::Correct)
                };
                let c = spec.contract(2.827, true);
                assert!(
                    (c.effective_routed(0.25) - 0.25 * 2.827).abs() < 1e-12,
                    "{spec:?}"
                );
                assert!((c.effective_shared() - 1.0).abs() < 1e-12, "{spec:?}");
            }
        }
    }

    #[test]
    fn each_bug_variant_breaks_the_contract_where_it_should() {
        let rsf = 2.827;
        let fused = |v| PathSpec::fused(v).contract(rsf, true);
        assert!((fused(Variant::SharedInvRsf).effective_shared() - 1.0 / rsf).abs() < 1e-12);
        assert!((fused(Variant::RsfTwice).effective_routed(1.0) - rsf * rsf).abs() < 1e-12);
        assert!((fused(Variant::Hardcoded2_5).effective_shared() - rsf / 2.5).abs() < 1e-12);
        assert_eq!(fused(Variant::SharedDropped).effective_shared(), 0.0);
        // The hard-coded 2.5 is right only for a model whose rsf is 2.5.
        let c = PathSpec::fused(Variant::Hardcoded2_5).contract(2.5, true);
        assert!((c.effective_shared() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn path_ids_serialize_as_the_names_sessions_use() {
        for (i, id) in PathId::ALL.into_iter().enumerate() {
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{}\"", id.name()));
            assert_eq!(serde_json::from_str::<PathId>(&json).unwrap(), id);
            assert_eq!((PathId::nth(i), id.index()), (Some(id), i));
        }
        assert_eq!(PathId::nth(3), None);
        assert!(serde_json::from_str::<PathId>("\"D\"").is_err());
    }

    #[test]
    fn router_logits_parse_one_precision_or_one_per_path() {
        let all = PathLogits::parse("bf16").unwrap();
        assert!(PathId::ALL.iter().all(|&p| all.of(p) == LogitsDtype::Bf16));
        assert!(!all.names(PathId::C));
        let some = PathLogits::parse("A=bf16, c=f32").unwrap();
        assert_eq!(some.of(PathId::A), LogitsDtype::Bf16);
        assert_eq!(some.of(PathId::B), LogitsDtype::F32);
        assert!(some.names(PathId::C) && !some.names(PathId::B));
        for (bad, says) in [
            ("fp16", "unknown logits precision `fp16`"),
            ("A=bf16,D=f32", "unknown path `D`"),
            ("A=bf16,A=f32", "path A is given twice"),
            ("A=bf16,B", "`B` is not PATH=PRECISION"),
            ("B=half", "unknown logits precision `half`"),
        ] {
            let err = PathLogits::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn specs_of_older_sessions_read_with_the_defaults_and_labels_say_what_differs() {
        let old =
            r#"{"router":"fused","shared":"fused-slot","rsf":"on-output","variant":"correct"}"#;
        let spec: PathSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec, PathSpec::fused(Variant::Correct));
        // Written back as it was: the defaults are not serialised.
        assert_eq!(serde_json::to_string(&spec).unwrap(), old);
        let c = PathSpec {
            logits: LogitsDtype::Bf16,
            ..PathSpec::user("fused_router.cu", false)
        };
        let back: PathSpec = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.title(PathId::C), "C fused_router.cu bf16");
        assert!(c.label().contains("fused_router.cu"), "{}", c.label());
        assert!(!spec.uses_fp8() && !spec.label().contains("fp8"));
        let fp8 = spec.with_formats(ExpertFormat::Fp8, ExpertFormat::Fp8);
        let json = serde_json::to_string(&fp8).unwrap();
        assert!(json.contains(r#""experts":"fp8""#), "{json}");
        assert_eq!(serde_json::from_str::<PathSpec>(&json).unwrap(), fp8);
        assert!(fp8.label().ends_with(" · fp8"), "{}", fp8.label());
        let a = PathSpec::unfused_baseline().with_formats(ExpertFormat::Fp8, ExpertFormat::Bf16);
        assert!(
            a.label().ends_with(" · fp8 routed, bf16 shared"),
            "{}",
            a.label()
        );
        assert_eq!(a.slot_format(3, 4), ExpertFormat::Fp8);
        assert_eq!(a.slot_format(4, 4), ExpertFormat::Bf16);
        assert_eq!("fp8".parse::<ExpertFormat>(), Ok(ExpertFormat::Fp8));
        assert!("fp16"
            .parse::<ExpertFormat>()
            .unwrap_err()
            .contains("bf16 or fp8"));
    }

    #[test]
    fn variant_names_round_trip() {
        for v in VARIANTS {
            assert_eq!(Variant::from_name(v.name()), Some(*v));
        }
        assert_eq!(Variant::from_name("nope"), None);
    }

    proptest::proptest! {
        /// For any rsf, the correct contracts give rsf·p on routed experts and 1 on shared ones,
        /// and each bug variant breaks exactly what it is named for.
        #[test]
        fn contract_over_any_rsf(rsf in 0.1f64..20.0, p in 0.01f64..1.0) {
            let distinct = (rsf - 1.0).abs() > 1e-3 && (rsf - 2.5).abs() > 1e-3;
            for shared in [SharedMode::Separate, SharedMode::FusedSlot] {
                for rsf_at in [RsfPlacement::InRouter, RsfPlacement::OnOutput] {
                    for &variant in VARIANTS {
                        let spec = PathSpec { shared, rsf: rsf_at, ..PathSpec::fused(variant) };
                        let c = spec.contract(rsf, true);
                        let routed_ok = (c.effective_routed(p) - rsf * p).abs() < 1e-9;
                        let shared_ok = (c.effective_shared() - 1.0).abs() < 1e-9;
                        match variant {
                            Variant::Correct => proptest::prop_assert!(routed_ok && shared_ok),
                            Variant::RsfTwice => proptest::prop_assert!(!routed_ok || !distinct),
                            Variant::SharedInvRsf | Variant::Hardcoded2_5 => proptest::prop_assert!(routed_ok && (!shared_ok || !distinct)),
                            Variant::SharedDropped => proptest::prop_assert!(routed_ok && c.effective_shared() == 0.0),
                        }
                    }
                }
            }
        }
    }
}
