//! The words for what the engine reports as numbers and enums: contract verdicts and their
//! violations. The TUI, the summary and the exports all word them here, so they read alike.

use crate::engine::step::{ContractCheck, ContractViolation};

/// One violation, e.g. "shared weight 0.400, expected 1.000".
pub fn violation(v: &ContractViolation) -> String {
    match *v {
        ContractViolation::SharedWeight { got, expected } => {
            format!("shared weight {got:.3}, expected {expected:.3}")
        }
        ContractViolation::RoutedSum { got, expected } => {
            format!("routed sum {got:.3}, expected {expected:.3}")
        }
        ContractViolation::NonFinite { first, count } => {
            format!("invalid: {count} non-finite values, first in {first}")
        }
    }
}

/// What broke, joined by "; ".
pub fn violations(vs: &[ContractViolation]) -> String {
    let words: Vec<String> = vs.iter().map(violation).collect();
    words.join("; ")
}

/// The verdict of one check: "contract holds", or what broke.
pub fn verdict(c: &ContractCheck) -> String {
    match (c.ok, c.violations.is_empty()) {
        (true, _) => "contract holds".into(),
        // A record that says "violated" and not how (hand-made or damaged).
        (false, true) => format!(
            "contract violated (largest deviation: routed {:.3e}, shared {:.3e})",
            c.routed_max_dev, c.shared_max_dev
        ),
        (false, false) => violations(&c.violations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::step::Stats;

    #[test]
    fn violations_read_as_they_always_have() {
        let shared = ContractViolation::SharedWeight {
            got: 0.4,
            expected: 1.0,
        };
        let routed = ContractViolation::RoutedSum {
            got: 7.992,
            expected: 2.827,
        };
        assert_eq!(violation(&shared), "shared weight 0.400, expected 1.000");
        assert_eq!(
            violations(&[shared, routed]),
            "shared weight 0.400, expected 1.000; routed sum 7.992, expected 2.827"
        );
        let mut c = ContractCheck {
            ok: true,
            expected_routed_sum: Stats::default(),
            expected_shared: None,
            routed_max_dev: 0.0,
            shared_max_dev: 0.5,
            violations: Vec::new(),
        };
        assert_eq!(verdict(&c), "contract holds");
        c.ok = false;
        assert_eq!(
            verdict(&c),
            "contract violated (largest deviation: routed 0.000e0, shared 5.000e-1)"
        );
        c.violations.push(routed);
        assert_eq!(verdict(&c), "routed sum 7.992, expected 2.827");
    }
}
