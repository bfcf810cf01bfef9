//! View 4, kernel timings: per kernel mean/p50/p99 over the recent window, share of the path
//! and achieved bandwidth; the paths side by side with the speedup; a timeline of the last step.

use super::style::{block, fmt_us, path_color, BAD, DIM, MORE, OK};
use crate::engine::paths::PathId;
use crate::engine::stats::{gb_per_s, Dist, Speedup};
use crate::engine::step::Stage;
use crate::ui::app::{App, TIMING_WINDOW};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::Frame;

/// Statistics of one kernel over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelStats {
    pub stage: Stage,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    /// Of the path's mean instrumented time.
    pub share: f64,
    pub gb_s: Option<f64>,
}

fn window(app: &App) -> impl Iterator<Item = &crate::engine::step::StepRecord> {
    let skip = app.history.len().saturating_sub(TIMING_WINDOW);
    app.history.iter().skip(skip)
}

/// A path's mean times over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct PathMean {
    pub id: PathId,
    /// The path's name in the views ("C fused_router.cu").
    pub title: String,
    /// Instrumented (sum of the kernel times), µs.
    pub total: f64,
    /// One event pair, where measured, µs.
    pub clean: Option<f64>,
}

/// Per path of the latest step, the mean instrumented and clean times over the window.
pub fn path_means(app: &App) -> Vec<PathMean> {
    let Some(latest) = app.latest() else {
        return Vec::new();
    };
    let ids = latest.paths.iter().map(|p| (p.name, p.spec.title(p.name)));
    ids.map(|(id, title)| {
        let mine = || window(app).flat_map(|r| r.paths.iter().filter(move |p| p.name == id));
        PathMean {
            id,
            title,
            total: Dist::of(mine().map(|p| p.total_us)).mean,
            clean: Some(Dist::of(mine().filter_map(|p| p.clean_us)))
                .filter(|d| d.n > 0)
                .map(|d| d.mean),
        }
    })
    .collect()
}

/// Every other path against path A (the baseline), instrumented and clean: "B 1.10× faster
/// than A", green where the other path is the faster one.
pub fn speedup_spans(means: &[PathMean]) -> Vec<Span<'static>> {
    let Some(base) = means.iter().find(|m| m.id == PathId::A) else {
        return Vec::new();
    };
    let title = |id: PathId| {
        means
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| id.to_string(), |m| m.title.clone())
    };
    let mut out = Vec::new();
    for m in means.iter().filter(|m| m.id != PathId::A) {
        let Some(s) = Speedup::of((base.id, base.total), (m.id, m.total)) else {
            continue;
        };
        if !out.is_empty() {
            out.push(Span::raw("   "));
        }
        let good = s.faster == m.id || s.ratio < 1.005;
        out.push(Span::styled(
            s.phrase(&title),
            Style::new().fg(if good { OK } else { BAD }).bold(),
        ));
        let clean = base.clean.zip(m.clean);
        if let Some(c) = clean.and_then(|(a, b)| Speedup::of((base.id, a), (m.id, b))) {
            // The same way round needs only its ratio; the other way round, the whole phrase.
            let text = if c.faster == s.faster {
                format!(" · clean {:.2}×", c.ratio)
            } else {
                format!(" · clean: {}", c.phrase(&title))
            };
            out.push(Span::styled(text, Style::new().fg(DIM)));
        }
    }
    out
}

/// Kernel statistics of path `i` over the window, in the latest step's launch order.
pub fn kernel_stats(app: &App, i: usize) -> Vec<KernelStats> {
    let mut names: Vec<Stage> = Vec::new();
    let mut times: Vec<Vec<f64>> = Vec::new();
    let mut bytes: Vec<Option<u64>> = Vec::new();
    if let Some(p) = app.latest().and_then(|r| r.paths.get(i)) {
        for k in &p.timings {
            names.push(k.stage);
            times.push(Vec::new());
            bytes.push(k.bytes);
        }
    }
    for r in window(app) {
        let Some(p) = r.paths.get(i) else { continue };
        for k in &p.timings {
            match names.iter().position(|n| *n == k.stage) {
                Some(j) => times[j].push(k.us),
                None => {
                    names.push(k.stage);
                    times.push(vec![k.us]);
                    bytes.push(k.bytes);
                }
            }
        }
    }
    let total = path_means(app).get(i).map(|m| m.total).unwrap_or(0.0);
    names
        .into_iter()
        .zip(times)
        .zip(bytes)
        .map(|((name, t), b)| {
            let d = Dist::of(t);
            KernelStats {
                stage: name,
                mean: d.mean,
                p50: d.p50,
                p99: d.p99,
                share: if total > 0.0 { d.mean / total } else { 0.0 },
                gb_s: b.and_then(|b| gb_per_s(b, d.mean)),
            }
        })
        .collect()
}

