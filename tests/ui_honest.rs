//! What the TUI says must be true: each test here failed before its fix (issue 17, item 5).

use moescope::engine::paths::Variant;
use moescope::ui::app::{App, Mode, View};
use moescope::ui::fixtures;
use moescope::ui::keys::{self, Action};
use moescope::ui::source::SourceEvent;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("a test terminal");
    t.draw(|f| moescope::ui::views::draw(f, app))
        .expect("drawing");
    t.backend().to_string()
}

fn live(steps: u64) -> App {
    fixtures::app("deepseek-v3", Variant::Correct, steps, false, Mode::Live).expect("fixture")
}

#[test]
fn the_cumulative_shared_share_counts_every_step_not_the_history_window() {
    // 300 steps: more than the 240 the history keeps, all summed in the cumulative load.
    let mut a = live(300);
    assert_eq!(a.cumulative_steps, 300);
    a.update(Action::ShowView(View::Load.index()));
    let s = render(&a, 160, 50);
    assert!(s.contains("S0 19200 (100% of tokens)"), "{s}");
    assert!(!s.contains("125%"), "{s}");
}

#[test]
fn the_speedup_names_the_faster_path() {
    let mut a = live(10);
    // Make B 1% slower than A: the label must not read "B/A 0.99×" or call B faster.
    for r in a.history.iter_mut() {
        let (ta, ca) = (r.paths[0].total_us, r.paths[0].clean_us);
        r.paths[1].total_us = ta * 1.01;
        r.paths[1].clean_us = ca.map(|c| c * 1.01);
    }
    for v in [View::Overview, View::Timings] {
        a.update(Action::ShowView(v.index()));
        let s = render(&a, 140, 40);
        assert!(s.contains("A 1.01× faster than B"), "{v:?}\n{s}");
        assert!(!s.contains("B/A"), "{v:?}\n{s}");
    }
}

#[test]
fn a_step_at_a_new_size_shows_a_busy_sign_until_it_arrives() {
    let mut a = live(5);
    let before = render(&a, 140, 30);
    assert!(!before.contains('⧗'), "{before}");
    a.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Char('+'),
    ));
    let busy = render(&a, 140, 30);
    assert!(busy.contains("T=64 · ⧗ running T=128…"), "{busy}");
    assert!(
        !busy.contains("steps/s"),
        "the old rate is not the new one\n{busy}"
    );
    let cfg = a.meta.as_ref().unwrap().config.clone();
    let paths = a.paths();
    let r = fixtures::record(&cfg, &paths, 128, 5, false);
    a.on_event(SourceEvent::Record(Box::new(r)));
    let done = render(&a, 140, 30);
    assert!(!done.contains('⧗') && done.contains("T=128"), "{done}");
}

#[test]
fn paused_shows_no_live_rate() {
    let mut a = live(10);
    assert!(render(&a, 140, 30).contains("steps/s"));
    a.update(Action::TogglePause);
    let s = render(&a, 140, 30);
    assert!(s.contains("paused") && !s.contains("steps/s"), "{s}");
}

#[test]
fn the_live_help_lists_no_replay_only_key() {
    assert!(keys::help_rows(false).all(|b| b.action != Action::StepBack));
    let mut a = live(3);
    a.update(Action::Help);
    let s = render(&a, 120, 46);
    assert!(!s.contains("step back"), "{s}");
    // The key still answers in a live run, saying why it does nothing.
    a.update(Action::Close);
    a.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Char('p'),
    ));
    assert!(a
        .status
        .as_deref()
        .unwrap_or("")
        .contains("cannot step back"));
}
