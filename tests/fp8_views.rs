//! What the TUI shows of FP8 paths: the header's path labels carry each path's expert format,
//! and the numerics view the FP8 figures of a CPU run (the kernels' error, the format's error,
//! the tokens compared).

use moescope::engine::paths::{ExpertFormat, PathSpec, Variant};
use moescope::engine::spec::{LayerSource, LayerSpec, RunSpec};
use moescope::engine::BackendChoice;
use moescope::ui::app::{App, Mode, View};
use moescope::ui::keys::Action;
use moescope::ui::source::{Meta, SourceEvent};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("a test terminal");
    t.draw(|f| moescope::ui::views::draw(f, app))
        .expect("drawing");
    t.backend().to_string()
}

#[test]
fn the_header_and_the_numerics_view_show_the_expert_formats() {
    let fp8 = ExpertFormat::Fp8;
    let paths = vec![
        PathSpec::unfused_baseline().with_formats(fp8, ExpertFormat::Bf16),
        PathSpec::fused(Variant::Correct).with_formats(fp8, fp8),
    ];
    let spec = RunSpec {
        layer: LayerSpec {
            source: LayerSource::Preset("deepseek-v3".into()),
            hidden: Some(256),
            intermediate: Some(128),
            backend: BackendChoice::Cpu,
            ..LayerSpec::default()
        },
        tokens: 8,
        paths: paths.clone(),
        hidden_states: None,
        trace: Default::default(),
        kernel: None,
        router_logits: Default::default(),
    };
    let (mut engine, _) = spec.build_engine().unwrap();
    let mut app = App::new(Mode::Live);
    app.on_event(SourceEvent::Ready(Box::new(Meta {
        source: "live".into(),
        config: engine.config().clone(),
        backend: engine.info().kind,
        device: engine.info().device,
        paths,
        tokens: 8,
        weights: engine.description().to_string(),
        max_tokens: None,
    })));
    for _ in 0..2 {
        app.on_event(SourceEvent::Record(Box::new(engine.step().unwrap())));
    }
    app.update(Action::ShowView(View::Numerics.index()));
    let s = render(&app, 200, 50);
    assert!(s.contains("· fp8 routed, bf16 shared"), "{s}");
    assert!(s.contains("rsf on-output · fp8"), "{s}");
    for needle in [
        "expert format",
        "fp8·bf16",
        "fp8 vs fp8 math",
        "fp8 vs bf16 path",
        "fp8 compared on host",
    ] {
        assert!(s.contains(needle), "lacks `{needle}`:\n{s}");
    }
    // No bf16 path runs: the format's error has nothing to compare with.
    let row = s.lines().find(|l| l.contains("fp8 vs bf16 path")).unwrap();
    assert!(row.contains('—'), "{row}");
}
