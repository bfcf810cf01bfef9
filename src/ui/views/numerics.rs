//! View 5, numerics: routing agreement, weight and output differences between the paths and
//! against the f64 reference, their history, and a drill-down into one sampled token.

use super::style::{block, fit_rows, fmt_small, path_color, sparkline, ACCENT, BAD, DIM, MORE, OK};
use crate::engine::step::{RouteClass, SlotWeights, StepRecord, TokenDetail};
use crate::ui::app::App;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

/// Weight differences below this are f32 rounding, not a different contract.
const WEIGHT_EPS: f64 = 1e-3;

fn pct(x: f64) -> Span<'static> {
    Span::styled(
        format!("{:>9.1}%", x * 100.0),
        Style::new().fg(if x >= 1.0 { OK } else { BAD }),
    )
}

/// A number column's width for a path: 10, or its title and a space where that is longer
/// (`C fused_router.cu`).
fn column_width(title: &str) -> usize {
    (title.chars().count() + 1).max(10)
}

/// `cell` right-aligned in `w` columns (cells come at least 10 wide); one that fills them
/// keeps a space before it, so it never runs into the column on its left.
fn pad(cell: Span<'static>, w: usize) -> Span<'static> {
    let content = Span::raw(cell.content.trim_start().to_string());
    let fill = w.saturating_sub(content.width()).max(1);
    Span::styled(
        format!("{}{}", " ".repeat(fill), content.content),
        cell.style,
    )
}

fn label(s: &str) -> Span<'static> {
    Span::styled(format!("{s:<24}"), Style::new().fg(DIM))
}

fn num(v: Option<f64>) -> Span<'static> {
    Span::raw(format!(
        "{:>10}",
        v.map(fmt_small).unwrap_or_else(|| "—".into())
    ))
}

/// A count, green at 0 and red above.
fn count(n: usize) -> Span<'static> {
    Span::styled(
        format!("{n:>10}"),
        Style::new().fg(if n == 0 { OK } else { BAD }),
    )
}

/// The step panel's path columns: each path's title and width, as many as fit (the rest left
/// out whole).
struct Columns {
    titles: Vec<String>,
    widths: Vec<usize>,
    n: usize,
}

impl Columns {
    fn of(r: &StepRecord, width: usize) -> Columns {
        let titles: Vec<String> = r.paths.iter().map(|p| p.spec.title(p.name)).collect();
        let widths: Vec<usize> = titles.iter().map(|t| column_width(t)).collect();
        let mut used = 24;
        let n = widths
            .iter()
            .take_while(|w| {
                used += *w;
                used <= width
            })
            .count();
        Columns { titles, widths, n }
    }

    /// A row: its label, then one cell per shown path.
    fn row(&self, name: &str, f: &dyn Fn(usize) -> Span<'static>) -> Line<'static> {
        let mut l = vec![label(name)];
        for (i, &w) in self.widths.iter().enumerate().take(self.n) {
            l.push(pad(f(i), w));
        }
        Line::from(l)
    }

    /// The paths' titles, and "more →" where some are left out and there is room to say so.
    fn head(&self, r: &StepRecord, width: usize) -> Line<'static> {
        let mut head = vec![label("")];
        let shown = r
            .paths
            .iter()
            .zip(&self.titles)
            .zip(&self.widths)
            .take(self.n);
        for ((p, t), &w) in shown {
            head.push(Span::styled(
                format!("{t:>w$}"),
                Style::new().fg(path_color(p.name)).bold(),
            ));
        }
        let shown = 24 + self.widths[..self.n].iter().sum::<usize>();
        if self.n < r.paths.len() && width >= shown + 7 {
            head.push(Span::styled(format!(" {MORE}"), Style::new().fg(DIM)));
        }
        Line::from(head)
    }
}

