//! View 2, expert load: every slot of the current step and cumulatively, laid out by group,
//! with the shared slots marked and the imbalance figures.

use super::style::{block, fit_groups, fit_rows, path_color, DIM};
use crate::engine::stats::load_balance;
use crate::ui::app::App;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

/// Glyph and color of a cell loaded `l` out of the panel's maximum `max`.
fn heat(l: u64, max: u64) -> (char, Color) {
    if l == 0 || max == 0 {
        return ('·', DIM);
    }
    let r = l as f64 / max as f64;
    match r {
        r if r > 0.75 => ('█', Color::Red),
        r if r > 0.5 => ('▓', Color::Yellow),
        r if r > 0.25 => ('▒', Color::Green),
        _ => ('░', Color::Blue),
    }
}

/// How the experts are laid out in a panel of inner width `w`: experts per row, cell width,
/// and whether rows are groups.
fn grid(e: usize, n_group: usize, w: usize) -> (usize, usize, bool) {
    let room = w.saturating_sub(5).max(1);
    let per_group = e / n_group.max(1);
    if n_group > 1 && (1..=room).contains(&per_group) {
        return (per_group, (room / per_group).clamp(1, 3), true);
    }
    let per_row = if e <= room {
        e
    } else {
        [64, 48, 32, 16, 8, 4, 2, 1]
            .into_iter()
            .find(|&p| p <= room)
            .unwrap_or(1)
    };
    (per_row, (room / per_row).clamp(1, 3), false)
}

/// Draws the routed experts of `load` as a heatmap into `area` (inside its block).
fn heatmap(buf: &mut Buffer, area: Rect, load: &[u64], e: usize, n_group: usize) {
    let routed = &load[..e.min(load.len())];
    let max = routed.iter().copied().max().unwrap_or(0);
    let (per_row, cw, grouped) = grid(routed.len(), n_group, area.width as usize);
    let rows = routed.len().div_ceil(per_row.max(1));
    let per_group = routed.len() / n_group.max(1);
    for row in 0..rows.min(area.height as usize) {
        let y = area.y + row as u16;
        let first = row * per_row;
        let label = if grouped {
            format!("g{:<3}", first / per_group.max(1))
        } else {
            format!("{first:>4}")
        };
        buf.set_string(area.x, y, label, Style::new().fg(DIM));
        for (j, &l) in routed[first..(first + per_row).min(routed.len())]
            .iter()
            .enumerate()
        {
            let (ch, color) = heat(l, max);
            let x0 = area.x + 5 + (j * cw) as u16;
            for dx in 0..cw as u16 {
                // The last column of a wide cell stays blank so neighbours read apart.
                let c = if cw > 1 && dx == cw as u16 - 1 {
                    ' '
                } else {
                    ch
                };
                if x0 + dx < area.right() {
                    buf[(x0 + dx, y)].set_char(c).set_fg(color);
                }
            }
        }
    }
    if rows > area.height as usize && area.height > 0 {
        let y = area.bottom().saturating_sub(1);
        let hint = format!(
            "{} {} rows",
            super::style::MORE,
            rows + 1 - area.height as usize
        );
        let blank = " ".repeat(area.width as usize);
        buf.set_stringn(area.x, y, blank, area.width as usize, Style::new());
        buf.set_stringn(area.x, y, hint, area.width as usize, Style::new().fg(DIM));
    }
}

