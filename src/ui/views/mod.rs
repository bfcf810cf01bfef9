//! Drawing. Every function here reads the App and writes a frame; none changes state, so every
//! view can be rendered from fixed StepRecords in tests.

mod contract;
pub mod ep;
mod load;
mod numerics;
mod overview;
pub mod style;
mod telemetry;
mod timings;

use super::app::{App, Mode, Popup};
use super::keys;
use super::tabs::{tab_label, tab_ranges, View};
use crate::engine::paths::{PathId, PathSpec, RouterImpl, Variant, VARIANTS};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};
use ratatui::Frame;
use style::{fit_groups, path_color, path_ids, step_rate, ACCENT, BAD, DIM, OK};

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App) {
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_header(f, header, app);
    draw_tabs(f, tabs, app);
    if app.meta.is_none() {
        let what = match app.mode {
            Mode::Live => "building the engine…",
            Mode::Replay => "opening the session…",
        };
        f.render_widget(Paragraph::new(what).fg(DIM), body);
    } else {
        match app.view {
            View::Overview => overview::draw(f, body, app),
            View::Load => load::draw(f, body, app),
            View::Contract => contract::draw(f, body, app),
            View::Timings => timings::draw(f, body, app),
            View::Numerics => numerics::draw(f, body, app),
            View::Telemetry => telemetry::draw(f, body, app),
            View::Ep => ep::draw(f, body, app),
        }
    }
    draw_footer(f, footer, app);
    match &app.popup {
        Some(Popup::Help) => draw_help(f, app),
        Some(Popup::Variant(sel)) => draw_variant_menu(f, *sel),
        Some(Popup::Goto(buf)) => draw_goto(f, app, buf),
        None => {}
    }
}

fn draw_header(f: &mut Frame, area: Rect, app: &App) {
    let mut top = vec![Span::styled(
        " moescope ",
        Style::new().bold().fg(Color::Black).bg(ACCENT),
    )];
    let sep = || Span::styled(" │ ", Style::new().fg(DIM));
    let (state, color) = match (&app.engine_error, app.paused, app.mode) {
        (Some(_), _, _) => ("■ stopped", BAD),
        (None, true, _) => ("⏸ paused", Color::Yellow),
        (None, false, Mode::Live) => ("▶ running", OK),
        (None, false, Mode::Replay) => ("▶ playing", OK),
    };
    top.push(Span::raw(" "));
    top.push(Span::styled(state, Style::new().fg(color).bold()));
    if let Some(rec) = &app.recording {
        top.push(sep());
        top.push(Span::styled(
            format!("● REC {}", rec.display()),
            Style::new().fg(BAD).bold(),
        ));
    }
    if let Some(r) = app.latest() {
        top.push(sep());
        top.push(Span::raw(format!("step {}", r.step)));
        top.push(Span::raw(format!(" · T={}", r.tokens)));
        if app.busy_resizing() {
            // The shown T and rate are the old ones until the first step at the new T ends.
            top.push(Span::styled(
                format!(" · ⧗ running T={}…", app.tokens),
                Style::new().fg(Color::Yellow).bold(),
            ));
        } else if let Some(rate) = step_rate(app) {
            top.push(Span::raw(format!(" · {rate:.1} steps/s")));
        }
    }
    if let Some(p) = app.replay {
        top.push(sep());
        top.push(Span::raw(format!(
            "pos {}/{} ×{}",
            p.pos,
            p.len.saturating_sub(1),
            p.speed
        )));
    }
    if let Some(m) = &app.meta {
        top.push(sep());
        top.push(Span::styled(m.config.name.clone(), Style::new().bold()));
        let mode = match app.mode {
            Mode::Live => "live".to_string(),
            Mode::Replay => format!("replay {}", m.source),
        };
        top.push(sep());
        top.push(Span::raw(format!("{mode} · {} · {}", m.backend, m.device)));
    }
    // The variant first: it is what users change, and the path labels may not fit.
    let shown = crate::ui::app::path_b(&app.paths()).map(|p| p.variant);
    let variant_style = if app.variant == Variant::Correct {
        Style::new().fg(OK)
    } else {
        Style::new().fg(BAD).bold()
    };
    let mut paths = vec![
        Span::styled(" variant ", Style::new().fg(DIM)),
        Span::styled(app.variant.name(), variant_style),
    ];
    if shown.is_some_and(|v| v != app.variant) {
        paths.push(Span::styled(" (from the next step)", Style::new().fg(DIM)));
    }
    let w = area.width as usize;
    paths.extend(path_labels(&app.paths(), w.saturating_sub(width(&paths))));
    // What does not fit is left out whole: a field after a separator, a path after its label.
    let groups = |spans: Vec<Span<'static>>, starts: &dyn Fn(&str) -> bool| {
        let mut out: Vec<Vec<Span<'static>>> = Vec::new();
        for s in spans {
            match out.last_mut() {
                Some(g) if !starts(&s.content) => g.push(s),
                _ => out.push(vec![s]),
            }
        }
        out
    };
    let (top, _) = fit_groups(groups(top, &|c| c == " │ " || c.starts_with(" · ")), w);
    let (paths, _) = fit_groups(groups(paths, &|c| c.starts_with("  ")), w);
    f.render_widget(Paragraph::new(vec![top, paths]), area);
}

