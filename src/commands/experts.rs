//! `--experts` and `--shared-experts`: the expert format of every path (`fp8`) or per path
//! (`A=bf16,B=fp8`). Paths a per-path list does not name keep their default: bf16 for
//! `--experts`, the path's routed format for `--shared-experts`.

use crate::engine::paths::{ExpertFormat, PathId, PathSpec, SharedMode};
use anyhow::{bail, Result};

/// One of the two flags' values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathFormats {
    /// The format given for every path (`--experts fp8`).
    pub all: Option<ExpertFormat>,
    /// Formats given per path, A and B (`--experts A=bf16,B=fp8`).
    pub per: [Option<ExpertFormat>; 2],
}

impl PathFormats {
    /// The format this value gives path `id`, where it gives one.
    pub fn of(&self, id: PathId) -> Option<ExpertFormat> {
        self.per.get(id.index()).copied().flatten().or(self.all)
    }
}

const EXPECTED: &str = "expected bf16, fp8, or per path A=bf16|fp8,B=bf16|fp8";

/// Parses `bf16`, `fp8`, or a comma-separated list of `PATH=FORMAT` for paths A and B.
pub fn parse(s: &str) -> Result<PathFormats, String> {
    let s = s.trim();
    if let Ok(f) = s.parse::<ExpertFormat>() {
        return Ok(PathFormats {
            all: Some(f),
            per: [None; 2],
        });
    }
    let mut out = PathFormats::default();
    for part in s.split(',') {
        let Some((path, format)) = part.split_once('=') else {
            return Err(format!("`{part}` is not a format; {EXPECTED}"));
        };
        let idx = match path.trim() {
            "A" | "a" => 0,
            "B" | "b" => 1,
            "C" | "c" => {
                return Err(
                    "path C (a user kernel) runs its experts in bf16; name path A or B".into(),
                )
            }
            other => return Err(format!("unknown path `{other}`; {EXPECTED}")),
        };
        let format: ExpertFormat = format
            .trim()
            .parse()
            .map_err(|e: String| format!("path {}: {e}", path.trim()))?;
        if out.per[idx].replace(format).is_some() {
            return Err(format!("path {} is given twice", path.trim()));
        }
    }
    Ok(out)
}

/// Paths A and B with the formats the two flags give them; refuses a fused shared slot in a
/// format other than its routed experts' (one grouped GEMM runs both).
pub fn apply(
    paths: Vec<PathSpec>,
    experts: &PathFormats,
    shared: Option<&PathFormats>,
) -> Result<Vec<PathSpec>> {
    paths
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let Some(id) = PathId::nth(i) else {
                return Ok(spec);
            };
            let routed = experts.of(id).unwrap_or_default();
            let sh = shared.and_then(|s| s.of(id)).unwrap_or(routed);
            if spec.shared == SharedMode::FusedSlot && sh != routed {
                bail!(
                    "--shared-experts: path {id} fuses its shared experts as slots of the routed experts' grouped GEMM, so they run in the routed experts' format ({routed}), not {sh}"
                );
            }
            Ok(spec.with_formats(routed, sh))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Vec<PathSpec> {
        PathSpec::default_pair()
    }

    #[test]
    fn one_format_for_every_path_or_one_per_path() {
        let all = parse("fp8").unwrap();
        assert_eq!(
            (all.of(PathId::A), all.of(PathId::B)),
            (Some(ExpertFormat::Fp8), Some(ExpertFormat::Fp8))
        );
        let per = parse("A=bf16, B=fp8").unwrap();
        assert_eq!(per.of(PathId::A), Some(ExpertFormat::Bf16));
        assert_eq!(per.of(PathId::B), Some(ExpertFormat::Fp8));
        assert_eq!(parse("B=fp8").unwrap().of(PathId::A), None);
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        for (bad, needle) in [
            ("fp16", "expected bf16, fp8"),
            (
                "A=fp4",
                "path A: unknown expert format `fp4`; expected bf16 or fp8",
            ),
            ("D=fp8", "unknown path `D`"),
            ("A=fp8,A=bf16", "path A is given twice"),
            ("C=fp8", "path C"),
            ("", "expected bf16, fp8"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn the_pairs_users_compare() {
        // A: FP8 routed experts with the separate shared expert in bf16; B: all FP8.
        let paths = apply(
            pair(),
            &parse("fp8").unwrap(),
            Some(&parse("A=bf16").unwrap()),
        )
        .unwrap();
        assert_eq!(
            (paths[0].experts, paths[0].shared_experts),
            (ExpertFormat::Fp8, ExpertFormat::Bf16)
        );
        assert_eq!(
            (paths[1].experts, paths[1].shared_experts),
            (ExpertFormat::Fp8, ExpertFormat::Fp8)
        );
        // The default: bf16 everywhere, the specs unchanged.
        assert_eq!(
            apply(pair(), &PathFormats::default(), None).unwrap(),
            pair()
        );
        // B's shared slot cannot differ from its routed experts.
        let err = apply(
            pair(),
            &parse("B=fp8").unwrap(),
            Some(&parse("B=bf16").unwrap()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--shared-experts") && err.contains("path B"),
            "{err}"
        );
    }
}
