//! Key handling through the App's update functions, and the sources (live CPU engine, replay)
//! as the UI loop sees them: commands in, events out.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use moescope::commands::driver::{self, LivePlan};
use moescope::engine::paths::PathSpec;
use moescope::engine::paths::{Variant, VARIANTS};
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec};
use moescope::engine::BackendChoice;
use moescope::ui::app::{App, Mode, Popup, View};
use moescope::ui::fixtures;
use moescope::ui::source::{self, Command, SourceEvent};
use std::time::{Duration, Instant};

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn live_app() -> App {
    fixtures::app("deepseek-v3", Variant::Correct, 5, false, Mode::Live).expect("fixture")
}

#[test]
fn number_keys_tab_and_clicks_switch_views() {
    let mut a = live_app();
    for (i, v) in View::ALL.iter().enumerate() {
        let c = char::from_digit(i as u32 + 1, 10).expect("digit");
        assert!(a.handle_key(key(c)).is_empty());
        assert_eq!(a.view, *v);
    }
    a.handle_key(code(KeyCode::Tab));
    assert_eq!(a.view, View::Overview, "Tab wraps around");
    a.handle_key(code(KeyCode::BackTab));
    assert_eq!(a.view, View::Ep);
    // A click on the third tab.
    let click = |column| MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column,
        row: moescope::ui::tabs::TABS_ROW,
        modifiers: KeyModifiers::NONE,
    };
    let x = (0..200u16)
        .find(|&x| moescope::ui::tabs::tab_at(x) == Some(2))
        .expect("a column of tab 3");
    a.handle_mouse(click(x));
    assert_eq!(a.view, View::Contract);
    a.handle_mouse(click(199));
    assert_eq!(
        a.view,
        View::Contract,
        "a click beside the tabs changes nothing"
    );
}

#[test]
fn space_pauses_and_n_steps_once() {
    let mut a = live_app();
    assert!(!a.paused);
    assert_eq!(a.handle_key(key(' ')), vec![Command::SetPaused(true)]);
    assert!(a.paused);
    assert_eq!(a.handle_key(key(' ')), vec![Command::SetPaused(false)]);
    assert_eq!(
        a.handle_key(key('n')),
        vec![Command::SetPaused(true), Command::Step]
    );
    assert_eq!(
        a.handle_key(code(KeyCode::Right)),
        vec![Command::SetPaused(true), Command::Step]
    );
    assert!(
        a.handle_key(code(KeyCode::Left)).is_empty(),
        "a live run cannot step back"
    );
    assert!(a
        .status
        .as_deref()
        .unwrap_or("")
        .contains("cannot step back"));
}

#[test]
fn plus_and_minus_double_and_halve_tokens() {
    let mut a = live_app();
    assert_eq!(a.tokens, 64);
    assert_eq!(a.handle_key(key('+')), vec![Command::SetTokens(128)]);
    assert_eq!(a.handle_key(key('-')), vec![Command::SetTokens(64)]);
    for _ in 0..10 {
        a.handle_key(key('-'));
    }
    assert_eq!(a.tokens, 1, "never below one token");
}

#[test]
fn variant_menu_chooses_path_b_variant() {
    let mut a = live_app();
    a.handle_key(key('v'));
    assert_eq!(a.popup, Some(Popup::Variant(0)));
    // Keys go to the menu while it is open: '2' does not switch views.
    a.handle_key(key('2'));
    assert_eq!(a.view, View::Overview);
    a.handle_key(code(KeyCode::Down));
    a.handle_key(key('j'));
    assert_eq!(a.popup, Some(Popup::Variant(2)));
    let cmds = a.handle_key(code(KeyCode::Enter));
    assert_eq!(cmds, vec![Command::SetVariant(VARIANTS[2])]);
    assert_eq!(a.variant, VARIANTS[2]);
    assert_eq!(a.popup, None);
    a.handle_key(key('v'));
    assert!(a.handle_key(code(KeyCode::Esc)).is_empty());
    assert_eq!(a.popup, None);
}

#[test]
fn r_toggles_recording_and_q_quits() {
    let mut a = live_app();
    assert_eq!(a.handle_key(key('r')), vec![Command::StartRecording(None)]);
    a.on_event(SourceEvent::Recording(Some("x.jsonl".into())));
    assert_eq!(a.handle_key(key('r')), vec![Command::StopRecording]);
    a.handle_key(key('?'));
    assert_eq!(a.popup, Some(Popup::Help));
    a.handle_key(key('x'));
    assert_eq!(a.popup, None, "any key closes the help");
    assert_eq!(a.handle_key(key('q')), vec![Command::Quit]);
    assert!(a.quit);
    let mut b = live_app();
    b.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(b.quit);
}

