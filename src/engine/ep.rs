//! Expert parallelism on one machine: the experts placed on N ranks (contiguous as engines do
//! by default, round-robin, EPLB-balanced from the last W steps with R redundant copies), and per
//! step what each placement costs: tokens per rank, the dispatch/combine all-to-all bytes per
//! rank pair, the straggler rank's expert-GEMM time and the step's estimated EP time.
//!
//! Model: tokens live on their source rank as in data-parallel attention (token t of T on rank
//! t·N/T); a token goes once to each rank holding one of its experts (dispatch) and comes back
//! once (combine), hidden × 2 bytes (bf16) each way; a hot expert's tokens are split evenly over
//! its copies. The step estimate is the straggler's expert GEMM + dispatch + combine, each
//! all-to-all taking the busiest rank's off-rank bytes (the larger of sent and received) at the
//! link bandwidth.

use super::ep_eplb;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The most ranks `--ep` takes.
pub const MAX_RANKS: usize = 512;
/// NVLink-class link per GPU: 450 GB/s each way (H100/H200 NVLink 4), in Gbit/s.
pub const NVLINK_GBPS: f64 = 3600.0;
/// InfiniBand-class link per GPU: one 400 Gbit/s NDR port.
pub const INFINIBAND_GBPS: f64 = 400.0;
/// GPUs per node: placements above this many ranks span nodes (and use InfiniBand by default).
pub const RANKS_PER_NODE: usize = 8;
/// Bytes per hidden element on the wire (bf16).
pub const WIRE_BYTES: usize = 2;
/// The per-pair byte matrix is kept in StepRecords up to this many ranks (N² numbers a step).
pub const PAIR_MATRIX_MAX_RANKS: usize = 16;

/// What `--ep`, `--redundant`, `--ep-window` and `--link-gbps` ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpSpec {
    pub ranks: usize,
    pub redundant: usize,
    pub window: usize,
    pub link_gbps: f64,
}

impl EpSpec {
    /// Checks the values; the link defaults to NVLink-class within a node (N ≤ 8) and to
    /// InfiniBand-class across nodes.
    pub fn new(
        ranks: usize,
        redundant: usize,
        window: usize,
        link_gbps: Option<f64>,
    ) -> Result<EpSpec> {
        if !(1..=MAX_RANKS).contains(&ranks) {
            bail!("--ep {ranks} is out of range; expected 1..={MAX_RANKS} ranks");
        }
        if window == 0 {
            bail!("--ep-window must be at least 1 step");
        }
        let link_gbps = link_gbps.unwrap_or(Self::default_link_gbps(ranks));
        if !(link_gbps.is_finite() && link_gbps > 0.0) {
            bail!("--link-gbps {link_gbps} is not a bandwidth; expected Gbit/s > 0");
        }
        Ok(EpSpec {
            ranks,
            redundant,
            window,
            link_gbps,
        })
    }

    pub fn default_link_gbps(ranks: usize) -> f64 {
        if ranks <= RANKS_PER_NODE {
            NVLINK_GBPS
        } else {
            INFINIBAND_GBPS
        }
    }

    /// Nodes of the hierarchical packing: N / 8 when N is a multiple of 8 above 8, else one.
    pub fn nodes(&self) -> usize {
        if self.ranks > RANKS_PER_NODE && self.ranks.is_multiple_of(RANKS_PER_NODE) {
            self.ranks / RANKS_PER_NODE
        } else {
            1
        }
    }
}

/// How experts are put on ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementKind {
    /// Experts [r·E/N, (r+1)·E/N) on rank r, no copies: the engines' default.
    Contiguous,
    /// Expert i on rank i mod N, no copies.
    RoundRobin,
    /// EPLB from the last W steps' load, with the redundant copies.
    Eplb,
}

impl PlacementKind {
    pub const ALL: [PlacementKind; 3] = [
        PlacementKind::Contiguous,
        PlacementKind::RoundRobin,
        PlacementKind::Eplb,
    ];
    pub fn name(self) -> &'static str {
        match self {
            PlacementKind::Contiguous => "contiguous",
            PlacementKind::RoundRobin => "round-robin",
            PlacementKind::Eplb => "eplb",
        }
    }
}

/// Physical expert slots on ranks: per rank, the logical expert each slot holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub kind: PlacementKind,
    pub ranks: Vec<Vec<u32>>,
}

