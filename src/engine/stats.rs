//! The one statistics module: load imbalance and balancedness, exact percentiles and their
//! distributions, achieved bandwidth, and speedups between paths. The views, the session
//! summary, the exports and `bench` all call these, so a figure means the same everywhere.

use super::paths::PathId;
use serde::Serialize;
use std::fmt;

/// Figures of a load vector (tokens per routed expert).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadBalance {
    pub mean: f64,
    pub max: u64,
    /// max / mean (1 = perfectly even; 0 when nothing was routed).
    pub max_over_mean: f64,
    /// Coefficient of variation: standard deviation / mean.
    pub cv: f64,
    /// mean / max, as vLLM's EPLB logs it (1 = perfectly even).
    pub balancedness: f64,
    /// Experts that got no token.
    pub idle: usize,
    /// (expert, load), most loaded first.
    pub hottest: Vec<(usize, u64)>,
    /// (expert, load), least loaded first.
    pub coldest: Vec<(usize, u64)>,
}

/// `a / b`, 0 where `b` is not positive (an empty load is not infinitely uneven).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The figures of `load`, with its `top` hottest and coldest experts (ties toward the lower id).
pub fn load_balance(load: &[u64], top: usize) -> LoadBalance {
    let n = load.len().max(1) as f64;
    let mean = load.iter().sum::<u64>() as f64 / n;
    let max = load.iter().copied().max().unwrap_or(0);
    let var = load.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / n;
    let mut order: Vec<usize> = (0..load.len()).collect();
    order.sort_by(|&a, &b| load[b].cmp(&load[a]).then(a.cmp(&b)));
    let hottest = order.iter().take(top).map(|&i| (i, load[i])).collect();
    order.sort_by(|&a, &b| load[a].cmp(&load[b]).then(a.cmp(&b)));
    let coldest = order.iter().take(top).map(|&i| (i, load[i])).collect();
    LoadBalance {
        mean,
        max,
        max_over_mean: imbalance(load),
        cv: ratio(var.sqrt(), mean),
        balancedness: balancedness(load),
        idle: load.iter().filter(|&&l| l == 0).count(),
        hottest,
        coldest,
    }
}

/// Busiest expert's load over the mean expert's; 0 when nothing was routed.
pub fn imbalance(load: &[u64]) -> f64 {
    let total: u64 = load.iter().sum();
    let max = load.iter().copied().max().unwrap_or(0);
    ratio(max as f64 * load.len() as f64, total as f64)
}

/// Mean expert's load over the busiest one's (the inverse of [`imbalance`]); 0 when nothing
/// was routed.
pub fn balancedness(load: &[u64]) -> f64 {
    let total: u64 = load.iter().sum();
    let max = load.iter().copied().max().unwrap_or(0);
    ratio(total as f64, max as f64 * load.len() as f64)
}

/// Nearest-rank percentile of values sorted ascending, `q` in [0, 1]; 0 when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Distribution of one quantity, percentiles exact.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Dist {
    pub n: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// NaN or infinite values seen (not in the other fields).
    pub nonfinite: u64,
}

/// Collects values for a [`Dist`]. It keeps every finite value (8 bytes each), so the
/// percentiles are exact: a 100 000-step session with twenty timed stages holds 16 MB.
#[derive(Clone, Debug, Default)]
pub struct DistBuilder {
    values: Vec<f64>,
    nonfinite: u64,
}

impl DistBuilder {
    /// Adds a value; NaN and infinities are only counted (they have no percentile).
    pub fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.values.push(v);
        } else {
            self.nonfinite += 1;
        }
    }

    /// Finite values added so far.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn finish(mut self) -> Dist {
        Dist::of_finite(&mut self.values, self.nonfinite)
    }
}

impl Dist {
    /// The distribution of `values` (NaN and infinities counted apart).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Dist {
        let mut b = DistBuilder::default();
        values.into_iter().for_each(|v| b.add(v));
        b.finish()
    }

    fn of_finite(values: &mut [f64], nonfinite: u64) -> Dist {
        if values.is_empty() {
            return Dist {
                nonfinite,
                ..Dist::default()
            };
        }
        values.sort_by(f64::total_cmp);
        Dist {
            n: values.len() as u64,
            mean: values.iter().sum::<f64>() / values.len() as f64,
            min: values[0],
            max: values[values.len() - 1],
            p50: percentile(values, 0.5),
            p90: percentile(values, 0.9),
            p99: percentile(values, 0.99),
            nonfinite,
        }
    }
}

/// Achieved bandwidth in GB/s (10⁹ bytes per second) of `bytes` moved in `us` microseconds;
/// None where the time is not a positive finite number.
pub fn gb_per_s(bytes: u64, us: f64) -> Option<f64> {
    (us > 0.0 && us.is_finite()).then(|| bytes as f64 / (us * 1e3))
}

/// How much faster one path ran than another. It always reads as "faster ×ratio ≥ 1 than
/// slower", so a label can never put the ratio the wrong way round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Speedup {
    pub faster: PathId,
    pub slower: PathId,
    /// slower's time over faster's (≥ 1).
    pub ratio: f64,
}