#[test]
fn token_selection_stays_within_the_sampled_tokens() {
    let mut a = live_app();
    let n = a.latest().expect("a step").token_details.len();
    for _ in 0..n + 3 {
        a.handle_key(key('j'));
    }
    assert_eq!(a.token_sel, n - 1);
    a.handle_key(key('k'));
    assert_eq!(a.token_sel, n - 2);
    a.handle_key(key('2'));
    a.handle_key(key('h'));
    assert_eq!(a.load_path, 0);
    a.handle_key(key('l'));
    assert_eq!(a.load_path, 1);
}

#[test]
fn replay_keys_seek_and_change_speed() {
    let mut a =
        fixtures::app("deepseek-v3", Variant::Correct, 3, false, Mode::Replay).expect("fixture");
    a.on_event(SourceEvent::Replay(moescope::ui::source::ReplayPos {
        pos: 2,
        len: 50,
        playing: false,
        speed: 1.0,
    }));
    assert_eq!(a.handle_key(code(KeyCode::Home)), vec![Command::Seek(0)]);
    assert_eq!(a.handle_key(code(KeyCode::End)), vec![Command::Seek(49)]);
    assert_eq!(
        a.handle_key(key('p')),
        vec![Command::SetPaused(true), Command::StepBack]
    );
    assert_eq!(a.handle_key(key(']')), vec![Command::SetSpeed(2.0)]);
    assert_eq!(a.handle_key(key(']')), vec![Command::SetSpeed(4.0)]);
    assert_eq!(a.handle_key(key('[')), vec![Command::SetSpeed(2.0)]);
    a.handle_key(key('g'));
    for c in "17".chars() {
        assert!(a.handle_key(key(c)).is_empty());
    }
    assert_eq!(a.handle_key(code(KeyCode::Enter)), vec![Command::Seek(17)]);
    a.handle_key(key('g'));
    a.handle_key(key('9'));
    a.handle_key(key('9'));
    assert!(a.handle_key(code(KeyCode::Enter)).is_empty());
    assert!(a.status.as_deref().unwrap_or("").contains("no step 99"));
    // Live-only keys explain themselves.
    assert!(a.handle_key(key('+')).is_empty());
    assert!(a.handle_key(key('r')).is_empty());
    assert!(a.status.is_some());
}

#[test]
fn stepping_back_keeps_history_consecutive_and_cumulative_load_exact() {
    let mut a =
        fixtures::app("deepseek-v3", Variant::Correct, 6, false, Mode::Replay).expect("fixture");
    let sum = |a: &App| -> Vec<u64> {
        let mut s = vec![0u64; a.cumulative[0].len()];
        for r in &a.history {
            for (x, l) in s.iter_mut().zip(&r.paths[0].load) {
                *x += *l as u64;
            }
        }
        s
    };
    assert_eq!(a.cumulative[0], sum(&a));
    let back = a.history[3].clone();
    a.on_event(SourceEvent::Record(Box::new(back)));
    assert_eq!(a.history.len(), 4);
    assert_eq!(a.history.back().map(|r| r.step), Some(3));
    assert_eq!(a.cumulative[0], sum(&a));
    assert_eq!(a.cumulative_steps, 4);
    // A jump that does not connect starts the cumulative figures over.
    let cfg = a.meta.as_ref().expect("meta").config.clone();
    let paths = a.paths();
    a.on_event(SourceEvent::Record(Box::new(fixtures::record(
        &cfg, &paths, 64, 40, false,
    ))));
    assert_eq!(
        (a.history.len(), a.cumulative_from, a.cumulative_steps),
        (1, 40, 1)
    );
}

fn tiny_cpu_plan() -> LivePlan {
    LivePlan {
        spec: RunSpec {
            layer: LayerSpec {
                source: LayerSource::Preset("deepseek-v3".into()),
                backend: BackendChoice::Cpu,
                hidden: Some(64),
                intermediate: Some(64),
                ..LayerSpec::default()
            },
            tokens: 4,
            paths: PathSpec::default_pair(),
            hidden_states: None,
            trace: Default::default(),
            kernel: None,
            router_logits: Default::default(),
        },
        telemetry_hz: 0.0,
        record: None,
        force: false,
        steps: None,
    }
}

