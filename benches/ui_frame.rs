//! One UI frame per view at 512 experts (qwen3-next-80b-a3b) with a full history, drawn into
//! ratatui's TestBackend. Design §7: a frame stays under 5 ms.

use criterion::{criterion_group, criterion_main, Criterion};
use moescope::engine::paths::Variant;
use moescope::ui::app::{Mode, View, HISTORY};
use moescope::ui::fixtures;
use moescope::ui::keys::Action;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::hint::black_box;

fn frames(c: &mut Criterion) {
    let mut app = fixtures::app(
        "qwen3-next-80b-a3b",
        Variant::SharedInvRsf,
        HISTORY as u64,
        true,
        Mode::Live,
    )
    .expect("fixture app");
    // A large terminal: more cells to draw than most screens.
    let mut term = Terminal::new(TestBackend::new(240, 70)).expect("test terminal");
    let mut group = c.benchmark_group("ui_frame_512_experts");
    for view in View::ALL {
        app.update(Action::ShowView(view.index()));
        group.bench_function(view.title(), |b| {
            b.iter(|| {
                term.draw(|f| moescope::ui::views::draw(f, black_box(&app)))
                    .expect("draw");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
