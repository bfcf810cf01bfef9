//! View 7, expert parallelism (`--ep N`): the ranks' loads as bars under the contiguous and the
//! EPLB placement side by side, the straggler marked; the imbalance (max/mean) history; EPLB's
//! expert → rank map with the redundant copies; and the what-if line.

use super::style::{block, fmt_us, sparkline, ACCENT, BAD, DIM, NO_STEPS, OK};
use crate::engine::ep::{EpPlacementRecord, EpRecord, GemmSource, PlacementKind, NVLINK_GBPS};
use crate::ui::app::App;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

/// What the view says when the run has no EP figures.
pub const NO_EP: &str =
    "no expert-parallel figures in these steps: run with --ep N (e.g. --ep 8 --redundant 8)";

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    if app.latest().is_none() {
        f.render_widget(Paragraph::new(NO_STEPS).fg(DIM), area);
        return;
    }
    let Some(ep) = app.latest().and_then(|r| r.ep.as_ref()) else {
        f.render_widget(
            Paragraph::new(NO_EP)
                .fg(DIM)
                .wrap(Wrap { trim: true })
                .block(block("expert parallelism")),
            area,
        );
        return;
    };
    let (Some(cont), Some(eplb)) = (
        ep.get(PlacementKind::Contiguous),
        ep.get(PlacementKind::Eplb),
    ) else {
        return;
    };
    // Narrow screens wrap the summary; the bars take what the ranks need, the map the rest.
    let head_h = if area.width < 110 { 8 } else { 4 };
    let bars_h = (ep.spec.ranks as u16 + 2).min(area.height.saturating_sub(head_h + 6) / 2 + 2);
    let [head, bars, hist, map] = Layout::vertical([
        Constraint::Length(head_h),
        Constraint::Length(bars_h.max(3)),
        Constraint::Length(3),
        Constraint::Min(3),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(summary(ep, cont, eplb)).wrap(Wrap { trim: true }),
        head,
    );
    let [left, right] = Layout::horizontal([Constraint::Percentage(50); 2]).areas(bars);
    let scale = cont.max_tokens.max(eplb.max_tokens).max(1);
    draw_bars(f, left, cont, scale);
    draw_bars(f, right, eplb, scale);
    let [hl, hr] = Layout::horizontal([Constraint::Percentage(50); 2]).areas(hist);
    for (cell, kind, color) in [
        (hl, PlacementKind::Contiguous, BAD),
        (hr, PlacementKind::Eplb, OK),
    ] {
        let values = imbalance_history(app, kind);
        let now = values.last().copied().unwrap_or(1.0);
        let title = format!("{} imbalance (max/mean)", kind.name());
        sparkline(f, cell, &title, &format!("{now:.2}"), &values, color);
    }
    draw_map(f, map, ep, eplb);
}

fn link_class(gbps: f64) -> &'static str {
    if gbps >= NVLINK_GBPS {
        "NVLink-class"
    } else {
        "InfiniBand-class"
    }
}

/// The settings, a line per placement, and the what-if line.
fn summary(
    ep: &EpRecord,
    cont: &EpPlacementRecord,
    eplb: &EpPlacementRecord,
) -> Vec<Line<'static>> {
    let s = &ep.spec;
    let gemm = match cont.straggler_gemm.map(|g| g.source) {
        Some(GemmSource::Measured) => "GEMM measured on the GPU",
        Some(GemmSource::Model) => "GEMM from the CPU cost model",
        None => "no GEMM time",
    };
    let settings = Line::from(vec![
        Span::styled(
            format!("EP {} ranks", s.ranks),
            Style::new().fg(ACCENT).bold(),
        ),
        Span::raw(format!(
            " · {} redundant · EPLB from {}/{} steps · {:.0} Gbit/s {} · {gemm}",
            s.redundant,
            ep.window_steps,
            s.window,
            s.link_gbps,
            link_class(s.link_gbps)
        )),
    ]);
    let row = |p: &EpPlacementRecord| {
        let step = p.step_us.map_or("–".to_string(), fmt_us);
        let gemm = p.straggler_gemm.map_or("–".to_string(), |g| fmt_us(g.us));
        Line::from(format!(
            "{:<11} max r{:<3} {:>5} tok {:>5.2}× mean · a2a {} {} · GEMM {} · step {}",
            p.placement.kind.name(),
            p.straggler,
            p.max_tokens,
            p.imbalance(),
            fmt_bytes(p.a2a_max_rank_bytes),
            fmt_us(p.a2a_us),
            gemm,
            step
        ))
    };
    vec![settings, row(cont), row(eplb), what_if(ep, cont, eplb)]
}