/// Receives events until `until` says stop, feeding them to the App.
fn pump(app: &mut App, h: &mut source::SourceHandle, until: impl Fn(&App) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(app) {
        assert!(Instant::now() < deadline, "timed out waiting on the source");
        match h.events.try_recv() {
            Ok(ev) => app.on_event(ev),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[test]
fn live_cpu_source_steps_pauses_and_applies_commands() {
    let mut h = driver::spawn_live(tiny_cpu_plan()).expect("engine thread");
    let mut app = App::new(Mode::Live);
    pump(&mut app, &mut h, |a| a.history.len() >= 2);
    let meta = app.meta.as_ref().expect("ready before records");
    assert_eq!(meta.backend, moescope::engine::BackendKind::Cpu);
    assert_eq!(meta.config.n_routed_experts, 256);
    assert!(app
        .telemetry_unavailable
        .as_deref()
        .unwrap_or("")
        .contains("telemetry off"));
    assert!(app.history.iter().all(|r| r.telemetry.is_none()));

    // Pause, then ask for one step with other settings: exactly one more step arrives with them.
    let mut cmds = app.handle_key(key(' '));
    cmds.push(Command::SetTokens(8));
    cmds.push(Command::SetVariant(Variant::RsfTwice));
    h.send(cmds);
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(ev) = h.events.try_recv() {
        app.on_event(ev);
    }
    let before = app.latest().expect("a step").step;
    h.send(app.handle_key(key('n')));
    pump(&mut app, &mut h, |a| {
        a.latest().is_some_and(|r| r.step == before + 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        h.events.try_recv().is_err(),
        "a paused engine stepped on its own"
    );
    let r = app.latest().expect("a step");
    assert_eq!(r.tokens, 8);
    assert_eq!(r.paths[1].spec.variant, Variant::RsfTwice);
    assert!(!r.paths[1].contract.ok, "rsf twice breaks the contract");
    h.send(vec![Command::Quit]);
}

#[test]
fn a_bad_engine_config_fails_the_source_with_its_message() {
    let mut args = tiny_cpu_plan();
    args.spec.layer.source = LayerSource::Preset("no-such-model".into());
    let mut h = driver::spawn_live(args).expect("engine thread");
    let mut app = App::new(Mode::Live);
    pump(&mut app, &mut h, |a| a.fatal.is_some());
    assert!(app.quit);
    assert!(
        app.fatal.as_deref().unwrap_or("").contains("no-such-model"),
        "{:?}",
        app.fatal
    );
}

#[test]
fn a_missing_session_fails_the_replay_naming_the_file() {
    let mut h = moescope::commands::replay::spawn_replay("/nonexistent/session.jsonl".into())
        .expect("replay thread");
    let mut app = App::new(Mode::Replay);
    pump(&mut app, &mut h, |a| a.fatal.is_some());
    assert!(app
        .fatal
        .as_deref()
        .unwrap_or("")
        .contains("/nonexistent/session.jsonl"));
}

#[test]
fn live_records_carry_telemetry_where_nvml_runs_and_say_why_where_not() {
    let mut args = tiny_cpu_plan();
    args.telemetry_hz = 20.0;
    let mut h = driver::spawn_live(args).expect("engine thread");
    let mut app = App::new(Mode::Live);
    pump(&mut app, &mut h, |a| {
        a.meta.is_some() && !a.history.is_empty()
    });
    if let Some(why) = app.telemetry_unavailable.clone() {
        println!("no telemetry here: {why}");
        assert!(!why.is_empty());
        pump(&mut app, &mut h, |a| a.history.len() >= 3);
        assert!(app.history.iter().all(|r| r.telemetry.is_none()));
    } else {
        // The sampler needs a moment for its first reading.
        pump(&mut app, &mut h, |a| {
            a.latest().is_some_and(|r| r.telemetry.is_some())
        });
        app.update(moescope::ui::keys::Action::ShowView(
            View::Telemetry.index(),
        ));
        let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 40))
            .expect("test terminal");
        t.draw(|f| moescope::ui::views::draw(f, &app))
            .expect("draw");
        let screen = t.backend().to_string();
        println!("{screen}");
        assert!(screen.contains("GPU utilization"), "{screen}");
    }
    h.send(vec![Command::Quit]);
}

#[test]
fn a_record_file_that_cannot_be_written_fails_the_run() {
    let mut args = tiny_cpu_plan();
    args.record = Some("/nonexistent/dir/run.jsonl".into());
    let mut h = driver::spawn_live(args).expect("engine thread");
    let mut app = App::new(Mode::Live);
    pump(&mut app, &mut h, |a| a.fatal.is_some());
    let msg = app.fatal.unwrap_or_default();
    assert!(
        msg.contains("cannot record to /nonexistent/dir/run.jsonl"),
        "{msg}"
    );
    assert!(
        app.history.is_empty(),
        "no step runs when the recording cannot start"
    );
}

#[test]
fn steps_limit_pauses_the_live_run_and_space_runs_on() {
    let mut args = tiny_cpu_plan();
    args.steps = Some(2);
    let mut h = driver::spawn_live(args).expect("engine thread");
    let mut app = App::new(Mode::Live);
    pump(&mut app, &mut h, |a| a.paused && a.history.len() == 2);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        h.events.try_recv().is_err(),
        "no step after --steps ran out"
    );
    assert!(app.notices.iter().any(|n| n.contains("--steps reached")));
    h.send(app.handle_key(key(' ')));
    pump(&mut app, &mut h, |a| a.history.len() >= 4);
    h.send(vec![Command::Quit]);
}

#[test]
fn the_tui_refuses_to_start_without_a_terminal() {
    // Under cargo test stdout is a pipe, as in `moescope | less`.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return;
    }
    let err = moescope::ui::require_terminal().expect_err("no terminal");
    assert!(err.to_string().contains("--headless"), "{err}");
}
