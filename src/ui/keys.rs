//! The key table: one list of bindings that both the key handler and the help overlay read, so
//! the help can never drift from what the keys do.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What the user asked for, independent of the key that asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    NextView,
    PrevView,
    ShowView(usize),
    TogglePause,
    StepForward,
    StepBack,
    MoreTokens,
    FewerTokens,
    VariantMenu,
    ToggleRecord,
    Help,
    Up,
    Down,
    Left,
    Right,
    GotoStep,
    First,
    Last,
    Faster,
    Slower,
    Confirm,
    Close,
}

/// Where a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Live runs and replays.
    Always,
    /// Live runs only.
    Live,
    /// Replays only.
    Replay,
    /// Inside a menu or prompt (variant menu, go-to-step, help).
    Popup,
}

/// One key as the table spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Ctrl(char),
    Code(KeyCode),
}

impl Key {
    fn matches(self, ev: &KeyEvent) -> bool {
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        match self {
            Key::Char(c) => !ctrl && ev.code == KeyCode::Char(c),
            Key::Ctrl(c) => ctrl && ev.code == KeyCode::Char(c),
            Key::Code(code) => !ctrl && ev.code == code,
        }
    }

    /// How the help overlay spells the key.
    pub fn label(self) -> String {
        match self {
            Key::Char(' ') => "space".into(),
            Key::Char(c) => c.to_string(),
            Key::Ctrl(c) => format!("Ctrl-{}", c.to_ascii_uppercase()),
            Key::Code(code) => match code {
                KeyCode::Left => "←".into(),
                KeyCode::Right => "→".into(),
                KeyCode::Up => "↑".into(),
                KeyCode::Down => "↓".into(),
                KeyCode::Tab => "Tab".into(),
                KeyCode::BackTab => "Shift-Tab".into(),
                KeyCode::Home => "Home".into(),
                KeyCode::End => "End".into(),
                KeyCode::Enter => "Enter".into(),
                KeyCode::Esc => "Esc".into(),
                other => format!("{other:?}"),
            },
        }
    }
}

pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub scope: Scope,
    pub help: &'static str,
}

impl Binding {
    /// The keys as one label, e.g. "n / →".
    pub fn label(&self) -> String {
        let labels: Vec<String> = self.keys.iter().map(|k| k.label()).collect();
        labels.join(" / ")
    }
}

use Action as A;
use Key::{Char as C, Code, Ctrl};
use Scope::*;