fn width(spans: &[Span]) -> usize {
    spans.iter().map(|s| s.width()).sum()
}

/// Each path with its whole label (`A: unfused router + separate shared, rsf in-router`)
/// where all of them fit `room`, else each by its title and router only (`A unfused`,
/// `B fused`, `C fused_router.cu`; the variant is the line's first field), so every path
/// keeps its name.
fn path_labels(specs: &[PathSpec], room: usize) -> Vec<Span<'static>> {
    let name =
        |id: PathId, text: String| Span::styled(text, Style::new().fg(path_color(id)).bold());
    let full: Vec<Span<'static>> = path_ids(specs.len())
        .zip(specs)
        .flat_map(|(id, spec)| [name(id, format!("  {id}: ")), Span::raw(spec.label())])
        .collect();
    if width(&full) <= room {
        return full;
    }
    path_ids(specs.len())
        .zip(specs)
        .flat_map(|(id, spec)| {
            let router = match spec.router {
                RouterImpl::Unfused => " unfused",
                RouterImpl::Fused => " fused",
                RouterImpl::User => "",
            };
            [name(id, format!("  {}", spec.title(id))), Span::raw(router)]
        })
        .collect()
}

fn draw_tabs(f: &mut Frame, area: Rect, app: &App) {
    if area.height == 0 {
        return;
    }
    let buf = f.buffer_mut();
    for (i, x0, x1) in tab_ranges() {
        let style = if i == app.view.index() {
            Style::new().fg(Color::Black).bg(ACCENT).bold()
        } else {
            Style::new().fg(Color::Gray)
        };
        // Whole tabs only; an arrow says there are more (the number keys reach them all).
        if x1 + 1 < area.right() {
            buf.set_string(x0, area.y, tab_label(i, View::ALL[i]), style);
        } else if area.width > 0 {
            buf.set_string(area.right() - 1, area.y, "→", Style::new().fg(DIM));
            break;
        }
    }
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App) {
    let (text, style) = if let Some(e) = &app.engine_error {
        // One line: a panic message spans two.
        (
            format!(" engine error: {}", e.replace('\n', " ")),
            Style::new().fg(BAD).bold(),
        )
    } else if let Some(s) = &app.status {
        (format!(" {s}"), Style::new().fg(Color::Yellow))
    } else if let Some(n) = app.notices.back() {
        (format!(" {n}"), Style::new().fg(DIM))
    } else {
        (String::new(), Style::new())
    };
    let hint = " ? help · q quit ";
    let [left, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(hint.len() as u16)]).areas(area);
    f.render_widget(Paragraph::new(text).style(style), left);
    f.render_widget(Paragraph::new(hint).fg(DIM), right);
}