impl Placement {
    pub fn contiguous(experts: usize, ranks: usize) -> Placement {
        Placement {
            kind: PlacementKind::Contiguous,
            ranks: (0..ranks)
                .map(|r| {
                    (r * experts / ranks..(r + 1) * experts / ranks)
                        .map(|e| e as u32)
                        .collect()
                })
                .collect(),
        }
    }

    pub fn round_robin(experts: usize, ranks: usize) -> Placement {
        Placement {
            kind: PlacementKind::RoundRobin,
            ranks: (0..ranks)
                .map(|r| (r..experts).step_by(ranks).map(|e| e as u32).collect())
                .collect(),
        }
    }

    /// EPLB over per-expert `load` (see `ep_eplb`).
    pub fn eplb(load: &[f64], spec: &EpSpec, groups: usize) -> Result<Placement> {
        Ok(Placement {
            kind: PlacementKind::Eplb,
            ranks: ep_eplb::place(load, spec.ranks, spec.redundant, groups, spec.nodes())?,
        })
    }

    /// Physical slot → logical expert, ranks one after the other (EPLB's `phy2log`, one layer).
    pub fn phy2log(&self) -> Vec<u32> {
        self.ranks.iter().flatten().copied().collect()
    }

    /// Copies of each logical expert (EPLB's `logcnt`).
    pub fn logcnt(&self, experts: usize) -> Vec<u32> {
        let mut cnt = vec![0u32; experts];
        for &e in self.ranks.iter().flatten() {
            if let Some(c) = cnt.get_mut(e as usize) {
                *c += 1;
            }
        }
        cnt
    }

    /// Logical expert → its physical slots, padded with −1 to the most copies (`log2phy`).
    pub fn log2phy(&self, experts: usize) -> Vec<Vec<i64>> {
        let mut out = vec![Vec::new(); experts];
        for (p, &e) in self.phy2log().iter().enumerate() {
            if let Some(v) = out.get_mut(e as usize) {
                v.push(p as i64);
            }
        }
        let width = out.iter().map(Vec::len).max().unwrap_or(0);
        out.iter_mut().for_each(|v| v.resize(width, -1));
        out
    }

    /// Per logical expert, the ranks of its copies in copy order.
    fn copies(&self, experts: usize) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); experts];
        for (r, slots) in self.ranks.iter().enumerate() {
            for &e in slots {
                if let Some(v) = out.get_mut(e as usize) {
                    v.push(r);
                }
            }
        }
        out
    }
}

/// Where one step's tokens go under a placement.
#[derive(Clone, Debug, PartialEq)]
pub struct Traffic {
    /// Token-expert assignments each rank computes (sums to T·K).
    pub tokens_per_rank: Vec<u64>,
    /// [src × dst] tokens sent for dispatch (a token goes once to each rank it needs).
    pub pair_tokens: Vec<u64>,
    /// Per rank, (logical expert, tokens) of each physical slot with tokens: its GEMM's share.
    pub rank_load: Vec<Vec<(u32, u32)>>,
}

/// Routes `ids` [T × k] (routed experts only) over `placement`. Every expert of the ids must be
/// placed (all are in every placement here).
pub fn traffic(placement: &Placement, experts: usize, ids: &[u32], k: usize) -> Traffic {
    let n = placement.ranks.len();
    let t = ids.len() / k.max(1);
    let copies = placement.copies(experts);
    let mut seen = vec![0u32; experts];
    let mut tokens_per_rank = vec![0u64; n];
    let mut pair_tokens = vec![0u64; n * n];
    // [rank][logical expert] tokens; sparse rows would save memory only for N·E > 10⁵.
    let mut per_slot = vec![vec![0u32; experts]; n];
    let mut dst_seen = vec![usize::MAX; n];
    for (tok, row) in ids.chunks(k.max(1)).enumerate() {
        let src = tok * n / t.max(1);
        for &e in row {
            let c = &copies[e as usize];
            let dst = c[seen[e as usize] as usize % c.len()];
            seen[e as usize] += 1;
            tokens_per_rank[dst] += 1;
            per_slot[dst][e as usize] += 1;
            if dst_seen[dst] != tok {
                dst_seen[dst] = tok;
                pair_tokens[src * n + dst] += 1;
            }
        }
    }
    let rank_load = per_slot
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(e, &c)| (e as u32, c))
                .collect()
        })
        .collect();
    Traffic {
        tokens_per_rank,
        pair_tokens,
        rank_load,
    }
}