impl Speedup {
    /// Compares two paths' times (µs); None unless both are positive and finite.
    pub fn of(a: (PathId, f64), b: (PathId, f64)) -> Option<Speedup> {
        let valid = |t: f64| t > 0.0 && t.is_finite();
        if !valid(a.1) || !valid(b.1) {
            return None;
        }
        let (fast, slow) = if b.1 < a.1 { (b, a) } else { (a, b) };
        Some(Speedup {
            faster: fast.0,
            slower: slow.0,
            ratio: slow.1 / fast.1,
        })
    }

    /// The ratio of `of`'s time over `path`'s: > 1 where `path` is the faster one.
    pub fn of_path(&self, path: PathId) -> f64 {
        if path == self.faster {
            self.ratio
        } else {
            1.0 / self.ratio
        }
    }
}

impl Speedup {
    /// "B 1.10× faster than A"; "A and B the same (1.00×)" where the ratio rounds to 1; each
    /// path called by `name` (the views pass "C fused_router.cu").
    pub fn phrase(&self, name: &dyn Fn(PathId) -> String) -> String {
        if self.ratio < 1.005 {
            let (a, b) = (self.faster.min(self.slower), self.faster.max(self.slower));
            format!("{} and {} the same (1.00×)", name(a), name(b))
        } else {
            let (fast, slow) = (name(self.faster), name(self.slower));
            format!("{fast} {:.2}× faster than {slow}", self.ratio)
        }
    }
}

impl fmt::Display for Speedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.phrase(&|id| id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_of_an_uneven_load() {
        let b = load_balance(&[4, 0, 2, 2], 2);
        assert_eq!(
            (b.mean, b.max, b.max_over_mean, b.balancedness),
            (2.0, 4, 2.0, 0.5)
        );
        assert!((b.cv - (2.0f64).sqrt() / 2.0).abs() < 1e-12);
        assert_eq!(b.idle, 1);
        assert_eq!(b.hottest, vec![(0, 4), (2, 2)]);
        assert_eq!(b.coldest, vec![(1, 0), (2, 2)]);
    }

    #[test]
    fn even_and_empty_loads_divide_by_nothing() {
        let b = load_balance(&[3, 3, 3], 1);
        assert_eq!((b.balancedness, b.cv, b.max_over_mean), (1.0, 0.0, 1.0));
        let none = load_balance(&[0, 0], 1);
        assert_eq!(
            (none.balancedness, none.cv, none.max_over_mean),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(imbalance(&[8, 0, 0, 0]), 4.0);
        assert_eq!(balancedness(&[8, 0, 0, 0]), 0.25);
        assert_eq!((imbalance(&[]), balancedness(&[])), (0.0, 0.0));
    }

    #[test]
    fn percentiles_are_exact_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        // 1..=1000 shuffled by a stride coprime with 1000.
        let d = Dist::of((0..1000u64).map(|i| ((i * 617) % 1000 + 1) as f64));
        assert_eq!(
            (d.n, d.min, d.max, d.p50, d.p90, d.p99),
            (1000, 1.0, 1000.0, 500.0, 900.0, 990.0)
        );
        assert!((d.mean - 500.5).abs() < 1e-9);
    }

    #[test]
    fn nonfinite_values_are_counted_apart() {
        let d = Dist::of([0.0, 0.0, 0.0, 4.0, f64::NAN, f64::INFINITY, -2.0]);
        assert_eq!(
            (d.n, d.nonfinite, d.min, d.max, d.p50, d.p99),
            (5, 2, -2.0, 4.0, 0.0, 4.0)
        );
        assert_eq!(Dist::of([]), Dist::default());
    }

    #[test]
    fn bandwidth_needs_a_time() {
        assert_eq!(gb_per_s(2_000_000, 1000.0), Some(2.0));
        assert_eq!(gb_per_s(1, 0.0), None);
        assert_eq!(gb_per_s(1, f64::NAN), None);
    }

    #[test]
    fn a_speedup_words_itself_the_right_way_round() {
        let s = Speedup::of((PathId::A, 110.0), (PathId::B, 100.0)).unwrap();
        assert_eq!(s.to_string(), "B 1.10× faster than A");
        assert!((s.of_path(PathId::B) - 1.1).abs() < 1e-12);
        // B slower: the label names A as the faster one, never "B 0.99×".
        let s = Speedup::of((PathId::A, 99.0), (PathId::B, 100.0)).unwrap();
        assert_eq!(s.faster, PathId::A);
        assert_eq!(s.to_string(), "A 1.01× faster than B");
        let s = Speedup::of((PathId::A, 99.8), (PathId::B, 100.0)).unwrap();
        assert_eq!(s.to_string(), "A and B the same (1.00×)");
        let s = Speedup::of((PathId::A, 50.0), (PathId::C, 100.0)).unwrap();
        assert_eq!(s.to_string(), "A 2.00× faster than C");
        assert_eq!(Speedup::of((PathId::A, 0.0), (PathId::B, 1.0)), None);
    }
}
