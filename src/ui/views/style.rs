//! What every view draws with: colours, titled blocks, number formats, the history chart.

use crate::engine::paths::PathId;
use crate::ui::app::App;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Sparkline};
use ratatui::Frame;

/// What a view says before the first step arrives (a GPU step or a CUDA build can take a while).
pub const NO_STEPS: &str = "waiting for the first step…";

pub const OK: Color = Color::Green;
pub const BAD: Color = Color::Red;
pub const DIM: Color = Color::DarkGray;
pub const ACCENT: Color = Color::Cyan;
pub fn path_color(id: PathId) -> Color {
    match id {
        PathId::A => Color::Yellow,
        PathId::B => Color::Magenta,
        PathId::C => Color::LightBlue,
    }
}

/// The paths of a run by position (the header's specs and the per-path vectors of a
/// comparison are in path order); a session with more than the paths there are shows the
/// ones there are.
pub fn path_ids(n: usize) -> impl Iterator<Item = PathId> {
    PathId::ALL.into_iter().take(n)
}

/// Steps per second over the recent history, from the steps' recorded times; None while
/// paused or while the first step at a new size runs (the last rate is not what runs now).
pub fn step_rate(app: &App) -> Option<f64> {
    if app.paused || app.busy_resizing() {
        return None;
    }
    let n = app.history.len().min(20);
    if n < 2 {
        return None;
    }
    let last = app.history.back()?;
    let first = &app.history[app.history.len() - n];
    let dt = (last.t_ms - first.t_ms) / 1e3;
    (dt > 0.0).then(|| (n - 1) as f64 / dt)
}

/// A titled block.
pub fn block(title: impl Into<String>) -> Block<'static> {
    Block::new()
        .borders(Borders::ALL)
        .border_style(Style::new().fg(DIM))
        .title(Span::styled(
            format!(" {} ", title.into()),
            Style::new().fg(Color::White).add_modifier(Modifier::BOLD),
        ))
}

/// Microseconds with a unit that suits them.
pub fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

/// `title value` in `width` columns: the title is shortened (with "…") or left out so that the
/// value is never cut; a value that does not fit at all is left out whole.
pub fn titled_value(title: &str, value: &str, width: usize) -> String {
    let (t, v) = (title.chars().count(), value.chars().count());
    if t + 1 + v <= width {
        format!("{title} {value}")
    } else if v + 3 <= width {
        let keep: String = title.chars().take(width - v - 2).collect();
        format!("{keep}… {value}")
    } else if v <= width {
        value.to_string()
    } else {
        String::new()
    }
}

/// Whole groups of spans, in order, as long as they fit `width` columns: a group that does not
/// fit is left out with every group after it, never cut. Also says whether any was left out.
pub fn fit_groups(groups: Vec<Vec<Span<'static>>>, width: usize) -> (Line<'static>, bool) {
    let mut used = 0;
    let mut out = Vec::new();
    let n = groups.len();
    for (i, g) in groups.into_iter().enumerate() {
        let w: usize = g.iter().map(|s| s.width()).sum();
        if used + w > width {
            return (Line::from(out), i < n);
        }
        used += w;
        out.extend(g);
    }
    (Line::from(out), false)
}

/// The hint where rows or columns are left out for want of room.
pub const MORE: &str = "more →";

/// `lines` in `height` rows: when they do not all fit, the last row says how many are hidden.
pub fn fit_rows(mut lines: Vec<Line<'static>>, height: usize) -> Vec<Line<'static>> {
    if lines.len() > height && height > 0 {
        let hidden = lines.len() - (height - 1);
        lines.truncate(height - 1);
        lines.push(Line::from(Span::styled(
            format!("{MORE} {hidden} rows"),
            Style::new().fg(DIM),
        )));
    }
    lines
}

/// A value in scientific notation for small differences, plain otherwise.
pub fn fmt_small(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() < 1e-3 || x.abs() >= 1e4 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

/// The smallest span a chart draws, relative to the largest magnitude it shows: float noise
/// (2.5 ± 3e-8) draws flat, while a real deviation of 1e-3 on 2.5 still fills the chart.
pub const MIN_CHART_SPAN: f64 = 1e-4;

/// Bar heights (0..=100) of a chart of `values`. The range maps onto 8..=100 so the lowest
/// value still shows as a sliver (a bar needs an eighth of a row); a range narrower than
/// [`MIN_CHART_SPAN`] of the values is widened around its middle, so a flat series sits
/// midway; a non-finite value draws as an empty bar.
pub fn chart_levels(values: &[f64]) -> Vec<u64> {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(MIN_CHART_SPAN * lo.abs().max(hi.abs()));
    let base = (lo + hi) / 2.0 - span / 2.0;
    values
        .iter()
        .map(|v| match v.is_finite() {
            false => 0,
            true if span > 0.0 => 8 + ((v - base) / span * 92.0).round() as u64,
            true => 54,
        })
        .collect()
}

/// A one-line history chart with its title and newest value; fills `area`'s last line with
/// the newest values that fit.
pub fn sparkline(f: &mut Frame, area: Rect, title: &str, now: &str, values: &[f64], color: Color) {
    if area.height == 0 || area.width == 0 {
        return;
    }
    // A label line and at most three chart lines: taller charts say nothing more.
    let [label, chart] = Layout::vertical([Constraint::Length(1), Constraint::Max(3)]).areas(area);
    f.render_widget(
        // One column stays free, so side-by-side charts read apart.
        Paragraph::new(titled_value(
            title,
            now,
            label.width.saturating_sub(1) as usize,
        ))
        .fg(Color::Gray),
        label,
    );
    let w = chart.width as usize;
    let data = chart_levels(&values[values.len().saturating_sub(w)..]);
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .max(100)
            .style(Style::new().fg(color)),
        chart,
    );
}

#[cfg(test)]
mod tests {
    use super::chart_levels;

    #[test]
    fn float_noise_draws_flat_and_a_real_deviation_draws_clearly() {
        let noise: Vec<f64> = (0..40)
            .map(|i| 2.5 + if i % 2 == 0 { 3e-8 } else { -3e-8 })
            .collect();
        let levels = chart_levels(&noise);
        let (lo, hi) = (levels.iter().min().unwrap(), levels.iter().max().unwrap());
        assert!(hi - lo <= 1, "noise drew as a swing: {levels:?}");
        let mut real = vec![2.5; 40];
        real[20] = 2.501;
        let levels = chart_levels(&real);
        assert_eq!((levels[0], levels[20]), (8, 100), "{levels:?}");
        // A flat series sits midway; zeros and NaN do not divide by nothing.
        assert!(chart_levels(&[0.0, 0.0]).iter().all(|&l| l == 54));
        assert_eq!(chart_levels(&[f64::NAN, 1.0]), vec![0, 54]);
    }
}
