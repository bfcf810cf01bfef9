//! Every view with three paths: A, B and path C, a user kernel named by its file
//! ("C fused_router.cu"), at a normal and at small terminal sizes (insta snapshots); and a
//! path on bf16 router logits named so ("B bf16").

use moescope::engine::paths::{LogitsDtype, PathSpec, Variant};
use moescope::ui::app::{App, Mode, View};
use moescope::ui::fixtures;
use moescope::ui::keys::Action;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("a test terminal");
    t.draw(|f| moescope::ui::views::draw(f, app))
        .expect("drawing");
    t.backend().to_string()
}

fn app_of(paths: &[PathSpec], view: View) -> App {
    let mut a = fixtures::app_with("deepseek-v3", paths, 30, true, Mode::Live).expect("fixture");
    a.update(Action::ShowView(view.index()));
    a
}

fn name(v: View) -> &'static str {
    match v {
        View::Overview => "overview",
        View::Load => "load",
        View::Contract => "contract",
        View::Timings => "timings",
        View::Numerics => "numerics",
        View::Telemetry => "telemetry",
        View::Ep => "ep",
    }
}

/// The rows below the header and the tabs.
fn body(screen: &str) -> String {
    screen.lines().skip(3).collect::<Vec<_>>().join("\n")
}

#[test]
fn every_view_with_three_paths_at_three_sizes() {
    let paths = fixtures::three_paths(Variant::SharedInvRsf);
    for (w, h) in [(120, 40), (80, 24), (40, 10)] {
        for v in View::ALL {
            let s = render(&app_of(&paths, v), w, h);
            insta::assert_snapshot!(format!("{}_{w}x{h}", name(v)), s);
        }
    }
}

#[test]
fn the_header_and_every_path_view_name_path_c_by_its_file() {
    let paths = fixtures::three_paths(Variant::Correct);
    let c = format!("C {}", fixtures::USER_KERNEL);
    for v in View::ALL {
        let s = render(&app_of(&paths, v), 120, 40);
        let header = s.lines().nth(1).unwrap_or_default();
        assert!(header.contains(&c), "{v:?} header: {header}");
        let shows_paths = !matches!(v, View::Telemetry | View::Ep);
        if shows_paths {
            assert!(body(&s).contains(&c), "{v:?}:\n{s}");
        }
    }
    // Narrower, the header keeps every path's name (not its whole label).
    let s = render(&app_of(&paths, View::Overview), 80, 24);
    let header = s.lines().nth(1).unwrap_or_default();
    assert!(
        header.contains("A unfused") && header.contains("B fused") && header.contains(&c),
        "{header}"
    );
}

#[test]
fn a_path_on_bf16_logits_says_so() {
    let b = PathSpec {
        logits: LogitsDtype::Bf16,
        ..PathSpec::fused(Variant::Correct)
    };
    let paths = [PathSpec::unfused_baseline(), b];
    let s = render(&app_of(&paths, View::Numerics), 120, 40);
    assert!(body(&s).contains("B bf16"), "{s}");
    insta::assert_snapshot!(s);
    let wide = render(&app_of(&paths, View::Contract), 160, 40);
    assert!(wide.contains("bf16 logits"), "{wide}");
}

/// All-token numerics (as the device reference gives them): tie classes and the worst token
/// per path, path C on bf16 logits moving three tokens.
#[test]
fn numerics_with_every_token_compared_and_path_c_on_bf16() {
    use moescope::engine::config::MoeConfig;
    use moescope::engine::step::{TieCounts, TokenDist, TokenErrors};
    use moescope::engine::BackendKind;
    use moescope::ui::source::{Meta, SourceEvent};
    let mut paths = fixtures::three_paths(Variant::Correct);
    paths[2].logits = LogitsDtype::Bf16;
    let cfg = MoeConfig::preset("deepseek-v3").unwrap();
    let mut a = App::new(Mode::Replay);
    a.on_event(SourceEvent::Ready(Box::new(Meta {
        source: "three.jsonl".into(),
        config: cfg.clone(),
        backend: BackendKind::Cuda,
        device: "NVIDIA H200 (sm_90)".into(),
        paths: paths.clone(),
        tokens: 64,
        weights: "synthetic, seed 7".into(),
        max_tokens: None,
    })));
    for step in 0..10 {
        let mut r = fixtures::record(&cfg, &paths, 64, step, false);
        r.comparison.sampled_tokens = 64;
        r.comparison.ties_ref = vec![
            TieCounts::default(),
            TieCounts::default(),
            TieCounts {
                exact: 0,
                near: 1,
                real: 2,
            },
        ];
        r.comparison.token_errors_ref = (0..3)
            .map(|i| TokenErrors {
                rel_l2: TokenDist {
                    p50: 2e-3,
                    p99: 4e-3,
                    max: 5e-3 * (i + 1) as f64,
                    worst: vec![7 * i + 3],
                },
                ..TokenErrors::default()
            })
            .collect();
        a.on_event(SourceEvent::Record(Box::new(r)));
    }
    a.update(Action::ShowView(View::Numerics.index()));
    let s = render(&a, 120, 40);
    for want in [
        "C fused_router.cu bf16",
        "tie · near · real",
        "0·1·2",
        "64 of 64 tokens",
        "worst token rel L2 (t)",
    ] {
        assert!(s.contains(want), "no `{want}` in\n{s}");
    }
    // Three of 64 tokens route elsewhere on bf16 logits.
    let moved = s
        .lines()
        .find(|l| l.contains("tokens ≠ reference"))
        .unwrap();
    let panel = moved.split("││").next().unwrap();
    assert!(panel.trim_end().ends_with(" 3"), "{moved}");
    insta::assert_snapshot!(s);
}

/// The variant menu is path B's: with path C after it, the app still reads and shows B's.
#[test]
fn the_variant_shown_is_path_bs_not_the_last_paths() {
    let paths = fixtures::three_paths(Variant::RsfTwice);
    let a = app_of(&paths, View::Overview);
    assert_eq!(a.variant, Variant::RsfTwice);
    let header = render(&a, 120, 40)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(header.contains("variant rsf-twice"), "{header}");
    assert!(!header.contains("from the next step"), "{header}");
}
