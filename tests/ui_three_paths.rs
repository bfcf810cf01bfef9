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
