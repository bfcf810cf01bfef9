//! The views as tabs: which views there are, and where each tab sits on the screen (drawn by
//! `views`, clicked through `app`).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Overview,
    Load,
    Contract,
    Timings,
    Numerics,
    Telemetry,
    Ep,
}

impl View {
    pub const ALL: [View; 7] = [
        View::Overview,
        View::Load,
        View::Contract,
        View::Timings,
        View::Numerics,
        View::Telemetry,
        View::Ep,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Load => "Expert load",
            View::Contract => "Contract",
            View::Timings => "Kernels",
            View::Numerics => "Numerics",
            View::Telemetry => "Telemetry",
            View::Ep => "EP",
        }
    }

    pub fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// Screen row of the view tabs (mouse clicks are matched against it).
pub const TABS_ROW: u16 = 2;
const TABS_X: u16 = 1;

pub fn tab_label(i: usize, v: View) -> String {
    format!(" {} {} ", i + 1, v.title())
}

/// Column ranges of the tabs, left to right.
pub fn tab_ranges() -> impl Iterator<Item = (usize, u16, u16)> {
    let mut x = TABS_X;
    View::ALL.iter().enumerate().map(move |(i, v)| {
        let w = tab_label(i, *v).chars().count() as u16;
        let r = (i, x, x + w);
        x += w + 1;
        r
    })
}

/// The view whose tab covers column `x`.
pub fn tab_at(x: u16) -> Option<usize> {
    tab_ranges()
        .find(|(_, a, b)| (*a..*b).contains(&x))
        .map(|(i, _, _)| i)
}
