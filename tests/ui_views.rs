//! Every view rendered from fixed StepRecords into ratatui's TestBackend, checked with insta.
//! The fixtures carry no clock and no engine numbers, so the screens are the same on every run.

use moescope::engine::paths::Variant;
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

fn app(preset: &str, variant: Variant, telemetry: bool) -> App {
    fixtures::app(preset, variant, 30, telemetry, Mode::Live).expect("fixture app")
}

fn shown(mut app: App, view: View) -> App {
    app.update(Action::ShowView(view.index()));
    assert_eq!(app.view, view);
    app
}

#[test]
fn overview_with_telemetry() {
    let a = shown(app("deepseek-v3", Variant::Correct, true), View::Overview);
    insta::assert_snapshot!(render(&a, 120, 40));
}

#[test]
fn overview_without_telemetry_says_why() {
    let a = shown(app("kimi-k2", Variant::RsfTwice, false), View::Overview);
    let s = render(&a, 120, 40);
    assert!(s.contains("telemetry unavailable: NVML not found"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn load_deepseek_grouped() {
    let a = shown(app("deepseek-v3", Variant::Correct, true), View::Load);
    insta::assert_snapshot!(render(&a, 120, 40));
}

#[test]
fn load_512_experts() {
    let a = shown(
        app("qwen3-next-80b-a3b", Variant::Correct, true),
        View::Load,
    );
    insta::assert_snapshot!(render(&a, 160, 50));
}

#[test]
fn contract_broken_variant_is_red_with_the_deviation() {
    let a = shown(app("kimi-k2", Variant::SharedInvRsf, true), View::Contract);
    let s = render(&a, 120, 40);
    assert!(s.contains("shared weight 0.354, expected 1.000"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn kernel_timings() {
    let a = shown(app("deepseek-v3", Variant::Correct, true), View::Timings);
    insta::assert_snapshot!(render(&a, 140, 40));
}

#[test]
fn numerics_with_token_drill_down() {
    let mut a = shown(
        app("deepseek-v3", Variant::SharedDropped, true),
        View::Numerics,
    );
    a.update(Action::Down);
    assert_eq!(a.token_sel, 1);
    insta::assert_snapshot!(render(&a, 120, 40));
}

#[test]
fn telemetry_charts() {
    let a = shown(app("deepseek-v3", Variant::Correct, true), View::Telemetry);
    insta::assert_snapshot!(render(&a, 120, 40));
}

#[test]
fn telemetry_unavailable() {
    let a = shown(app("deepseek-v3", Variant::Correct, false), View::Telemetry);
    insta::assert_snapshot!(render(&a, 100, 12));
}

#[test]
fn help_overlay_lists_the_key_table() {
    let mut a = app("deepseek-v3", Variant::Correct, true);
    a.update(Action::Help);
    let s = render(&a, 120, 46);
    for b in moescope::ui::keys::help_rows(false) {
        assert!(s.contains(b.help), "help lacks {:?}\n{s}", b.help);
    }
    insta::assert_snapshot!(s);
}

#[test]
fn variant_menu() {
    let mut a = app("deepseek-v3", Variant::Correct, true);
    a.update(Action::VariantMenu);
    insta::assert_snapshot!(render(&a, 120, 30));
}

#[test]
fn replay_header_and_help() {
    let mut a =
        fixtures::app("mixtral-8x7b", Variant::Correct, 5, false, Mode::Replay).expect("fixture");
    a.on_event(moescope::ui::source::SourceEvent::Replay(
        moescope::ui::source::ReplayPos {
            pos: 4,
            len: 10,
            playing: false,
            speed: 2.0,
        },
    ));
    let s = render(&a, 120, 30);
    assert!(s.contains("pos 4/9"), "{s}");
    insta::assert_snapshot!(s);
    a.update(Action::Help);
    let s = render(&a, 120, 46);
    assert!(s.contains("go to step"), "{s}");
    assert!(!s.contains("double the tokens"), "{s}");
}

#[test]
fn every_view_fits_a_small_terminal_and_an_empty_app() {
    // Drawing must never panic, however small the terminal or short the history.
    for preset in ["deepseek-v3", "qwen3-next-80b-a3b", "mixtral-8x7b"] {
        for v in View::ALL {
            let short =
                fixtures::app(preset, Variant::Hardcoded2_5, 3, true, Mode::Live).expect("fixture");
            let a = shown(short, v);
            render(&a, 60, 16);
            render(&a, 20, 5);
            render(&a, 1, 1);
            let mut b = shown(app(preset, Variant::Correct, false), v);
            b.update(Action::Help);
            render(&b, 80, 24);
        }
    }
    for v in View::ALL {
        let s = render(&shown(App::new(Mode::Live), v), 80, 24);
        assert!(s.contains("building the engine"), "{s}");
    }
}

#[test]
fn views_wait_for_the_first_step_after_the_engine_is_ready() {
    for v in View::ALL {
        let waiting =
            fixtures::app("deepseek-v3", Variant::Correct, 0, false, Mode::Live).expect("fixture");
        let s = render(&shown(waiting, v), 100, 30);
        if v != View::Telemetry {
            assert!(
                s.contains(moescope::ui::views::style::NO_STEPS),
                "{v:?}\n{s}"
            );
        }
        assert!(s.contains("deepseek-v3"), "the header names the model\n{s}");
    }
}

#[test]
fn odd_records_from_a_session_file_draw_without_panicking() {
    // Sessions are outside input: records may be short, empty or inconsistent with the header.
    let mut a =
        fixtures::app("deepseek-v3", Variant::Correct, 2, true, Mode::Replay).expect("fixture");
    let base = a.latest().expect("a step").clone();
    let mut odd = Vec::new();
    let mut r = base.clone();
    r.step = 2;
    r.paths.clear();
    r.comparison = Default::default();
    odd.push(r);
    let mut r = base.clone();
    r.step = 3;
    r.tokens = 0;
    for p in &mut r.paths {
        p.load.truncate(3);
        p.timings.clear();
        p.total_us = 0.0;
        p.shared_weight = None;
    }
    for d in &mut r.token_details {
        d.reference.weights.clear();
        d.group_scores.clear();
        d.paths.truncate(1);
    }
    odd.push(r);
    let mut r = base;
    r.step = 4;
    r.paths.truncate(1);
    r.token_details.clear();
    r.telemetry = Some(Default::default());
    odd.push(r);
    for r in odd {
        a.on_event(moescope::ui::source::SourceEvent::Record(Box::new(r)));
        for v in View::ALL {
            let b = &mut a;
            b.update(Action::ShowView(v.index()));
            render(b, 120, 40);
            render(b, 50, 12);
        }
    }
}

#[test]
fn an_engine_error_stops_the_run_and_shows_on_one_line() {
    let mut a = app("deepseek-v3", Variant::Correct, false);
    a.on_event(moescope::ui::source::SourceEvent::StepError(
        "engine panicked: panicked at x.rs:1:1:\nout of memory".into(),
    ));
    let s = render(&a, 120, 30);
    assert!(s.contains("■ stopped"), "{s}");
    assert!(
        s.contains("engine error: engine panicked: panicked at x.rs:1:1: out of memory"),
        "{s}"
    );
    assert!(
        a.update(Action::TogglePause).is_empty(),
        "a stopped engine does not resume"
    );
    assert!(a.update(Action::StepForward).is_empty());
}
