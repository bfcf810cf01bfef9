//! Sizes before allocation (issue 17): a request that cannot fit the machine's memory is refused
//! at once with the limit and the largest T that fits; the TUI's `+` stops at that limit.

use moescope::engine::paths::Variant;
use moescope::ui::fixtures;
use moescope::ui::keys::Action;
use moescope::ui::source::Command as SourceCommand;
use moescope::ui::Mode;
use std::process::Command;
use std::time::{Duration, Instant};

fn moescope(args: &[&str]) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .output()
        .unwrap();
    (out, t.elapsed())
}

#[test]
fn a_hundred_million_tokens_are_refused_at_once() {
    let (out, took) = moescope(&[
        "run",
        "--headless",
        "--backend",
        "cpu",
        "--tokens",
        "100000000",
        "--steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        err.contains("100000000 tokens per step need about")
            && err.contains("host memory")
            && err.contains("at most"),
        "{err}"
    );
    // The largest T it names does fit: it is a number, and smaller than asked.
    let max: u64 = err
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("a largest T");
    assert!(max > 0 && max < 100_000_000);
}

#[test]
fn a_hundred_thousand_experts_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let config = serde_json::json!({
        "model_type": "deepseek_v3", "n_routed_experts": 100000, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "hidden_size": 7168, "moe_intermediate_size": 2048, "num_hidden_layers": 1
    });
    std::fs::write(&path, config.to_string()).unwrap();
    let (out, took) = moescope(&[
        "run",
        "--headless",
        "--backend",
        "cpu",
        "--config",
        path.to_str().unwrap(),
        "--steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(err.contains("weights alone need about"), "{err}");
}

#[test]
fn plus_stops_at_the_memory_limit_with_a_notice() {
    let mut app = fixtures::app("deepseek-v3", Variant::Correct, 4, false, Mode::Live).unwrap();
    app.meta.as_mut().unwrap().max_tokens = Some(100);
    app.tokens = 64;
    let cmds = app.update(Action::MoreTokens);
    assert_eq!(app.tokens, 100);
    assert!(cmds.contains(&SourceCommand::SetTokens(100)));
    let status = app.status.clone().unwrap();
    assert!(status.contains("the most that fit in memory"), "{status}");
    app.update(Action::MoreTokens);
    assert_eq!(app.tokens, 100);
    app.update(Action::FewerTokens);
    assert_eq!(app.tokens, 50);
    assert_eq!(app.status.as_deref(), Some("tokens per step → 50"));
}