/// The step's figures, with as many path columns as fit `width`.
fn now_lines(r: &StepRecord, width: usize) -> Vec<Line<'static>> {
    let c = &r.comparison;
    let cols = Columns::of(r, width);
    let mut lines = vec![
        Line::from(vec![
            label("routing agreement A = B"),
            pct(c.routing_agreement_ab),
        ]),
        Line::from(vec![
            label("output rel L2 A vs B"),
            num(Some(c.output_rel_l2_ab)),
        ]),
        cols.head(r, width),
        cols.row("routing = reference", &|i| {
            c.routing_agreement_ref
                .get(i)
                .map(|&x| pct(x))
                .unwrap_or_else(|| num(None))
        }),
        // The same as a count: how many tokens route to other experts (what bf16 logits do).
        cols.row("tokens ≠ reference", &|i| {
            let moved = |x: &f64| ((1.0 - x) * r.tokens as f64).round() as usize;
            c.routing_agreement_ref
                .get(i)
                .map_or_else(|| num(None), |x| count(moved(x)))
        }),
        cols.row("weight max |Δ| vs ref", &|i| {
            num(c.weight_max_diff_ref.get(i).copied())
        }),
        cols.row("output rel L2 vs ref", &|i| {
            num(c.output_rel_l2_ref.get(i).copied())
        }),
        cols.row("output rms", &|i| num(r.paths.get(i).map(|p| p.output.rms))),
        cols.row("output max |y|", &|i| {
            num(r.paths.get(i).map(|p| p.output.max_abs))
        }),
        cols.row("non-finite outputs", &|i| {
            count(r.paths.get(i).map_or(0, |p| p.output.nonfinite as usize))
        }),
    ];
    lines.extend(tie_lines(r, &cols));
    lines.extend(format_lines(r, &cols));
    lines.push(Line::from(vec![
        label("compared vs f64 ref"),
        Span::raw(format!("{:>10} of {} tokens", c.sampled_tokens, r.tokens)),
    ]));
    lines
}

/// Disagreements with the reference by class (exact tie / near tie / real) and the worst
/// token's output error, where the step carries them (all-token numerics).
fn tie_lines(r: &StepRecord, cols: &Columns) -> Vec<Line<'static>> {
    let c = &r.comparison;
    if c.ties_ref.is_empty() {
        return Vec::new();
    }
    let ties = cols.row("tie · near · real", &|i| match c.ties_ref.get(i) {
        Some(t) => Span::styled(
            format!("{:>10}", format!("{}·{}·{}", t.exact, t.near, t.real)),
            Style::new().fg(if t.real > 0 { BAD } else { OK }),
        ),
        None => num(None),
    });
    let worst = cols.row("worst token rel L2 (t)", &|i| {
        let Some(e) = c.token_errors_ref.get(i) else {
            return num(None);
        };
        let at = e
            .rel_l2
            .worst
            .first()
            .map(|t| format!("({t})"))
            .unwrap_or_default();
        Span::raw(format!(
            "{:>10}",
            format!("{}{at}", fmt_small(e.rel_l2.max))
        ))
    });
    vec![ties, worst]
}

/// Where some path runs FP8 experts: each path's format, its error against the FP8 math in f64
/// (the kernels') and against the bf16 path (the format's), and how many tokens were compared.
fn format_lines(r: &StepRecord, cols: &Columns) -> Vec<Line<'static>> {
    let f = &r.comparison.expert_formats;
    if f.is_empty() {
        return Vec::new();
    }
    let row = |name: &str, get: &dyn Fn(usize) -> String| cols.row(name, &|i| Span::raw(get(i)));
    let errors = |i: usize| f.get(i).and_then(|e| e.as_ref());
    let on_device = f.iter().flatten().any(|e| e.on_device);
    let dash = || "—".to_string();
    let mut lines = vec![
        row("expert format", &|i| {
            r.paths.get(i).map_or_else(dash, |p| {
                let (a, b) = (p.spec.experts, p.spec.shared_experts);
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}·{b}")
                }
            })
        }),
        // On the device the reference decodes the FP8 weights exactly but keeps the
        // activations exact; on the host it quantizes them as the kernels do.
        row(
            if on_device {
                "fp8 vs fp8 weights (t)"
            } else {
                "fp8 vs fp8 math (t)"
            },
            &|i| {
                errors(i).map_or_else(dash, |e| {
                    let at = e.dequant.rel_l2.worst.first();
                    let at = at.map(|t| format!("({t})")).unwrap_or_default();
                    format!("{}{at}", fmt_small(e.dequant_rel_l2))
                })
            },
        ),
        row("fp8 vs bf16 path", &|i| {
            errors(i)
                .and_then(|e| e.bf16_rel_l2)
                .map_or_else(dash, fmt_small)
        }),
    ];
    if let Some(e) = f.iter().flatten().find(|e| !e.on_device) {
        lines.push(Line::from(vec![
            label("fp8 compared on host"),
            Span::raw(format!("{:>10} of {} tokens", e.tokens, r.tokens)),
        ]));
    }
    lines
}

fn slot_name(id: u32, e: usize) -> String {
    if (id as usize) >= e {
        format!("S{}", id as usize - e)
    } else {
        id.to_string()
    }
}