/// Where a straggler's GEMM time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmSource {
    /// The CPU backend's per-expert cost model, measured at start.
    Model,
    /// The rank's share of the grouped GEMM timed on the GPU (median of 3).
    Measured,
}

/// A rank's expert-GEMM time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmTime {
    pub us: f64,
    pub source: GemmSource,
}

/// Times one rank's share of the grouped GEMM: (logical expert, tokens) of each of its slots.
pub type RankGemm<'a> = dyn FnMut(&[(u32, u32)]) -> Result<Option<GemmTime>> + 'a;

/// One placement's figures for one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpPlacementRecord {
    pub placement: Placement,
    pub tokens_per_rank: Vec<u64>,
    pub max_tokens: u64,
    pub mean_tokens: f64,
    /// The most loaded rank (the lowest of equals).
    pub straggler: usize,
    /// Largest off-rank bytes one rank sends or receives in the dispatch (the combine mirrors it).
    pub a2a_max_rank_bytes: u64,
    /// [src × dst] dispatch bytes, kept up to `PAIR_MATRIX_MAX_RANKS` ranks.
    pub pair_bytes: Option<Vec<u64>>,
    /// Dispatch + combine at the link bandwidth, µs.
    pub a2a_us: f64,
    pub straggler_gemm: Option<GemmTime>,
    /// Straggler GEMM + all-to-all, where the GEMM time is known.
    pub step_us: Option<f64>,
}

impl EpPlacementRecord {
    /// max / mean tokens per rank (1 = balanced).
    pub fn imbalance(&self) -> f64 {
        if self.mean_tokens > 0.0 {
            self.max_tokens as f64 / self.mean_tokens
        } else {
            1.0
        }
    }
}

/// What one step looks like under each placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpRecord {
    pub spec: EpSpec,
    /// Steps in the window EPLB placed from (this one included).
    pub window_steps: usize,
    /// In `PlacementKind::ALL` order.
    pub placements: Vec<EpPlacementRecord>,
}

impl EpRecord {
    pub fn get(&self, kind: PlacementKind) -> Option<&EpPlacementRecord> {
        self.placements.iter().find(|p| p.placement.kind == kind)
    }
}

/// Keeps the load window and evaluates every placement per step.
pub struct EpTracker {
    spec: EpSpec,
    experts: usize,
    groups: usize,
    hidden: usize,
    window: VecDeque<Vec<u64>>,
}

impl EpTracker {
    pub fn new(spec: EpSpec, experts: usize, groups: usize, hidden: usize) -> Result<EpTracker> {
        // Fail at start, not at the first step, when EPLB cannot split the slots.
        ep_eplb::place(&vec![0.0; experts], spec.ranks, spec.redundant, groups, 1)?;
        Ok(EpTracker {
            spec,
            experts,
            groups,
            hidden,
            window: VecDeque::new(),
        })
    }

    pub fn spec(&self) -> &EpSpec {
        &self.spec
    }

    /// One step's routed `ids` [T × k]; `gemm` times a rank's share of the grouped GEMM.
    pub fn step(&mut self, ids: &[u32], k: usize, gemm: &mut RankGemm<'_>) -> Result<EpRecord> {
        let mut load = vec![0u64; self.experts];
        ids.iter().for_each(|&e| {
            if let Some(c) = load.get_mut(e as usize) {
                *c += 1;
            }
        });
        self.window.push_back(load);
        while self.window.len() > self.spec.window {
            self.window.pop_front();
        }
        let summed: Vec<f64> = (0..self.experts)
            .map(|e| self.window.iter().map(|w| w[e] as f64).sum())
            .collect();
        let (n, e) = (self.spec.ranks, self.experts);
        let placements = [
            Placement::contiguous(e, n),
            Placement::round_robin(e, n),
            Placement::eplb(&summed, &self.spec, self.groups)?,
        ];
        let records = placements
            .into_iter()
            .map(|p| self.evaluate(p, ids, k, gemm))
            .collect::<Result<Vec<_>>>()?;
        Ok(EpRecord {
            spec: self.spec.clone(),
            window_steps: self.window.len(),
            placements: records,
        })
    }

