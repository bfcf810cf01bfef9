//! View 1, overview: the layer, the run, the headline numbers and the telemetry gauges.

use super::style::{block, fmt_small, fmt_us, path_color, path_ids, step_rate, BAD, DIM, MORE, OK};
use super::timings::{path_means, speedup_spans, PathMean};
use crate::engine::step::StepRecord;
use crate::ui::app::App;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{LineGauge, Paragraph, Wrap};
use ratatui::Frame;

fn kv(k: &str, v: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{k:<15}"), Style::new().fg(DIM)),
        Span::raw(v.into()),
    ])
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let Some(m) = &app.meta else { return };
    // Under 70 columns the layer panel is left out (the header names the model and device).
    let left_w = if area.width < 70 {
        0
    } else {
        46.min(area.width * 2 / 5)
    };
    let [left, right] =
        Layout::horizontal([Constraint::Length(left_w), Constraint::Min(30)]).areas(area);
    let c = &m.config;
    let groups = if c.n_group > 1 {
        format!(
            "{} × {} experts, keep {}",
            c.n_group,
            c.experts_per_group(),
            c.topk_group
        )
    } else {
        "none".into()
    };
    let shared = if c.n_shared_experts == 0 {
        "none".to_string()
    } else {
        format!(
            "{} (intermediate {}){}",
            c.n_shared_experts,
            c.shared_intermediate_size,
            if c.shared_expert_gate { ", gated" } else { "" }
        )
    };
    let mut lines = vec![
        kv("model", c.name.clone()),
        kv("routed experts", c.n_routed_experts.to_string()),
        kv("groups", groups),
        kv("top-k", c.num_experts_per_tok.to_string()),
        kv("shared experts", shared),
        kv(
            "scoring",
            format!(
                "{}{}{}",
                c.scoring_func.name(),
                if c.has_bias { " + bias" } else { "" },
                if c.norm_topk_prob {
                    ", renormalized"
                } else {
                    ""
                }
            ),
        ),
        kv("rsf", format!("{}", c.routed_scaling_factor)),
        kv(
            "hidden / inter",
            format!("{} / {}", c.hidden_size, c.moe_intermediate_size),
        ),
        Line::raw(""),
        kv("backend", m.backend.to_string()),
        kv("device", m.device.clone()),
        kv("weights", m.weights.clone()),
    ];
    if let Some(r) = app.latest() {
        lines.push(kv("tokens / step", r.tokens.to_string()));
        let rate = step_rate(app)
            .map(|x| format!(", {x:.1} steps/s"))
            .unwrap_or_default();
        lines.push(kv("step", format!("{}{rate}", r.step)));
    } else {
        lines.push(kv("step", "the first one is running"));
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block("layer and run")),
        left,
    );

    let [head, gauges, notes] = Layout::vertical([
        Constraint::Min(12),
        Constraint::Length(7),
        Constraint::Length(5),
    ])
    .areas(right);
    draw_headline(f, head, app);
    draw_gauges(f, gauges, app);
    let notes_lines: Vec<Line> = app
        .notices
        .iter()
        .rev()
        .take(3)
        .map(|n| Line::from(Span::styled(n.clone(), Style::new().fg(Color::Gray))))
        .collect();
    f.render_widget(
        Paragraph::new(notes_lines)
            .wrap(Wrap { trim: true })
            .block(block("notices")),
        notes,
    );
}

/// Per path its name (a user kernel's with its file), mean time and contract verdict; the
/// names padded to one width where the rows have room for it.
fn time_lines(r: &StepRecord, means: &[PathMean], width: u16) -> Vec<Line<'static>> {
    let titles: Vec<String> = r.paths.iter().map(|p| p.spec.title(p.name)).collect();
    let name_w = match width {
        80.. => titles.iter().map(|t| t.chars().count()).max().unwrap_or(1),
        _ => 1,
    };
    r.paths
        .iter()
        .zip(&titles)
        .map(|(p, title)| {
            let m = means.iter().find(|m| m.id == p.name);
            let total = m.map_or(p.total_us, |m| m.total);
            let clean = m
                .map_or(p.clean_us, |m| m.clean)
                .map(|c| format!(", clean {}", fmt_us(c)))
                .unwrap_or_default();
            Line::from(vec![
                Span::styled(
                    format!("{title:<name_w$} "),
                    Style::new().fg(path_color(p.name)).bold(),
                ),
                Span::raw(format!("{:>10}{clean}  ", fmt_us(total))),
                verdict(&p.contract),
            ])
        })
        .collect()
}