/// One column of the drill-down: slots and weights, marked where they differ from the reference.
fn slot_column(
    title: Span<'static>,
    s: &SlotWeights,
    reference: Option<&SlotWeights>,
    e: usize,
) -> Vec<Line<'static>> {
    let mut out = vec![Line::from(title)];
    for (&id, &w) in s.ids.iter().zip(&s.weights) {
        let style = match reference {
            None => Style::new(),
            Some(r) => match r.ids.iter().position(|&x| x == id) {
                None => Style::new().fg(BAD).bold(),
                Some(j)
                    if r.weights
                        .get(j)
                        .is_some_and(|rw| (rw - w).abs() > WEIGHT_EPS) =>
                {
                    Style::new().fg(Color::Yellow)
                }
                Some(_) => Style::new(),
            },
        };
        let shared = if id as usize >= e {
            Style::new().fg(Color::Magenta)
        } else {
            style
        };
        out.push(Line::from(vec![
            Span::styled(
                format!("{:>5}", slot_name(id, e)),
                if reference.is_some() {
                    style.patch(shared)
                } else {
                    shared
                },
            ),
            Span::styled(format!(" {w:>8.4}"), style),
        ]));
    }
    out
}

/// Each path's drill-down column for token `sel`: its heading (title and the token's class)
/// and width, at least 15 (the reference's); and how many fit `width` after the reference's.
fn drill_heads(r: &StepRecord, sel: usize, width: u16) -> (Vec<(String, u16)>, usize) {
    let classes = r.token_details.get(sel).map(|d| d.classes.as_slice());
    let heads: Vec<(String, u16)> = r
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let class = match classes.and_then(|c| c.get(i)) {
                Some(RouteClass::ExactTie) => " tie",
                Some(RouteClass::NearTie) => " near",
                Some(RouteClass::Real) => " real",
                _ => "",
            };
            let head = format!("  path {}{class}", p.spec.title(p.name));
            let w = (head.chars().count() as u16 + 1).max(15);
            (head, w)
        })
        .collect();
    let mut used = 15;
    let n = heads
        .iter()
        .take_while(|(_, w)| {
            used += w;
            used <= width
        })
        .count();
    (heads, n)
}

