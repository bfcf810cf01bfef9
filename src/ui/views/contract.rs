//! View 3, shared slot and scaling contract: per path the effective shared-slot weight and
//! routed weight sum against the reference, the verdict, and its history.

use super::overview::verdict;
use super::style::{block, fit_groups, fit_rows, fmt_small, path_color, sparkline, BAD, DIM, OK};
use crate::engine::step::{PathRecord, Stats};
use crate::ui::app::App;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

fn stats_cells(s: &Stats) -> String {
    format!("{:>8.4}{:>8.4}{:>8.4}", s.mean, s.min, s.max)
}

fn row(label: &str, got: Option<&Stats>, want: Option<&Stats>, dev: f64) -> Line<'static> {
    let dim = Style::new().fg(DIM);
    let Some(got) = got else {
        return Line::from(vec![
            Span::styled(format!("{label:<14}"), dim),
            Span::styled("— (no shared experts)", dim),
        ]);
    };
    let want = want
        .map(stats_cells)
        .unwrap_or_else(|| format!("{:>26}", "—"));
    // The same absolute tolerance the engine's verdict uses.
    let bad = dev > crate::engine::compare::CONTRACT_TOLERANCE;
    Line::from(vec![
        Span::styled(format!("{label:<14}"), dim),
        Span::styled(
            stats_cells(got),
            Style::new().fg(if bad { BAD } else { OK }),
        ),
        Span::raw("  "),
        Span::raw(want),
        Span::raw(format!("  {:>9}", fmt_small(dev))),
    ])
}

fn path_lines(p: &PathRecord) -> Vec<Line<'static>> {
    let c = &p.contract;
    vec![
        Line::from(vec![
            Span::styled(
                format!("{} ", p.name),
                Style::new().fg(path_color(p.name)).bold(),
            ),
            Span::raw(p.spec.label()),
        ]),
        Line::from(vec![Span::raw("  "), verdict(c)]),
        Line::from(Span::styled(
            format!(
                "{:<14}{:>8}{:>8}{:>8}  {:>8}{:>8}{:>8}  {:>9}",
                "effective", "mean", "min", "max", "ref mean", "min", "max", "max |dev|"
            ),
            Style::new().fg(DIM),
        )),
        row(
            "routed sum",
            Some(&p.routed_weight_sum),
            Some(&c.expected_routed_sum),
            c.routed_max_dev,
        ),
        row(
            "shared weight",
            p.shared_weight.as_ref(),
            c.expected_shared.as_ref(),
            c.shared_max_dev,
        ),
    ]
}

