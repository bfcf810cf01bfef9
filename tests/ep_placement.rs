//! Expert-parallel placements: every placement computes exactly T·K token-expert assignments,
//! EPLB never leaves its straggler with more tokens than the contiguous placement on the skewed
//! sample trace and strictly fewer where a few experts are hot.

use moescope::engine::config::MoeConfig;
use moescope::engine::ep::{
    traffic, EpSpec, EpTracker, GemmSource, GemmTime, Placement, PlacementKind,
};
use moescope::engine::trace::RoutingTrace;
use std::path::Path;

fn skewed() -> RoutingTrace {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/routing/deepseek-v3-skew.safetensors");
    RoutingTrace::read(&path, &MoeConfig::preset("deepseek-v3").unwrap(), None).unwrap()
}

/// A GEMM time of one unit per token, so step estimates can be compared.
fn per_token(slots: &[(u32, u32)]) -> anyhow::Result<Option<GemmTime>> {
    Ok(Some(GemmTime {
        us: slots.iter().map(|s| s.1 as f64).sum(),
        source: GemmSource::Model,
    }))
}

#[test]
fn loads_per_rank_sum_to_t_times_k_for_every_placement() {
    let trace = skewed();
    for (ranks, redundant) in [
        (1, 0),
        (8, 0),
        (8, 8),
        (16, 16),
        (64, 64),
        (128, 0),
        (512, 256),
        (512, 768),
    ] {
        let spec = EpSpec::new(ranks, redundant, 4, None).unwrap();
        let mut tracker = EpTracker::new(spec, 256, 8, 7168).unwrap();
        for s in 0..trace.steps as u64 {
            let b = trace.batch(s);
            let rec = tracker.step(&b.ids, b.k, &mut per_token).unwrap();
            assert_eq!(rec.placements.len(), 3);
            for p in &rec.placements {
                let kind = p.placement.kind.name();
                assert_eq!(p.tokens_per_rank.len(), ranks, "{kind}");
                assert_eq!(
                    p.tokens_per_rank.iter().sum::<u64>(),
                    (trace.tokens * trace.k) as u64,
                    "{kind} at N={ranks}, R={redundant}"
                );
                assert_eq!(p.max_tokens, p.tokens_per_rank[p.straggler]);
                let slots = p.placement.phy2log().len();
                let want = if p.placement.kind == PlacementKind::Eplb {
                    256 + redundant
                } else {
                    256
                };
                assert_eq!(slots, want, "{kind}");
                assert!(
                    p.placement.logcnt(256).iter().all(|&c| c >= 1),
                    "{kind}: an expert without a copy"
                );
            }
        }
    }
}

#[test]
fn eplb_never_loads_the_straggler_more_than_contiguous_on_the_skewed_trace() {
    let trace = skewed();
    for (ranks, redundant, window) in [(8, 0, 1), (8, 8, 4), (16, 16, 4), (32, 32, 2), (64, 64, 4)]
    {
        let spec = EpSpec::new(ranks, redundant, window, None).unwrap();
        let mut tracker = EpTracker::new(spec, 256, 8, 7168).unwrap();
        for s in 0..trace.steps as u64 {
            let b = trace.batch(s);
            let rec = tracker.step(&b.ids, b.k, &mut per_token).unwrap();
            let cont = rec.get(PlacementKind::Contiguous).unwrap();
            let eplb = rec.get(PlacementKind::Eplb).unwrap();
            assert!(
                eplb.max_tokens <= cont.max_tokens,
                "N={ranks} R={redundant} W={window} step {s}: EPLB {} > contiguous {}",
                eplb.max_tokens,
                cont.max_tokens
            );
        }
    }
}

#[test]
fn eplb_cuts_the_straggler_where_a_few_experts_are_hot() {
    // 64 tokens, K = 8: every token picks experts 0, 1 and 2 (on rank 0 under contiguous) and
    // five spread ones.
    let (t, k) = (64usize, 8usize);
    let ids: Vec<u32> = (0..t)
        .flat_map(|tok| {
            let spread: Vec<u32> = (0..5).map(|i| 3 + ((tok * 5 + i) % 253) as u32).collect();
            [0u32, 1, 2].into_iter().chain(spread)
        })
        .collect();
    for (ranks, redundant) in [(8, 0), (8, 8), (16, 16)] {
        let spec = EpSpec::new(ranks, redundant, 1, None).unwrap();
        let mut tracker = EpTracker::new(spec, 256, 8, 7168).unwrap();
        let rec = tracker.step(&ids, k, &mut per_token).unwrap();
        let cont = rec.get(PlacementKind::Contiguous).unwrap();
        let eplb = rec.get(PlacementKind::Eplb).unwrap();
        assert!(
            eplb.max_tokens < cont.max_tokens,
            "N={ranks} R={redundant}: {} vs {}",
            eplb.max_tokens,
            cont.max_tokens
        );
        assert!(eplb.step_us.unwrap() < cont.step_us.unwrap());
        if redundant > 0 {
            // The hot experts got copies.
            let cnt = eplb.placement.logcnt(256);
            assert!(cnt[0] > 1 && cnt[1] > 1 && cnt[2] > 1, "{:?}", &cnt[..4]);
        }
    }
}

#[test]
fn all_to_all_bytes_follow_the_tokens_that_leave_their_rank() {
    // 2 ranks, contiguous, 4 experts; 2 tokens with K = 2. Token 0 lives on rank 0 and needs
    // experts 0 (rank 0) and 3 (rank 1); token 1 lives on rank 1 and needs 2 and 3 (rank 1).
    let p = Placement::contiguous(4, 2);
    let tr = traffic(&p, 4, &[0, 3, 2, 3], 2);
    assert_eq!(tr.pair_tokens, vec![1, 1, 0, 1]);
    let spec = EpSpec::new(2, 0, 1, Some(8.0)).unwrap();
    let mut tracker = EpTracker::new(spec, 4, 1, 1000).unwrap();
    let rec = tracker.step(&[0, 3, 2, 3], 2, &mut per_token).unwrap();
    let c = rec.get(PlacementKind::Contiguous).unwrap();
    // One token of 1000 bf16 values leaves rank 0: 2000 B each way at 1 GB/s = 2 µs twice.
    assert_eq!(c.a2a_max_rank_bytes, 2000);
    assert!((c.a2a_us - 4.0).abs() < 1e-9, "{}", c.a2a_us);
    assert_eq!(c.pair_bytes.as_deref(), Some(&[2000, 2000, 0, 2000][..]));
    assert_eq!(c.tokens_per_rank, vec![1, 3]);
    assert_eq!((c.straggler, c.step_us), (1, Some(3.0 + 4.0)));
}

#[test]
fn eplb_refuses_slots_that_do_not_split_over_the_ranks() {
    let spec = EpSpec::new(3, 0, 1, None).unwrap();
    let err = EpTracker::new(spec, 256, 8, 64).err().unwrap().to_string();
    assert!(
        err.contains("256 + 0 = 256") && err.contains("3 ranks") && err.contains("--redundant"),
        "{err}"
    );
}