/// Every binding. Popup bindings are looked up first while a popup is open.
#[rustfmt::skip]
pub const BINDINGS: &[Binding] = &[
    Binding { keys: &[C('q'), Ctrl('c')], action: A::Quit, scope: Always, help: "quit" },
    Binding { keys: &[C('?')], action: A::Help, scope: Always, help: "show / hide this help" },
    Binding { keys: &[Code(KeyCode::Tab)], action: A::NextView, scope: Always, help: "next view" },
    Binding { keys: &[Code(KeyCode::BackTab)], action: A::PrevView, scope: Always, help: "previous view" },
    Binding { keys: &[C('1')], action: A::ShowView(0), scope: Always, help: "overview" },
    Binding { keys: &[C('2')], action: A::ShowView(1), scope: Always, help: "expert load" },
    Binding { keys: &[C('3')], action: A::ShowView(2), scope: Always, help: "shared slot and scaling contract" },
    Binding { keys: &[C('4')], action: A::ShowView(3), scope: Always, help: "kernel timings" },
    Binding { keys: &[C('5')], action: A::ShowView(4), scope: Always, help: "numerics and token drill-down" },
    Binding { keys: &[C('6')], action: A::ShowView(5), scope: Always, help: "telemetry" },
    Binding { keys: &[C('7')], action: A::ShowView(6), scope: Always, help: "expert parallelism (--ep)" },
    Binding { keys: &[C(' ')], action: A::TogglePause, scope: Live, help: "pause / resume the engine" },
    Binding { keys: &[C(' ')], action: A::TogglePause, scope: Replay, help: "play / pause at the recorded pace" },
    Binding { keys: &[C('n'), Code(KeyCode::Right)], action: A::StepForward, scope: Always, help: "one step forward (pauses)" },
    Binding { keys: &[C('p'), Code(KeyCode::Left)], action: A::StepBack, scope: Replay, help: "one step back" },
    Binding { keys: &[C('+'), C('=')], action: A::MoreTokens, scope: Live, help: "double the tokens per step" },
    Binding { keys: &[C('-')], action: A::FewerTokens, scope: Live, help: "halve the tokens per step" },
    Binding { keys: &[C('v')], action: A::VariantMenu, scope: Live, help: "choose path B's scaling variant" },
    Binding { keys: &[C('r')], action: A::ToggleRecord, scope: Live, help: "start / stop recording a session" },
    Binding { keys: &[C('g')], action: A::GotoStep, scope: Replay, help: "go to step (type the number, Enter)" },
    Binding { keys: &[Code(KeyCode::Home)], action: A::First, scope: Replay, help: "first step" },
    Binding { keys: &[Code(KeyCode::End)], action: A::Last, scope: Replay, help: "last step" },
    Binding { keys: &[C(']')], action: A::Faster, scope: Replay, help: "play faster (×2)" },
    Binding { keys: &[C('[')], action: A::Slower, scope: Replay, help: "play slower (÷2)" },
    Binding { keys: &[C('k'), Code(KeyCode::Up)], action: A::Up, scope: Always, help: "previous token (numerics drill-down)" },
    Binding { keys: &[C('j'), Code(KeyCode::Down)], action: A::Down, scope: Always, help: "next token (numerics drill-down)" },
    Binding { keys: &[C('h')], action: A::Left, scope: Always, help: "previous path (load view) / previous token" },
    Binding { keys: &[C('l')], action: A::Right, scope: Always, help: "next path (load view) / next token" },
    Binding { keys: &[C('k'), Code(KeyCode::Up)], action: A::Up, scope: Popup, help: "move up" },
    Binding { keys: &[C('j'), Code(KeyCode::Down)], action: A::Down, scope: Popup, help: "move down" },
    Binding { keys: &[Code(KeyCode::Enter)], action: A::Confirm, scope: Popup, help: "choose" },
    Binding { keys: &[Code(KeyCode::Esc)], action: A::Close, scope: Popup, help: "close the popup" },
    Binding { keys: &[Ctrl('c')], action: A::Quit, scope: Popup, help: "quit" },
];

/// The action a key triggers in a scope, if any.
pub fn lookup(ev: &KeyEvent, scopes: &[Scope]) -> Option<Action> {
    scopes.iter().find_map(|scope| {
        BINDINGS
            .iter()
            .filter(|b| b.scope == *scope)
            .find(|b| b.keys.iter().any(|k| k.matches(ev)))
            .map(|b| b.action)
    })
}

/// Bindings the help overlay lists for a live run or a replay.
pub fn help_rows(replay: bool) -> impl Iterator<Item = &'static Binding> {
    BINDINGS.iter().filter(move |b| match b.scope {
        Always | Popup => true,
        Live => !replay,
        Replay => replay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_bindings_of_one_scope_share_a_key() {
        for (i, a) in BINDINGS.iter().enumerate() {
            for b in &BINDINGS[i + 1..] {
                let overlap = a.scope == b.scope && a.keys.iter().any(|k| b.keys.contains(k));
                assert!(!overlap, "{} and {} share a key", a.help, b.help);
            }
        }
    }

    #[test]
    fn ctrl_c_is_not_plain_c() {
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(lookup(&ctrl_c, &[Always]), Some(Action::Quit));
        let plain = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE);
        assert_eq!(lookup(&plain, &[Always]), None);
    }
}