/// Small terminals: per path the verdict and the means against the reference, whole figures
/// only, in one block.
fn draw_compact(f: &mut Frame, area: Rect, r: &crate::engine::step::StepRecord) {
    let b = block(format!("contract · step {}", r.step));
    let inner = b.inner(area);
    f.render_widget(b, area);
    let w = inner.width as usize;
    let dim = Style::new().fg(DIM);
    let mut lines = Vec::new();
    for p in &r.paths {
        let name = Span::styled(
            format!("{} ", p.spec.title(p.name)),
            Style::new().fg(path_color(p.name)).bold(),
        );
        // The verdict's words go one by one, so a long one continues on the next row.
        let verdict = verdict(&p.contract);
        let mut groups = vec![vec![name]];
        let words: Vec<String> = verdict
            .content
            .split_inclusive(' ')
            .map(String::from)
            .collect();
        groups.extend(
            words
                .into_iter()
                .map(|x| vec![Span::styled(x, verdict.style)]),
        );
        let mut rest = groups;
        let mut indented = false;
        while !rest.is_empty() {
            // The leading groups that fit this row; none fitting (a very narrow terminal)
            // ends the verdict rather than wrapping forever.
            let mut width = 0;
            let used = rest
                .iter()
                .take_while(|g| {
                    width += g.iter().map(|s| s.width()).sum::<usize>();
                    width <= w
                })
                .count();
            if used <= usize::from(indented) {
                break;
            }
            let tail = rest.split_off(used);
            lines.push(Line::from(rest.into_iter().flatten().collect::<Vec<_>>()));
            rest = tail;
            if !rest.is_empty() {
                rest.insert(0, vec![Span::raw("  ")]);
                indented = true;
            }
        }
        let c = &p.contract;
        let shared = p.shared_weight.zip(c.expected_shared);
        let rows = [
            (
                "routed",
                Some((p.routed_weight_sum, c.expected_routed_sum)),
                c.routed_max_dev,
            ),
            ("shared", shared, c.shared_max_dev),
        ];
        for (label, pair, dev) in rows {
            let Some((got, want)) = pair else { continue };
            let (line, _) = fit_groups(
                vec![
                    vec![
                        Span::styled(format!("  {label} "), dim),
                        Span::raw(format!("{:.4}", got.mean)),
                    ],
                    vec![
                        Span::styled(" ref ", dim),
                        Span::raw(format!("{:.4}", want.mean)),
                    ],
                    vec![Span::styled(" |dev| ", dim), Span::raw(fmt_small(dev))],
                ],
                w,
            );
            lines.push(line);
        }
    }
    f.render_widget(
        Paragraph::new(fit_rows(lines, inner.height as usize)),
        inner,
    );
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let Some(r) = app.latest() else {
        f.render_widget(Paragraph::new(super::style::NO_STEPS).fg(DIM), area);
        return;
    };
    let n = r.paths.len().max(1);
    // The full tables need 80 columns and 7 rows a path.
    if area.width < 80 || area.height < 7 * n as u16 + 2 {
        draw_compact(f, area, r);
        return;
    }
    let [now, hist] =
        Layout::vertical([Constraint::Length(7 * n as u16), Constraint::Min(0)]).areas(area);
    let rows = Layout::vertical(vec![Constraint::Length(7); n]).split(now);
    for (i, p) in r.paths.iter().enumerate() {
        f.render_widget(
            // No wrapping: a narrow terminal cuts lines rather than pushing rows out of the box.
            Paragraph::new(path_lines(p)).block(block(format!(
                "path {} · step {}",
                p.spec.title(p.name),
                r.step
            ))),
            rows[i],
        );
    }

    let outer = block(format!("history · last {} steps", app.history.len()));
    let inner = outer.inner(hist);
    f.render_widget(outer, hist);
    let cols = Layout::horizontal(vec![Constraint::Ratio(1, n as u32); n]).split(inner);
    for (i, (id, title)) in r
        .paths
        .iter()
        .map(|p| (p.name, p.spec.title(p.name)))
        .enumerate()
    {
        // The verdict strip first; the charts get what is left, if anything.
        let [strip, charts] =
            Layout::vertical([Constraint::Length(2), Constraint::Min(0)]).areas(cols[i]);
        let [shared, routed] = Layout::vertical([Constraint::Percentage(50); 2]).areas(charts);
        // One cell per step: green where the contract held, red where it broke.
        let w = strip.width as usize;
        let recent: Vec<bool> = app
            .history
            .iter()
            .filter_map(|r| r.paths.get(i).map(|p| p.contract.ok))
            .collect();
        let broken = recent.iter().filter(|ok| !**ok).count();
        let cells: Vec<Span> = recent[recent.len().saturating_sub(w)..]
            .iter()
            .map(|ok| Span::styled("▮", Style::new().fg(if *ok { OK } else { BAD })))
            .collect();
        // The short form where a long title (a user kernel's file) leaves no room.
        let mut words = format!("verdict per step: {broken} of {} broken", recent.len());
        if title.chars().count() + 1 + words.chars().count() > w {
            words = format!("{broken}/{} broken", recent.len());
        }
        f.render_widget(
            Paragraph::new(vec![
                Line::from(vec![
                    Span::styled(format!("{title} "), Style::new().fg(path_color(id)).bold()),
                    Span::styled(words, Style::new().fg(DIM)),
                ]),
                Line::from(cells),
            ]),
            strip,
        );
        let shared_means: Vec<f64> = app
            .history
            .iter()
            .filter_map(|r| r.paths.get(i).and_then(|p| p.shared_weight.map(|s| s.mean)))
            .collect();
        let routed_means: Vec<f64> = app
            .history
            .iter()
            .filter_map(|r| r.paths.get(i).map(|p| p.routed_weight_sum.mean))
            .collect();
        if let Some(last) = shared_means.last() {
            sparkline(
                f,
                shared,
                "shared weight mean",
                &format!("now {last:.4}"),
                &shared_means,
                path_color(id),
            );
        }
        if let Some(last) = routed_means.last() {
            sparkline(
                f,
                routed,
                "routed weight sum mean",
                &format!("now {last:.4}"),
                &routed_means,
                path_color(id),
            );
        }
    }
}