const SEGMENT_COLORS: [Color; 6] = [
    Color::Blue,
    Color::Green,
    Color::Yellow,
    Color::Magenta,
    Color::Cyan,
    Color::Red,
];

/// A label for kernel j in the timeline: 1-9 then a-z.
fn seg_label(j: usize) -> char {
    std::char::from_digit((j + 1) as u32 % 36, 36).unwrap_or('*')
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let Some(r) = app.latest() else {
        f.render_widget(Paragraph::new(super::style::NO_STEPS).fg(DIM), area);
        return;
    };
    let n = r.paths.len().max(1);
    let means = path_means(app);
    let [head, tables, timeline] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(6),
        Constraint::Length(3 * n as u16 + 4),
    ])
    .areas(area);

    let win = app.history.len().min(TIMING_WINDOW);
    // Line 1: the speedup (what users look for first); line 2: each path's time.
    let mut speed = vec![Span::raw(" ")];
    speed.extend(speedup_spans(&means));
    speed.push(Span::styled(
        format!("   window: last {win} steps"),
        Style::new().fg(DIM),
    ));
    let mut times = vec![Span::raw(" ")];
    for (m, p) in means.iter().zip(&r.paths) {
        times.push(Span::styled(
            format!("{} ", p.spec.title(m.id)),
            Style::new().fg(path_color(m.id)).bold(),
        ));
        let clean = m
            .clean
            .map(|c| format!(" (clean {})", fmt_us(c)))
            .unwrap_or_default();
        times.push(Span::raw(format!("{}{clean}   ", fmt_us(m.total))));
    }
    f.render_widget(
        Paragraph::new(vec![Line::from(speed), Line::from(times)]),
        head,
    );

    // A path's table needs 28 columns (stage name and mean); the paths that do not fit are
    // left out whole, and the line above says so.
    let fit = n.min((tables.width / 28).max(1) as usize);
    if fit < n && tables.height > 0 {
        let hidden: Vec<String> = r.paths[fit..]
            .iter()
            .map(|p| p.spec.title(p.name))
            .collect();
        let hint = Line::from(Span::styled(
            format!(
                " {MORE} path {} (a wider terminal shows it)",
                hidden.join(", ")
            ),
            Style::new().fg(DIM),
        ));
        f.render_widget(
            Paragraph::new(hint),
            Rect {
                height: 1,
                ..tables
            },
        );
    }
    let tables = if fit < n {
        Rect {
            y: tables.y + 1,
            height: tables.height.saturating_sub(1),
            ..tables
        }
    } else {
        tables
    };
    let cols = Layout::horizontal(vec![Constraint::Ratio(1, fit as u32); fit]).split(tables);
    for i in 0..fit {
        let mut stats = kernel_stats(app, i);
        // Rows that do not fit leave a last row saying how many are hidden.
        let room_rows = cols[i].height.saturating_sub(3) as usize;
        let hidden = stats.len().saturating_sub(room_rows);
        if hidden > 0 {
            stats.truncate(room_rows.saturating_sub(1));
        }
        // Columns by priority: a narrow pane drops p50 and GB/s before it would cut numbers.
        type Col = (&'static str, u16, u8, fn(&KernelStats) -> String);
        let all: [Col; 5] = [
            ("mean", 9, 0, |k| format!("{:.1}", k.mean)),
            ("p50", 9, 3, |k| format!("{:.1}", k.p50)),
            ("p99", 9, 2, |k| format!("{:.1}", k.p99)),
            ("share", 6, 1, |k| format!("{:.1}%", k.share * 100.0)),
            ("GB/s", 8, 3, |k| {
                k.gb_s
                    .map(|g| format!("{g:.1}"))
                    .unwrap_or_else(|| "—".into())
            }),
        ];
        let room = cols[i].width.saturating_sub(2 + 12);
        // Mean alone where even the share does not fit.
        let mut level = 0u8;
        let fits = |lvl: u8| {
            all.iter()
                .filter(|c| c.2 <= lvl)
                .map(|c| c.1 + 1)
                .sum::<u16>()
                <= room
        };
        while level < 3 && fits(level + 1) {
            level += 1;
        }
        let shown: Vec<&Col> = all.iter().filter(|c| c.2 <= level).collect();
        let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
        let more = (hidden > 0).then(|| {
            let n = hidden + 1;
            Row::new([Cell::from(format!("{MORE} {n} stages"))]).style(Style::new().fg(DIM))
        });
        let rows = stats
            .iter()
            .map(|k| {
                let mut cells = vec![Cell::from(k.stage.name())];
                cells.extend(shown.iter().map(|c| right((c.3)(k))));
                Row::new(cells)
            })
            .chain(more);
        let mut head = vec![Cell::from("kernel µs")];
        head.extend(shown.iter().map(|c| right(c.0.to_string())));
        let header = Row::new(head).style(Style::new().fg(DIM));
        let mut widths = vec![Constraint::Min(12)];
        widths.extend(shown.iter().map(|c| Constraint::Length(c.1)));
        let Some(p) = r.paths.get(i) else { continue };
        let title = format!("path {} · {}", p.name, p.spec.label());
        f.render_widget(
            Table::new(rows, widths)
                .header(header)
                .column_spacing(1)
                .block(block(title).border_style(Style::new().fg(path_color(p.name)))),
            cols[i],
        );
    }

    // Last step's timeline: both paths on one time scale, so the shorter bar is the faster path.
    let outer = block(format!("timeline of step {} (same scale)", r.step));
    let inner = outer.inner(timeline);
    f.render_widget(outer, timeline);
    let max_total = r.paths.iter().map(|p| p.total_us).fold(0.0, f64::max);
    let titles: Vec<String> = r.paths.iter().map(|p| p.spec.title(p.name)).collect();
    let name_w = titles.iter().map(|t| t.chars().count()).max().unwrap_or(1);
    // Room for the path's name before the bar and the total after it.
    let width = inner.width.saturating_sub(name_w as u16 + 2 + 12) as f64;
    let mut lines = Vec::new();
    for (p, title) in r.paths.iter().zip(&titles) {
        let mut spans = vec![Span::styled(
            format!("{title:<name_w$}  "),
            Style::new().fg(path_color(p.name)).bold(),
        )];
        let mut used = 0usize;
        let mut acc = 0.0;
        for (j, k) in p.timings.iter().enumerate() {
            acc += k.us;
            // Cumulative rounding keeps the bar's end exact.
            let end = if max_total > 0.0 {
                (acc / max_total * width).round() as usize
            } else {
                0
            };
            let w = end.saturating_sub(used);
            used = end;
            if w > 0 {
                let c = SEGMENT_COLORS[j % SEGMENT_COLORS.len()];
                spans.push(Span::styled(
                    seg_label(j).to_string().repeat(w),
                    Style::new().fg(Color::Black).bg(c),
                ));
            }
        }
        spans.push(Span::raw(format!(" {}", fmt_us(p.total_us))));
        lines.push(Line::from(spans));
        let legend: Vec<Span> = p
            .timings
            .iter()
            .enumerate()
            .map(|(j, k)| {
                Span::styled(
                    format!("{} {} ", seg_label(j), k.stage),
                    Style::new().fg(SEGMENT_COLORS[j % SEGMENT_COLORS.len()]),
                )
            })
            .collect();
        let mut l = vec![Span::raw("   ")];
        l.extend(legend);
        lines.push(Line::from(l));
        lines.push(Line::raw(""));
    }
    f.render_widget(
        Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false }),
        inner,
    );
}
