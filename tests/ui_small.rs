//! Small terminals read right: at 80×24 and 40×10 every view and the help drop whole columns or
//! panels rather than cut a number, and say "more →" where rows are hidden.

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

fn app() -> App {
    fixtures::app("deepseek-v3", Variant::SharedInvRsf, 30, true, Mode::Live).expect("fixture")
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

#[test]
fn every_view_and_the_help_at_80x24_and_40x10() {
    for (w, h) in [(80, 24), (40, 10)] {
        for v in View::ALL {
            let mut a = app();
            a.update(Action::ShowView(v.index()));
            insta::assert_snapshot!(format!("{}_{w}x{h}", name(v)), render(&a, w, h));
        }
        let mut a = app();
        a.update(Action::Help);
        insta::assert_snapshot!(format!("help_{w}x{h}"), render(&a, w, h));
    }
}