    fn evaluate(
        &self,
        placement: Placement,
        ids: &[u32],
        k: usize,
        gemm: &mut RankGemm<'_>,
    ) -> Result<EpPlacementRecord> {
        let n = self.spec.ranks;
        let tr = traffic(&placement, self.experts, ids, k);
        let (straggler, &max_tokens) = tr
            .tokens_per_rank
            .iter()
            .enumerate()
            .rev()
            .max_by_key(|(_, &v)| v)
            .unwrap_or((0, &0));
        let mean_tokens = tr.tokens_per_rank.iter().sum::<u64>() as f64 / n as f64;
        let token_bytes = (self.hidden * WIRE_BYTES) as u64;
        let off_rank = |r: usize| {
            let sent: u64 = (0..n)
                .filter(|&d| d != r)
                .map(|d| tr.pair_tokens[r * n + d])
                .sum();
            let recv: u64 = (0..n)
                .filter(|&s| s != r)
                .map(|s| tr.pair_tokens[s * n + r])
                .sum();
            sent.max(recv) * token_bytes
        };
        let a2a_max_rank_bytes = (0..n).map(off_rank).max().unwrap_or(0);
        let a2a_us = 2.0 * a2a_max_rank_bytes as f64 * 8.0 / (self.spec.link_gbps * 1e3);
        let straggler_gemm = gemm(&tr.rank_load[straggler])?;
        Ok(EpPlacementRecord {
            tokens_per_rank: tr.tokens_per_rank,
            max_tokens,
            mean_tokens,
            straggler,
            a2a_max_rank_bytes,
            pair_bytes: (n <= PAIR_MATRIX_MAX_RANKS)
                .then(|| tr.pair_tokens.iter().map(|&c| c * token_bytes).collect()),
            a2a_us,
            step_us: straggler_gemm.map(|g| g.us + a2a_us),
            straggler_gemm,
            placement,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_checks_ranges_and_picks_the_link() {
        assert!(EpSpec::new(0, 0, 1, None).is_err());
        assert!(EpSpec::new(513, 0, 1, None)
            .unwrap_err()
            .to_string()
            .contains("1..=512"));
        assert!(EpSpec::new(8, 0, 0, None).is_err());
        assert!(EpSpec::new(8, 0, 1, Some(-1.0)).is_err());
        assert_eq!(EpSpec::new(8, 0, 1, None).unwrap().link_gbps, NVLINK_GBPS);
        assert_eq!(
            EpSpec::new(16, 0, 1, None).unwrap().link_gbps,
            INFINIBAND_GBPS
        );
        assert_eq!(EpSpec::new(64, 0, 1, None).unwrap().nodes(), 8);
        assert_eq!(EpSpec::new(12, 0, 1, None).unwrap().nodes(), 1);
    }

    #[test]
    fn eplb_shape_of_a_placement() {
        let p = Placement {
            kind: PlacementKind::Eplb,
            ranks: vec![vec![0, 1, 1], vec![1, 2, 3]],
        };
        assert_eq!(p.phy2log(), vec![0, 1, 1, 1, 2, 3]);
        assert_eq!(p.logcnt(4), vec![1, 3, 1, 1]);
        assert_eq!(
            p.log2phy(4),
            vec![
                vec![0, -1, -1],
                vec![1, 2, 3],
                vec![4, -1, -1],
                vec![5, -1, -1]
            ]
        );
    }

    #[test]
    fn dispatch_counts_a_token_once_per_rank_and_splits_hot_experts() {
        // 2 ranks, 4 experts; expert 0 has copies on both ranks.
        let p = Placement {
            kind: PlacementKind::Eplb,
            ranks: vec![vec![0, 1, 2], vec![0, 3, 3]],
        };
        let ids = [0, 1, 0, 2, 0, 3, 0, 3];
        let tr = traffic(&p, 4, &ids, 2);
        assert_eq!(tr.tokens_per_rank.iter().sum::<u64>(), 8);
        // Expert 0's four tokens alternate over its copies.
        assert_eq!(tr.tokens_per_rank, vec![4, 4]);
        // Tokens 0,1 live on rank 0, 2,3 on rank 1; token 0 needs rank 0 only, token 1 both.
        assert_eq!(tr.pair_tokens, vec![2, 1, 1, 2]);
    }
}