fn draw_headline(f: &mut Frame, area: Rect, app: &App) {
    let Some(r) = app.latest() else {
        f.render_widget(
            Paragraph::new(super::style::NO_STEPS).block(block("headline")),
            area,
        );
        return;
    };
    let means = path_means(app);
    let mut lines = time_lines(r, &means, area.width);
    let speedups = speedup_spans(&means);
    if !speedups.is_empty() {
        let mut l = speedups;
        l.push(Span::styled(
            format!(
                "  (last {} steps)",
                app.history.len().min(crate::ui::app::TIMING_WINDOW)
            ),
            Style::new().fg(DIM),
        ));
        lines.push(Line::from(l));
    }
    lines.push(Line::raw(""));
    // The lines above named each path; these keep to its letter, so they fit one row.
    for p in &r.paths {
        let c = &p.contract;
        let mut l = vec![
            Span::styled(
                format!("{} ", p.name),
                Style::new().fg(path_color(p.name)).bold(),
            ),
            Span::styled("routed sum ", Style::new().fg(DIM)),
            Span::raw(format!("{:.3}", p.routed_weight_sum.mean)),
            Span::styled(
                format!(" (ref {:.3})", c.expected_routed_sum.mean),
                Style::new().fg(DIM),
            ),
        ];
        if let (Some(s), Some(want)) = (&p.shared_weight, &c.expected_shared) {
            l.push(Span::styled("  shared weight ", Style::new().fg(DIM)));
            l.push(Span::raw(format!("{:.3}", s.mean)));
            l.push(Span::styled(
                format!(" (ref {:.3})", want.mean),
                Style::new().fg(DIM),
            ));
        }
        lines.push(Line::from(l));
    }
    let cmp = &r.comparison;
    lines.push(Line::raw(""));
    lines.push(agreement_line("routing A = B", cmp.routing_agreement_ab));
    let per_path = path_ids(cmp.routing_agreement_ref.len());
    for (id, a) in per_path.zip(&cmp.routing_agreement_ref) {
        let title = r
            .paths
            .get(id.index())
            .map_or_else(|| id.to_string(), |p| p.spec.title(id));
        lines.push(agreement_line(&format!("routing {title} = ref"), *a));
    }
    lines.push(Line::from(vec![
        Span::styled(format!("{:<16}", "output A vs B"), Style::new().fg(DIM)),
        Span::raw(format!("rel L2 {}", fmt_small(cmp.output_rel_l2_ab))),
        Span::styled(
            format!("  ({} sampled tokens)", cmp.sampled_tokens),
            Style::new().fg(DIM),
        ),
    ]));
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block("headline")),
        area,
    );
}

/// A contract verdict: green "contract ok" or the deviation in red.
pub fn verdict(c: &crate::engine::step::ContractCheck) -> Span<'static> {
    if c.ok {
        Span::styled("✓ contract ok", Style::new().fg(OK))
    } else {
        Span::styled(
            format!("✗ {}", crate::session::words::verdict(c)),
            Style::new().fg(BAD).bold(),
        )
    }
}

fn agreement_line(label: &str, frac: f64) -> Line<'static> {
    let color = if frac >= 1.0 { OK } else { BAD };
    // A user kernel's longer label keeps a space before its figure.
    let w = (label.chars().count() + 1).max(16);
    Line::from(vec![
        Span::styled(format!("{label:<w$}"), Style::new().fg(DIM)),
        Span::styled(format!("{:.1}%", frac * 100.0), Style::new().fg(color)),
    ])
}

fn draw_gauges(f: &mut Frame, area: Rect, app: &App) {
    let outer = block("telemetry");
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let sample = app.history.iter().rev().find_map(|r| r.telemetry.as_ref());
    let Some(t) = sample else {
        f.render_widget(
            Paragraph::new(super::telemetry::unavailable_text(app))
                .fg(DIM)
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    };
    let mem = match (t.mem_used_mib, t.mem_total_mib) {
        (Some(u), Some(tot)) if tot > 0 => Some((u as f64 / tot as f64, format!("{u}/{tot} MiB"))),
        _ => None,
    };
    let power = match (t.power_w, t.power_limit_w) {
        (Some(p), Some(l)) if l > 0.0 => Some((p / l, format!("{p:.0}/{l:.0} W"))),
        (Some(p), None) => Some((0.0, format!("{p:.0} W"))),
        _ => None,
    };
    let rows: Vec<(&str, Option<(f64, String)>)> = vec![
        (
            "GPU util",
            t.gpu_util_pct.map(|u| (u as f64 / 100.0, format!("{u}%"))),
        ),
        ("memory", mem),
        ("power", power),
        (
            "temperature",
            t.temperature_c
                .map(|c| (c as f64 / 100.0, format!("{c} °C"))),
        ),
        (
            "SM clock",
            t.sm_clock_mhz.map(|c| (0.0, format!("{c} MHz"))),
        ),
    ];
    // One row per reading while they fit; the last row says how many more there are.
    let room = inner.height as usize;
    let shown = if rows.len() > room {
        room.saturating_sub(1)
    } else {
        rows.len()
    };
    if shown < rows.len() && room > 0 {
        let hint = format!("{} {} readings (6 Telemetry)", MORE, rows.len() - shown);
        let y = inner.y + shown as u16;
        f.render_widget(
            Paragraph::new(hint).fg(DIM),
            Rect {
                y,
                height: 1,
                ..inner
            },
        );
    }
    for (i, (label, v)) in rows.into_iter().take(shown).enumerate() {
        let a = &Rect {
            y: inner.y + i as u16,
            height: 1,
            ..inner
        };
        let (ratio, text) = v.unwrap_or((0.0, "n/a".into()));
        f.render_widget(
            LineGauge::default()
                .label(format!("{label:<12}{text:>16} "))
                .ratio(ratio.clamp(0.0, 1.0))
                .filled_style(Style::new().fg(OK))
                .unfilled_style(Style::new().fg(DIM)),
            *a,
        );
    }
}