/// A line of figures in `width` columns: whole "label value" pairs (a dim span and what
/// follows it), never a cut number; lists (hottest, groups) keep as many whole entries as fit.
fn fit_line(line: Line<'static>, width: usize) -> Line<'static> {
    let dim = Style::new().fg(DIM);
    let mut groups: Vec<Vec<Span<'static>>> = Vec::new();
    for s in line.spans {
        match groups.last_mut() {
            Some(g) if s.style != dim => g.push(s),
            _ => groups.push(vec![s]),
        }
    }
    // A label keeps its first entry; the entries after it go one by one.
    let split = |mut g: Vec<Span<'static>>| -> Vec<Vec<Span<'static>>> {
        let plain = g.len() > 1 && g[1..].iter().all(|s| s.style == Style::new());
        if !plain {
            return vec![g];
        }
        let single = g.len() == 2;
        let entries: Vec<Span<'static>> = g
            .drain(1..)
            .flat_map(|s| {
                let words: Vec<String> = if single && s.content.trim_end().contains(' ') {
                    s.content.split_inclusive(' ').map(String::from).collect()
                } else {
                    vec![s.content.to_string()]
                };
                words.into_iter().map(Span::raw).collect::<Vec<_>>()
            })
            .collect();
        let mut out = Vec::new();
        let mut first = g;
        let mut rest = entries.into_iter();
        first.extend(rest.next());
        out.push(first);
        out.extend(rest.map(|s| vec![s]));
        out
    };
    fit_groups(groups.into_iter().flat_map(split).collect(), width).0
}

fn ids(list: &[(usize, u64)]) -> String {
    let v: Vec<String> = list.iter().map(|(i, l)| format!("{i}:{l}")).collect();
    v.join(" ")
}

fn stat_lines(
    title: &str,
    load: &[u64],
    e: usize,
    n_group: usize,
    tokens: u64,
) -> Vec<Line<'static>> {
    let routed = &load[..e.min(load.len())];
    let im = load_balance(routed, 5);
    let dim = Style::new().fg(DIM);
    let mut out = vec![
        Line::from(Span::styled(title.to_string(), Style::new().bold())),
        Line::from(vec![
            Span::styled("max/mean ", dim),
            Span::raw(format!("{:.2}", im.max_over_mean)),
            Span::styled("  balancedness ", dim),
            Span::raw(format!("{:.3}", im.balancedness)),
            Span::styled("  CV ", dim),
            Span::raw(format!("{:.3}", im.cv)),
        ]),
        Line::from(vec![
            Span::styled("mean ", dim),
            Span::raw(format!("{:.1}", im.mean)),
            Span::styled("  max ", dim),
            Span::raw(im.max.to_string()),
            Span::styled("  idle experts ", dim),
            Span::raw(format!("{}/{}", im.idle, routed.len())),
        ]),
        Line::from(vec![
            Span::styled("hottest ", dim),
            Span::raw(ids(&im.hottest)),
        ]),
        Line::from(vec![
            Span::styled("coldest ", dim),
            Span::raw(ids(&im.coldest)),
        ]),
    ];
    if n_group > 1 {
        // Share of the routed assignments each group took: what group-limited routing balances.
        let per = routed.len() / n_group;
        let total: u64 = routed.iter().sum();
        let mut l = vec![Span::styled("groups ", dim)];
        for (g, chunk) in routed.chunks(per.max(1)).enumerate() {
            let share = chunk.iter().sum::<u64>() as f64 / total.max(1) as f64 * 100.0;
            l.push(Span::raw(format!("g{g} {share:.0}%  ")));
        }
        out.push(Line::from(l));
    }
    let shared: Vec<Span> = load[e.min(load.len())..]
        .iter()
        .enumerate()
        .flat_map(|(j, &l)| {
            let pct = if tokens > 0 {
                l as f64 / tokens as f64 * 100.0
            } else {
                0.0
            };
            [
                Span::styled(format!("◆ S{j} "), Style::new().fg(Color::Magenta).bold()),
                Span::raw(format!("{l} ({pct:.0}% of tokens)  ")),
            ]
        })
        .collect();
    if !shared.is_empty() {
        let mut l = vec![Span::styled("shared ", dim)];
        l.extend(shared);
        out.push(Line::from(l));
    }
    out
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let (Some(m), Some(r)) = (&app.meta, app.latest()) else {
        f.render_widget(Paragraph::new(super::style::NO_STEPS).fg(DIM), area);
        return;
    };
    let e = m.config.n_routed_experts;
    let n_group = m.config.n_group;
    let pi = app.shown_load_path();
    let Some(path) = r.paths.get(pi) else { return };
    let step_load: Vec<u64> = path.load.iter().map(|&l| l as u64).collect();
    let cum = app.cumulative.get(pi).cloned().unwrap_or_default();

    let mut sel = vec![Span::styled(" path ", Style::new().fg(DIM))];
    for (i, p) in r.paths.iter().enumerate() {
        let style = if i == pi {
            Style::new().fg(Color::Black).bg(path_color(p.name)).bold()
        } else {
            Style::new().fg(path_color(p.name))
        };
        sel.push(Span::styled(format!(" {} ", p.spec.title(p.name)), style));
        sel.push(Span::raw(" "));
    }
    sel.push(Span::styled(
        format!("(h/l)  {}   ", path.spec.label()),
        Style::new().fg(DIM),
    ));
    sel.push(Span::styled("load ", Style::new().fg(DIM)));
    for (ch, color, what) in [
        ('·', DIM, "0 "),
        ('░', Color::Blue, "≤¼ "),
        ('▒', Color::Green, "≤½ "),
        ('▓', Color::Yellow, "≤¾ "),
        ('█', Color::Red, "max"),
    ] {
        sel.push(Span::styled(ch.to_string(), Style::new().fg(color)));
        sel.push(Span::styled(what, Style::new().fg(DIM)));
    }

    // The maps take the rows they need; the figures below get the rest.
    let half = (area.width / 2) as usize;
    let (per_row, _, _) = grid(e, n_group, half.saturating_sub(2));
    let map_rows = e.div_ceil(per_row.max(1)) as u16 + 2;
    let [top, maps, stats] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Max(map_rows),
        Constraint::Min(9),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(Line::from(sel)), top);

    let [l, rt] = Layout::horizontal([Constraint::Percentage(50); 2]).areas(maps);
    let cum_title = format!(
        "cumulative, steps {}–{} ({})",
        app.cumulative_from, r.step, app.cumulative_steps
    );
    for (rect, title, load) in [
        (
            l,
            format!("step {} · {} tokens", r.step, r.tokens),
            &step_load,
        ),
        (rt, cum_title.clone(), &cum),
    ] {
        let b = block(title);
        let inner = b.inner(rect);
        f.render_widget(b, rect);
        heatmap(f.buffer_mut(), inner, load, e, n_group);
    }

    let [sl, sr] = Layout::horizontal([Constraint::Percentage(50); 2]).areas(stats);
    for (rect, lines) in [
        (
            sl,
            stat_lines("this step", &step_load, e, n_group, r.tokens as u64),
        ),
        (
            sr,
            stat_lines("cumulative", &cum, e, n_group, app.cumulative_tokens),
        ),
    ] {
        let b = block("imbalance");
        let inner = b.inner(rect);
        f.render_widget(b, rect);
        let lines = lines
            .into_iter()
            .map(|l| fit_line(l, inner.width as usize))
            .collect();
        f.render_widget(
            Paragraph::new(fit_rows(lines, inner.height as usize)),
            inner,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_keep_groups_on_rows_and_wrap_512_experts() {
        assert_eq!(grid(256, 8, 80), (32, 2, true));
        assert_eq!(grid(512, 1, 80), (64, 1, false));
        assert_eq!(grid(8, 1, 80), (8, 3, false));
        // A session's config is outside input: more groups than experts must not divide by 0.
        assert_eq!(grid(4, 8, 80), (4, 3, false));
    }
}
