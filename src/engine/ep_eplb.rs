//! EPLB-balanced placement, written after the algorithm DeepSeek's EPLB describes (hierarchical
//! balanced packing with redundant experts):
//! 1. expert groups are packed onto nodes so that every node carries about the same load;
//! 2. inside each node, the node's share of the redundant slots goes, one at a time, to the
//!    expert whose load per copy is highest (each logical expert keeps at least one copy);
//! 3. the node's physical experts (load = the expert's load / its copies) are packed onto the
//!    node's ranks, the same number of slots on each.
//!
//! Where the groups do not split over the nodes (or there is one node) it is the same with one
//! node: replicate globally, then pack.

use anyhow::{bail, Result};

/// Packs `weights` into `packs` packs holding exactly `weights.len() / packs` items each:
/// heaviest first, each into the lightest pack that still has room (ties: the lower pack).
/// Returns the pack of each item.
pub fn balanced_packing(weights: &[f64], packs: usize) -> Vec<usize> {
    let n = weights.len();
    let per_pack = n / packs.max(1);
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: equal weights keep their index order.
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut load = vec![0.0f64; packs];
    let mut count = vec![0usize; packs];
    let mut pack_of = vec![0usize; n];
    for i in order {
        let p = (0..packs)
            .filter(|&p| count[p] < per_pack)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .unwrap_or(0);
        pack_of[i] = p;
        load[p] += weights[i];
        count[p] += 1;
    }
    pack_of
}

/// Copies of each of `weights.len()` experts over `slots` ≥ experts physical slots: one each,
/// then each extra slot to the expert with the highest load per copy (ties: the lower expert).
pub fn replicate(weights: &[f64], slots: usize) -> Vec<u32> {
    let mut cnt = vec![1u32; weights.len()];
    for _ in weights.len()..slots {
        let best = (0..weights.len())
            .max_by(|&a, &b| {
                let (x, y) = (weights[a] / cnt[a] as f64, weights[b] / cnt[b] as f64);
                x.total_cmp(&y).then(b.cmp(&a))
            })
            .unwrap_or(0);
        cnt[best] += 1;
    }
    cnt
}

/// The physical slots of `ranks` ranks (E + R of them, the same count on each), as the logical
/// expert each holds, per rank (sorted by logical id).
pub fn place(
    weights: &[f64],
    ranks: usize,
    redundant: usize,
    groups: usize,
    nodes: usize,
) -> Result<Vec<Vec<u32>>> {
    let e = weights.len();
    let slots = e + redundant;
    if ranks == 0 || !slots.is_multiple_of(ranks) {
        bail!(
            "EPLB needs the same number of slots on every rank: E + R = {e} + {redundant} = {slots} does not divide by {ranks} ranks; choose --redundant so that it does"
        );
    }
    let hierarchical = nodes > 1
        && groups > 0
        && e.is_multiple_of(groups)
        && groups.is_multiple_of(nodes)
        && ranks.is_multiple_of(nodes);
    let (nodes, groups) = if hierarchical {
        (nodes, groups)
    } else {
        (1, 1)
    };
    let per_group = e / groups;
    let group_load: Vec<f64> = weights.chunks(per_group).map(|g| g.iter().sum()).collect();
    let node_of_group = balanced_packing(&group_load, nodes);
    let ranks_per_node = ranks / nodes;
    let mut out = vec![Vec::new(); ranks];
    for node in 0..nodes {
        let experts: Vec<usize> = (0..groups)
            .filter(|&g| node_of_group[g] == node)
            .flat_map(|g| g * per_group..(g + 1) * per_group)
            .collect();
        let local: Vec<f64> = experts.iter().map(|&x| weights[x]).collect();
        let cnt = replicate(&local, slots / nodes);
        let (mut phys, mut phys_load) = (Vec::new(), Vec::new());
        for (i, &c) in cnt.iter().enumerate() {
            for _ in 0..c {
                phys.push(experts[i] as u32);
                phys_load.push(local[i] / c as f64);
            }
        }
        for (slot, pack) in balanced_packing(&phys_load, ranks_per_node)
            .into_iter()
            .enumerate()
        {
            out[node * ranks_per_node + pack].push(phys[slot]);
        }
    }
    out.iter_mut().for_each(|r| r.sort_unstable());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_fills_every_pack_exactly_and_balances() {
        let w = [10.0, 1.0, 1.0, 1.0, 9.0, 2.0];
        let p = balanced_packing(&w, 2);
        let mut count = [0; 2];
        let mut load = [0.0; 2];
        for (i, &pk) in p.iter().enumerate() {
            count[pk] += 1;
            load[pk] += w[i];
        }
        assert_eq!(count, [3, 3]);
        assert!((load[0] - load[1]).abs() <= 2.0, "{load:?}");
    }

    #[test]
    fn redundant_slots_go_to_the_hottest_expert_per_copy() {
        assert_eq!(replicate(&[8.0, 1.0, 3.0], 5), vec![3, 1, 1]);
        assert_eq!(replicate(&[0.0, 0.0], 3), vec![2, 1]);
    }

    #[test]
    fn every_expert_keeps_a_copy_and_slots_are_even() {
        let w: Vec<f64> = (0..16).map(|i| if i < 2 { 100.0 } else { 1.0 }).collect();
        for (groups, nodes) in [(4, 2), (1, 1), (3, 2)] {
            let r = place(&w, 4, 4, groups, nodes).unwrap();
            assert!(r.iter().all(|x| x.len() == 5), "{r:?}");
            for e in 0..16u32 {
                assert!(r.iter().flatten().any(|&x| x == e), "expert {e} lost");
            }
        }
        let err = place(&w, 3, 0, 1, 1).unwrap_err().to_string();
        assert!(
            err.contains("16 + 0 = 16") && err.contains("3 ranks"),
            "{err}"
        );
    }
}
