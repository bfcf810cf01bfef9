//! View 6, telemetry: NVML history as sparklines, or the reason there is none.

use super::style::{block, sparkline, BAD, DIM, OK};
use crate::engine::step::TelemetrySample;
use crate::ui::app::{App, Mode};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

/// Why no telemetry is shown.
pub fn unavailable_text(app: &App) -> String {
    match (&app.telemetry_unavailable, app.mode) {
        (Some(why), _) => format!("telemetry unavailable: {why}"),
        (None, Mode::Replay) => "this session recorded no telemetry".into(),
        (None, Mode::Live) => "waiting for the first telemetry sample".into(),
    }
}

type Metric = (
    &'static str,
    &'static str,
    fn(&TelemetrySample) -> Option<f64>,
);

const METRICS: &[Metric] = &[
    ("GPU utilization", "%", |t| t.gpu_util_pct.map(f64::from)),
    ("memory utilization", "%", |t| t.mem_util_pct.map(f64::from)),
    ("memory used", "MiB", |t| t.mem_used_mib.map(|x| x as f64)),
    ("power", "W", |t| t.power_w),
    ("SM clock", "MHz", |t| t.sm_clock_mhz.map(f64::from)),
    ("memory clock", "MHz", |t| t.mem_clock_mhz.map(f64::from)),
    ("temperature", "°C", |t| t.temperature_c.map(f64::from)),
    ("PCIe tx", "KiB/s", |t| t.pcie_tx_kib_s.map(f64::from)),
    ("PCIe rx", "KiB/s", |t| t.pcie_rx_kib_s.map(f64::from)),
    ("GPM SM occupancy", "%", |t| t.gpm_sm_occupancy_pct),
    ("GPM tensor active", "%", |t| t.gpm_tensor_active_pct),
    ("GPM DRAM bandwidth", "%", |t| t.gpm_dram_bw_util_pct),
];

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let samples: Vec<&TelemetrySample> = app
        .history
        .iter()
        .filter_map(|r| r.telemetry.as_ref())
        .collect();
    let Some(latest) = samples.last() else {
        f.render_widget(
            Paragraph::new(unavailable_text(app))
                .fg(DIM)
                .wrap(Wrap { trim: true })
                .block(block("telemetry")),
            area,
        );
        return;
    };
    let [charts, foot] = Layout::vertical([Constraint::Min(6), Constraint::Length(4)]).areas(area);
    let shown: Vec<(&Metric, Vec<f64>)> = METRICS
        .iter()
        .map(|m| {
            (
                m,
                samples
                    .iter()
                    .filter_map(|t| (m.2)(t))
                    .collect::<Vec<f64>>(),
            )
        })
        .collect();
    let cols = Layout::horizontal([Constraint::Percentage(50); 2]).split(charts);
    let per_col = shown.len().div_ceil(2);
    for (c, col) in cols.iter().enumerate() {
        let part = &shown[(c * per_col).min(shown.len())..((c + 1) * per_col).min(shown.len())];
        let cells = Layout::vertical(vec![
            Constraint::Ratio(1, part.len().max(1) as u32);
            part.len()
        ])
        .split(*col);
        for (((name, unit, _), values), cell) in part.iter().map(|(m, v)| (*m, v)).zip(cells.iter())
        {
            match values.last() {
                Some(now) => sparkline(
                    f,
                    *cell,
                    &format!("{name}:"),
                    &format!("{now:.0} {unit}"),
                    values,
                    Color::Cyan,
                ),
                None => f.render_widget(
                    Paragraph::new(Span::styled(
                        format!("{name}: not reported"),
                        Style::new().fg(DIM),
                    )),
                    *cell,
                ),
            }
        }
    }
    let throttle = if latest.throttle_reasons.is_empty() {
        Span::styled("none", Style::new().fg(OK))
    } else {
        Span::styled(
            latest.throttle_reasons.join(", "),
            Style::new().fg(BAD).bold(),
        )
    };
    let limits = match (latest.mem_total_mib, latest.power_limit_w) {
        (Some(m), Some(p)) => format!("memory total {m} MiB · power limit {p:.0} W"),
        (Some(m), None) => format!("memory total {m} MiB"),
        (None, Some(p)) => format!("power limit {p:.0} W"),
        (None, None) => String::new(),
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::from(vec![
                Span::styled("throttle reasons ", Style::new().fg(DIM)),
                throttle,
            ]),
            Line::from(Span::styled(limits, Style::new().fg(DIM))),
        ])
        .block(block(format!("latest sample · {} samples", samples.len()))),
        foot,
    );
}