/// "rebalancing from the last W steps would cut the straggler from X to Y tokens (−Z% step time)".
pub fn what_if_text(ep: &EpRecord, cont: &EpPlacementRecord, eplb: &EpPlacementRecord) -> String {
    let saving = match (cont.step_us, eplb.step_us) {
        (Some(a), Some(b)) if a > 0.0 => format!(" ({:+.0}% step time)", (b - a) / a * 100.0),
        _ => String::new(),
    };
    let verb = if eplb.max_tokens < cont.max_tokens {
        "cut"
    } else {
        "take"
    };
    format!(
        "rebalancing from the last {} steps would {verb} the straggler from {} to {} tokens{saving}",
        ep.window_steps, cont.max_tokens, eplb.max_tokens
    )
}

fn what_if(ep: &EpRecord, cont: &EpPlacementRecord, eplb: &EpPlacementRecord) -> Line<'static> {
    let color = if eplb.max_tokens < cont.max_tokens {
        OK
    } else {
        DIM
    };
    Line::from(Span::styled(
        what_if_text(ep, cont, eplb),
        Style::new().fg(color),
    ))
}

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// One bar per rank (or per block of ranks when they do not fit, showing the block's most
/// loaded rank), scaled to `scale` tokens; the straggler's bar is red and marked.
fn draw_bars(f: &mut Frame, area: Rect, p: &EpPlacementRecord, scale: u64) {
    let inner_rows = area.height.saturating_sub(2).max(1) as usize;
    let n = p.tokens_per_rank.len();
    let per_row = n.div_ceil(inner_rows).max(1);
    let label_w = if per_row == 1 { 5 } else { 10 };
    let bar_w = (area.width as usize).saturating_sub(label_w + 16).max(1);
    let lines: Vec<Line> = (0..n)
        .step_by(per_row)
        .map(|first| {
            let last = (first + per_row).min(n) - 1;
            let tokens = p.tokens_per_rank[first..=last]
                .iter()
                .copied()
                .max()
                .unwrap_or(0);
            let is_straggler = (first..=last).contains(&p.straggler);
            let label = if first == last {
                format!("r{first}")
            } else {
                format!("r{first}–{last}")
            };
            let filled = (tokens as f64 / scale as f64 * bar_w as f64).round() as usize;
            let color = if is_straggler { BAD } else { Color::Blue };
            let mut spans = vec![
                Span::raw(format!("{label:<label_w$}")),
                Span::styled("█".repeat(filled), Style::new().fg(color)),
                Span::raw(" ".repeat(bar_w - filled.min(bar_w))),
                Span::raw(format!(" {tokens:>6}")),
            ];
            if is_straggler {
                spans.push(Span::styled(" ◀ max", Style::new().fg(BAD).bold()));
            }
            Line::from(spans)
        })
        .collect();
    let title = format!("{} · tokens per rank", p.placement.kind.name());
    f.render_widget(Paragraph::new(lines).block(block(title)), area);
}

fn imbalance_history(app: &App, kind: PlacementKind) -> Vec<f64> {
    app.history
        .iter()
        .filter_map(|r| r.ep.as_ref()?.get(kind).map(EpPlacementRecord::imbalance))
        .collect()
}

/// EPLB's experts per rank; an expert with more than one copy is highlighted with `×copies`.
fn draw_map(f: &mut Frame, area: Rect, ep: &EpRecord, eplb: &EpPlacementRecord) {
    let experts = eplb
        .placement
        .ranks
        .iter()
        .flatten()
        .map(|&e| e as usize + 1)
        .max()
        .unwrap_or(0);
    let cnt = eplb.placement.logcnt(experts);
    let lines: Vec<Line> = eplb
        .placement
        .ranks
        .iter()
        .enumerate()
        .map(|(r, slots)| {
            let mut spans = vec![Span::styled(format!("r{r:<4}"), Style::new().fg(DIM))];
            for &e in slots {
                let copies = cnt[e as usize];
                spans.push(if copies > 1 {
                    Span::styled(format!("{e}×{copies} "), Style::new().fg(ACCENT).bold())
                } else {
                    Span::raw(format!("{e} "))
                });
            }
            Line::from(spans)
        })
        .collect();
    let title = format!(
        "EPLB expert → rank map ({} slots, ×n: an expert with n copies)",
        ep.placements
            .iter()
            .find(|p| p.placement.kind == PlacementKind::Eplb)
            .map_or(0, |p| p.placement.phy2log().len())
    );
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(title)),
        area,
    );
}