fn drill_down(f: &mut Frame, area: Rect, app: &App, r: &StepRecord) {
    let e = app
        .meta
        .as_ref()
        .map(|m| m.config.n_routed_experts)
        .unwrap_or(usize::MAX);
    let outer = block(format!(
        "token drill-down · step {} · ↑↓/jk choose · red: not in the reference, yellow: other weight",
        r.step
    ));
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    if r.token_details.is_empty() {
        f.render_widget(
            Paragraph::new("no sampled tokens in this step").fg(DIM),
            inner,
        );
        return;
    }
    let sel = app.token_sel.min(r.token_details.len() - 1);
    // Panels by priority where the width runs out: the slot columns (reference first), then
    // the token list, then the group scores; what is left out is named on the last row.
    let w = inner.width;
    let (heads, n) = drill_heads(r, sel, w);
    let cols_w = 15 + heads[..n].iter().map(|h| h.1).sum::<u16>();
    let list_w = if w >= 10 + cols_w { 10 } else { 0 };
    let groups_w = if w >= list_w + 34 + cols_w { 34 } else { 0 };
    let mut left_out: Vec<String> = r.paths[n..]
        .iter()
        .map(|p| format!("path {}", p.spec.title(p.name)))
        .collect();
    if groups_w == 0 {
        left_out.push("group scores".into());
    }
    let inner = if left_out.is_empty() || inner.height < 2 {
        inner
    } else {
        let hint = format!(
            "{MORE} {} (a wider terminal shows them)",
            left_out.join(", ")
        );
        let y = inner.bottom() - 1;
        f.render_widget(
            Paragraph::new(hint).fg(DIM),
            Rect {
                y,
                height: 1,
                ..inner
            },
        );
        Rect {
            height: inner.height - 1,
            ..inner
        }
    };
    let [list, groups, slots] = Layout::horizontal([
        Constraint::Length(list_w),
        Constraint::Length(groups_w),
        Constraint::Min(0),
    ])
    .areas(inner);
    let items: Vec<Line> = r
        .token_details
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i == sel {
                Line::from(Span::styled(
                    format!("▶ t{:<6}", d.token),
                    Style::new().fg(ACCENT).bold(),
                ))
            } else {
                Line::from(format!("  t{:<6}", d.token))
            }
        })
        .collect();
    f.render_widget(Paragraph::new(items), list);
    let d: &TokenDetail = &r.token_details[sel];
    let (lo, hi) = d
        .group_scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let bar_w = groups.width.saturating_sub(18) as f32;
    let margins = d
        .margins
        .map(|m| {
            let f = |v: Option<f64>| v.map(fmt_small).unwrap_or_else(|| "—".into());
            format!(" · margin g {} e {}", f(m.group), f(m.expert))
        })
        .unwrap_or_default();
    let mut gl = vec![Line::from(Span::styled(
        format!("group scores · ★ kept{margins}"),
        Style::new().fg(DIM),
    ))];
    for (g, &s) in d.group_scores.iter().enumerate() {
        let kept = d.kept_groups.contains(&(g as u32));
        let frac = if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
        let len = (frac * bar_w).round() as usize;
        let style = if kept {
            Style::new().fg(OK)
        } else {
            Style::new().fg(DIM)
        };
        gl.push(Line::from(vec![
            Span::styled(format!("g{g:<3}{} ", if kept { "★" } else { " " }), style),
            Span::raw(format!("{s:>8.4} ")),
            Span::styled("█".repeat(len.max(1)), style),
        ]));
    }
    f.render_widget(Paragraph::new(gl), groups);
    let widths = std::iter::once(15).chain(heads[..n].iter().map(|h| h.1));
    let cols = Layout::horizontal(widths.map(Constraint::Length)).split(slots);
    f.render_widget(
        Paragraph::new(slot_column(
            Span::styled("  reference", Style::new().bold()),
            &d.reference,
            None,
            e,
        )),
        cols[0],
    );
    for (i, (s, id)) in d
        .paths
        .iter()
        .zip(r.paths.iter().map(|p| p.name))
        .enumerate()
        .take(n)
    {
        let title = Span::styled(heads[i].0.clone(), Style::new().fg(path_color(id)).bold());
        f.render_widget(
            Paragraph::new(slot_column(title, s, Some(&d.reference), e)),
            cols[i + 1],
        );
    }
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let Some(r) = app.latest() else {
        f.render_widget(Paragraph::new(super::style::NO_STEPS).fg(DIM), area);
        return;
    };
    // Short terminals get the step's figures alone; the history and drill-down need room.
    if area.height < 18 || area.width < 60 {
        let b = block(format!("step {}", r.step));
        let inner = b.inner(area);
        f.render_widget(b, area);
        let lines = now_lines(r, inner.width as usize);
        f.render_widget(
            Paragraph::new(fit_rows(lines, inner.height as usize)),
            inner,
        );
        return;
    }
    // Wide enough for every path's column (50 holds two) and a worst token's cell that fills
    // its column, as high as its rows (the tie rows come with all-token numerics).
    let titles = r.paths.iter().map(|p| column_width(&p.spec.title(p.name)));
    let now_w = (28 + titles.sum::<usize>()).max(50) as u16;
    let rows = now_lines(r, now_w as usize - 2).len() as u16;
    let [top, bottom] =
        Layout::vertical([Constraint::Length(rows + 2), Constraint::Min(6)]).areas(area);
    let [now, hist] =
        Layout::horizontal([Constraint::Length(now_w), Constraint::Min(14)]).areas(top);
    let lines = now_lines(r, now.width.saturating_sub(2) as usize);
    f.render_widget(
        Paragraph::new(fit_rows(lines, now.height.saturating_sub(2) as usize))
            .block(block(format!("step {}", r.step))),
        now,
    );

    let outer = block(format!("history · last {} steps", app.history.len()));
    let inner = outer.inner(hist);
    f.render_widget(outer, hist);
    let h = &app.history;
    let mut series: Vec<(String, Vec<f64>, Color)> = vec![(
        "routing agreement A = B".into(),
        h.iter()
            .map(|r| r.comparison.routing_agreement_ab)
            .collect(),
        ACCENT,
    )];
    series.push((
        "output rel L2 A vs B".into(),
        h.iter().map(|r| r.comparison.output_rel_l2_ab).collect(),
        ACCENT,
    ));
    for (i, p) in r.paths.iter().enumerate() {
        let id = p.name;
        series.push((
            format!("{} output rel L2 vs ref", p.spec.title(id)),
            h.iter()
                .filter_map(|r| r.comparison.output_rel_l2_ref.get(i).copied())
                .collect(),
            path_color(id),
        ));
    }
    let cells = Layout::vertical(vec![
        Constraint::Ratio(1, series.len() as u32);
        series.len()
    ])
    .split(inner);
    for ((title, values, color), cell) in series.into_iter().zip(cells.iter()) {
        let now = values.last().map(|v| fmt_small(*v)).unwrap_or_default();
        sparkline(f, *cell, &title, &format!("now {now}"), &values, color);
    }
    drill_down(f, bottom, app, r);
}
