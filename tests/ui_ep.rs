//! The EP view (7) drawn from fixture StepRecords given EP figures from the skewed sample trace,
//! at 120×40 and at 80×24, and its message where a run has none.

use moescope::engine::config::MoeConfig;
use moescope::engine::ep::{EpSpec, EpTracker, GemmSource, GemmTime, PlacementKind};
use moescope::engine::paths::Variant;
use moescope::engine::trace::RoutingTrace;
use moescope::ui::app::{App, Mode, View};
use moescope::ui::fixtures;
use moescope::ui::keys::Action;
use moescope::ui::views::ep::{what_if_text, NO_EP};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::path::Path;

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("a test terminal");
    t.draw(|f| moescope::ui::views::draw(f, app))
        .expect("drawing");
    t.backend().to_string()
}

/// The fixture app with EP figures on every step: the sample trace's steps in turn, a GEMM
/// time of 2 µs per token so the screens do not depend on the machine.
fn ep_app(ranks: usize, redundant: usize) -> App {
    let mut app = fixtures::app("deepseek-v3", Variant::Correct, 12, false, Mode::Live).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/routing/deepseek-v3-skew.safetensors");
    let trace =
        RoutingTrace::read(&path, &MoeConfig::preset("deepseek-v3").unwrap(), None).unwrap();
    let spec = EpSpec::new(ranks, redundant, 4, None).unwrap();
    let mut tracker = EpTracker::new(spec, 256, 8, 7168).unwrap();
    let mut gemm = |slots: &[(u32, u32)]| {
        Ok(Some(GemmTime {
            us: slots.iter().map(|s| 2.0 * s.1 as f64).sum(),
            source: GemmSource::Model,
        }))
    };
    for (i, rec) in app.history.iter_mut().enumerate() {
        let b = trace.batch(i as u64);
        rec.ep = Some(tracker.step(&b.ids, b.k, &mut gemm).unwrap());
    }
    app.update(Action::ShowView(View::Ep.index()));
    assert_eq!(app.view, View::Ep);
    app
}

#[test]
fn ep_view_eight_ranks() {
    let app = ep_app(8, 8);
    let s = render(&app, 120, 40);
    assert!(s.contains("◀ max"), "{s}");
    assert!(
        s.contains("rebalancing from the last 4 steps would cut the straggler"),
        "{s}"
    );
    insta::assert_snapshot!(s);
}

#[test]
fn ep_view_fits_80_by_24_with_64_ranks() {
    let app = ep_app(64, 64);
    let s = render(&app, 80, 24);
    assert!(s.contains("◀ max"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn the_what_if_line_uses_the_latest_step() {
    let app = ep_app(8, 8);
    let ep = app.latest().unwrap().ep.as_ref().unwrap();
    let (c, e) = (
        ep.get(PlacementKind::Contiguous).unwrap(),
        ep.get(PlacementKind::Eplb).unwrap(),
    );
    let text = what_if_text(ep, c, e);
    assert!(
        text.contains(&format!("from {} to {} tokens", c.max_tokens, e.max_tokens)),
        "{text}"
    );
    assert!(text.contains("% step time)"), "{text}");
}

#[test]
fn without_ep_the_view_says_how_to_get_it() {
    let mut app = fixtures::app("deepseek-v3", Variant::Correct, 3, false, Mode::Live).unwrap();
    app.update(Action::ShowView(View::Ep.index()));
    let s = render(&app, 100, 12);
    assert!(s.contains("run with --ep N"), "{s}");
    assert!(NO_EP.contains("--ep"));
    let help = {
        app.update(Action::Help);
        render(&app, 120, 50)
    };
    assert!(help.contains("expert parallelism (--ep)"), "{help}");
}