/// A centered rectangle of at most `w`×`h` cells.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_help(f: &mut Frame, app: &App) {
    let replay = app.mode == Mode::Replay;
    let mut lines = Vec::new();
    let mut popup_header = false;
    for b in keys::help_rows(replay) {
        if b.scope == keys::Scope::Popup && !popup_header {
            popup_header = true;
            lines.push(Line::from(Span::styled(
                "in menus and prompts",
                Style::new().fg(DIM),
            )));
        }
        lines.push(Line::from(vec![
            Span::styled(
                format!("{:>13}  ", b.label()),
                Style::new().fg(ACCENT).bold(),
            ),
            Span::raw(b.help),
        ]));
    }
    lines.push(Line::from(Span::styled(
        "mouse: click a tab to show its view",
        Style::new().fg(DIM),
    )));
    let title = if replay {
        " keys (replay) "
    } else {
        " keys (live) "
    };
    // Short terminals get the list in columns, as many as are at least 36 wide; a help line
    // too long for its column ends in "…" with a gap before the next, and rows that still do
    // not fit end in a "more →" line.
    let room = f.area().height.saturating_sub(2).max(1) as usize;
    let most = ((f.area().width.saturating_sub(2)) / 36).max(1) as usize;
    let ncols = lines.len().div_ceil(room).clamp(1, most);
    let rows = lines.len().div_ceil(ncols).min(room);
    let col_w: u16 = 58.min(f.area().width.saturating_sub(2) / ncols as u16);
    let fits = |l: &Line| l.width() < col_w as usize;
    let lines: Vec<Line> = lines
        .into_iter()
        .map(|l| {
            if fits(&l) {
                l
            } else {
                ellipsis(l, col_w as usize - 1)
            }
        })
        .collect();
    let lines = if lines.len() > rows * ncols {
        let mut l = lines;
        let keep = rows * ncols - 1;
        let hidden = l.len() - keep;
        l.truncate(keep);
        l.push(Line::from(Span::styled(
            format!("{} {hidden} keys", style::MORE),
            Style::new().fg(DIM),
        )));
        l
    } else {
        lines
    };
    let area = centered(f.area(), col_w * ncols as u16 + 2, rows as u16 + 2);
    f.render_widget(Clear, area);
    let outer = Block::bordered()
        .title(title)
        .border_style(Style::new().fg(ACCENT));
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let cols = Layout::horizontal(vec![Constraint::Length(col_w); ncols]).split(inner);
    for (chunk, col) in lines.chunks(rows.max(1)).zip(cols.iter()) {
        f.render_widget(Paragraph::new(chunk.to_vec()), *col);
    }
}

/// `line` shortened to `width` columns, its end replaced by "…".
fn ellipsis(line: Line<'static>, width: usize) -> Line<'static> {
    let mut left = width.saturating_sub(1);
    let mut out = Vec::new();
    for s in line.spans {
        if left == 0 {
            break;
        }
        let text: String = s.content.chars().take(left).collect();
        left -= text.chars().count();
        out.push(Span::styled(text, s.style));
    }
    out.push(Span::raw("…"));
    Line::from(out)
}

fn draw_variant_menu(f: &mut Frame, sel: usize) {
    let mut lines = Vec::new();
    for (i, v) in VARIANTS.iter().enumerate() {
        let mark = if i == sel { "▶ " } else { "  " };
        let style = if i == sel {
            Style::new().bold().fg(ACCENT)
        } else {
            Style::new()
        };
        lines.push(Line::from(Span::styled(
            format!("{mark}{}", v.name()),
            style,
        )));
        lines.push(Line::from(Span::styled(
            format!("    {}", v.describe()),
            Style::new().fg(DIM),
        )));
    }
    // Room for descriptions that wrap.
    let area = centered(f.area(), 110, lines.len() as u16 + 4);
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::bordered()
                .title(" path B variant — ↑↓ choose, Enter apply, Esc cancel ")
                .border_style(Style::new().fg(ACCENT)),
        ),
        area,
    );
}

fn draw_goto(f: &mut Frame, app: &App, buf: &str) {
    let last = app.replay.map(|r| r.len.saturating_sub(1)).unwrap_or(0);
    let area = centered(f.area(), 44, 3);
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(format!("{buf}▏")).block(
            Block::bordered()
                .title(format!(" go to position 0..{last}, Enter "))
                .border_style(Style::new().fg(ACCENT)),
        ),
        area,
    );
}
