//! App state and its update functions. The same `App` serves live runs and replays: it takes
//! `SourceEvent`s in and hands `Command`s out, and never talks to an engine or a file itself.

use super::keys::{self, Action, Scope};
use super::source::{Command, Meta, ReplayPos, SourceEvent};
use super::tabs;
pub use super::tabs::View;
use crate::engine::paths::{PathSpec, Variant, VARIANTS};
use crate::engine::step::StepRecord;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use std::collections::VecDeque;
use std::path::PathBuf;

/// Steps kept for history charts and the timing window.
pub const HISTORY: usize = 240;
/// Steps the kernel-timing statistics cover.
pub const TIMING_WINDOW: usize = 100;
/// Tokens per step the `+` key stops at.
pub const MAX_TOKENS: usize = 65536;
/// Notices kept for the status line and the overview.
const NOTICES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Replay,
}

/// A popup over the current view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Popup {
    Help,
    /// The variant menu with the highlighted row.
    Variant(usize),
    /// The go-to-step prompt with what was typed so far.
    Goto(String),
}

pub struct App {
    pub mode: Mode,
    /// None until the source is ready (the engine is being built, the file opened).
    pub meta: Option<Meta>,
    pub view: View,
    pub popup: Option<Popup>,
    /// Live: the engine does not step on its own.
    pub paused: bool,
    /// Tokens per step last asked for.
    pub tokens: usize,
    /// Variant of path B last asked for.
    pub variant: Variant,
    /// Recent steps, oldest first, consecutive.
    pub history: VecDeque<StepRecord>,
    /// Per path, tokens per slot summed over `history` and the steps before it since the last
    /// discontinuity (a replay jump).
    pub cumulative: Vec<Vec<u64>>,
    /// Steps summed in `cumulative`, the tokens they held, and the first of them.
    pub cumulative_steps: u64,
    pub cumulative_tokens: u64,
    pub cumulative_from: u64,
    /// Position of the path shown in the load view (0 = A, 1 = B, 2 = C).
    pub load_path: usize,
    /// Index into the latest record's token_details for the drill-down.
    pub token_sel: usize,
    pub notices: VecDeque<String>,
    /// One-line answer to the last key (e.g. why it did nothing).
    pub status: Option<String>,
    /// Why there is no telemetry, where the source says so.
    pub telemetry_unavailable: Option<String>,
    pub recording: Option<PathBuf>,
    pub replay: Option<ReplayPos>,
    /// The engine failed mid-run; it stopped, the UI stays to show what was there.
    pub engine_error: Option<String>,
    /// The source could not start; the UI closes and returns this.
    pub fatal: Option<String>,
    pub quit: bool,
}

impl App {
    pub fn new(mode: Mode) -> App {
        App {
            mode,
            meta: None,
            view: View::Overview,
            popup: None,
            paused: mode == Mode::Replay,
            tokens: 0,
            variant: Variant::Correct,
            history: VecDeque::new(),
            cumulative: Vec::new(),
            cumulative_steps: 0,
            cumulative_tokens: 0,
            cumulative_from: 0,
            load_path: 1,
            token_sel: 0,
            notices: VecDeque::new(),
            status: None,
            telemetry_unavailable: None,
            recording: None,
            replay: None,
            engine_error: None,
            fatal: None,
            quit: false,
        }
    }

    pub fn latest(&self) -> Option<&StepRecord> {
        self.history.back()
    }

    /// The paths of the latest step, or the ones the source started with.
    pub fn paths(&self) -> Vec<PathSpec> {
        match (self.latest(), &self.meta) {
            (Some(r), _) => r.paths.iter().map(|p| p.spec.clone()).collect(),
            (None, Some(m)) => m.paths.clone(),
            (None, None) => Vec::new(),
        }
    }

    /// Takes in what the source produced.
    pub fn on_event(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Ready(meta) => {
                self.tokens = meta.tokens;
                if let Some(b) = path_b(&meta.paths) {
                    self.variant = b.variant;
                }
                self.meta = Some(*meta);
            }
            SourceEvent::Notice(n) => self.notice(n),
            SourceEvent::Record(r) => self.push(*r),
            SourceEvent::Telemetry(why) => self.telemetry_unavailable = why,
            SourceEvent::Recording(path) => {
                match (&self.recording, &path) {
                    (Some(old), None) => {
                        self.notice(format!("recording stopped: {}", old.display()))
                    }
                    (_, Some(new)) => self.notice(format!("recording to {}", new.display())),
                    (None, None) => {}
                }
                self.recording = path;
            }
            SourceEvent::Replay(pos) => {
                self.paused = !pos.playing;
                self.replay = Some(pos);
            }
            SourceEvent::Paused(p) => self.paused = p,
            SourceEvent::StepError(e) => {
                self.paused = true;
                self.engine_error = Some(e);
            }
            SourceEvent::Failed(e) => {
                self.fatal = Some(e);
                self.quit = true;
            }
        }
    }

    fn notice(&mut self, n: String) {
        if self.notices.len() == NOTICES {
            self.notices.pop_front();
        }
        self.notices.push_back(n);
    }

    /// Appends a step. A step that does not follow the last one (a replay jump or step back)
    /// drops the steps from it on, or the whole history when it does not connect at all, so the
    /// history stays consecutive and the cumulative load means what it says.
    pub fn push(&mut self, r: StepRecord) {
        while self.history.back().is_some_and(|b| b.step >= r.step) {
            if let Some(old) = self.history.pop_back() {
                self.add_load(&old, false);
            }
        }
        if self.history.back().is_some_and(|b| b.step + 1 != r.step)
            || (self.history.is_empty() && self.cumulative_steps > 0)
        {
            self.history.clear();
            self.cumulative.clear();
            self.cumulative_steps = 0;
            self.cumulative_tokens = 0;
        }
        if self.cumulative_steps == 0 {
            self.cumulative_from = r.step;
        }
        self.add_load(&r, true);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        let details = r.token_details.len();
        self.history.push_back(r);
        self.token_sel = self.token_sel.min(details.saturating_sub(1));
    }

    fn add_load(&mut self, r: &StepRecord, add: bool) {
        if self.cumulative.len() < r.paths.len() {
            self.cumulative.resize(r.paths.len(), Vec::new());
        }
        for (sum, p) in self.cumulative.iter_mut().zip(&r.paths) {
            if sum.len() < p.load.len() {
                sum.resize(p.load.len(), 0);
            }
            for (s, &l) in sum.iter_mut().zip(&p.load) {
                *s = if add {
                    *s + l as u64
                } else {
                    s.saturating_sub(l as u64)
                };
            }
        }
        if add {
            self.cumulative_steps += 1;
            self.cumulative_tokens += r.tokens as u64;
        } else {
            self.cumulative_steps = self.cumulative_steps.saturating_sub(1);
            self.cumulative_tokens = self.cumulative_tokens.saturating_sub(r.tokens as u64);
        }
    }

    /// Scopes a key is looked up in, most specific first.
    fn scopes(&self) -> Vec<Scope> {
        let mode = match self.mode {
            Mode::Live => Scope::Live,
            Mode::Replay => Scope::Replay,
        };
        match self.popup {
            Some(_) => vec![Scope::Popup],
            None => vec![mode, Scope::Always],
        }
    }

    /// Handles one key press; returns what the source must do.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Command> {
        // Typing a step number is text input, not bindings.
        if let Some(Popup::Goto(buf)) = &mut self.popup {
            if let KeyCode::Char(c) = key.code {
                if c.is_ascii_digit() && !key.modifiers.contains(KeyModifiers::CONTROL) {
                    if buf.len() < 12 {
                        buf.push(c);
                    }
                    return Vec::new();
                }
            }
            if key.code == KeyCode::Backspace {
                buf.pop();
                return Vec::new();
            }
        }
        // A key of the other mode still answers, with why it does nothing here (the help of
        // each mode lists only its own keys).
        let other = match self.mode {
            Mode::Live => Scope::Replay,
            Mode::Replay => Scope::Live,
        };
        let found = keys::lookup(&key, &self.scopes())
            .or_else(|| keys::lookup(&key, &[other]).filter(|_| self.popup.is_none()));
        match found {
            Some(action) => self.update(action),
            None => {
                // Any other key closes the help.
                if self.popup == Some(Popup::Help) {
                    self.popup = None;
                }
                Vec::new()
            }
        }
    }

    /// A left click on a tab shows its view.
    pub fn handle_mouse(&mut self, ev: MouseEvent) -> Vec<Command> {
        if ev.kind == MouseEventKind::Down(MouseButton::Left) && ev.row == tabs::TABS_ROW {
            if let Some(i) = tabs::tab_at(ev.column) {
                return self.update(Action::ShowView(i));
            }
        }
        Vec::new()
    }

    fn replay_only(&mut self) {
        self.status = Some("that key works in replays only".into());
    }

    fn live_only(&mut self, what: &str) {
        self.status = Some(format!("{what}: a replay shows what was recorded"));
    }

    /// Applies one action.
    pub fn update(&mut self, action: Action) -> Vec<Command> {
        self.status = None;
        if let Some(popup) = self.popup.clone() {
            return self.update_popup(popup, action);
        }
        let live = self.mode == Mode::Live;
        let mut out = Vec::new();
        match action {
            Action::Quit => {
                self.quit = true;
                out.push(Command::Quit);
            }
            Action::Help => self.popup = Some(Popup::Help),
            Action::NextView => self.view = View::ALL[(self.view.index() + 1) % View::ALL.len()],
            Action::PrevView => {
                self.view = View::ALL[(self.view.index() + View::ALL.len() - 1) % View::ALL.len()]
            }
            Action::ShowView(i) => {
                if let Some(v) = View::ALL.get(i) {
                    self.view = *v;
                }
            }
            Action::TogglePause => {
                if self.engine_error.is_some() {
                    self.status = Some("the engine stopped after an error; q quits".into());
                } else {
                    self.paused = !self.paused;
                    out.push(Command::SetPaused(self.paused));
                }
            }
            Action::StepForward => {
                if self.engine_error.is_some() {
                    self.status = Some("the engine stopped after an error; q quits".into());
                } else {
                    self.paused = true;
                    out.push(Command::SetPaused(true));
                    out.push(Command::Step);
                }
            }
            Action::StepBack if live => {
                self.status = Some("a live run cannot step back; record it and replay".into())
            }
            Action::StepBack => {
                self.paused = true;
                out.push(Command::SetPaused(true));
                out.push(Command::StepBack);
            }
            Action::MoreTokens | Action::FewerTokens if !live => self.live_only("tokens per step"),
            Action::MoreTokens | Action::FewerTokens => {
                // The engine's memory limit, where it is lower than the UI's own.
                let fits = self.meta.as_ref().and_then(|m| m.max_tokens);
                let max = fits.unwrap_or(MAX_TOKENS).min(MAX_TOKENS);
                let t = if action == Action::MoreTokens {
                    (self.tokens * 2).min(max)
                } else {
                    self.tokens / 2
                }
                .max(1);
                self.tokens = t;
                self.status = Some(match fits {
                    Some(m) if t == m && action == Action::MoreTokens => {
                        format!("tokens per step → {t}: the most that fit in memory")
                    }
                    _ => format!("tokens per step → {t}"),
                });
                out.push(Command::SetTokens(t));
            }
            Action::VariantMenu if !live => self.live_only("variants"),
            Action::VariantMenu => {
                let at = VARIANTS
                    .iter()
                    .position(|v| *v == self.variant)
                    .unwrap_or(0);
                self.popup = Some(Popup::Variant(at));
            }
            Action::ToggleRecord if !live => self.live_only("recording"),
            Action::ToggleRecord => match self.recording {
                Some(_) => out.push(Command::StopRecording),
                None => out.push(Command::StartRecording(None)),
            },
            Action::Up => self.token_sel = self.token_sel.saturating_sub(1),
            Action::Down => self.move_token(1),
            Action::Left if self.view == View::Load => {
                self.load_path = self.shown_load_path().saturating_sub(1)
            }
            Action::Right if self.view == View::Load => {
                let last = self.latest().map_or(0, |r| r.paths.len().saturating_sub(1));
                self.load_path = (self.shown_load_path() + 1).min(last)
            }
            Action::Left => self.token_sel = self.token_sel.saturating_sub(1),
            Action::Right => self.move_token(1),
            Action::GotoStep | Action::First | Action::Last | Action::Faster | Action::Slower
                if live =>
            {
                self.replay_only()
            }
            Action::GotoStep => self.popup = Some(Popup::Goto(String::new())),
            Action::First => out.push(Command::Seek(0)),
            Action::Last => {
                let len = self.replay.map(|r| r.len).unwrap_or(0);
                out.push(Command::Seek(len.saturating_sub(1)));
            }
            Action::Faster | Action::Slower => {
                let speed = self.replay.map(|r| r.speed).unwrap_or(1.0);
                let speed = if action == Action::Faster {
                    (speed * 2.0).min(64.0)
                } else {
                    (speed / 2.0).max(1.0 / 16.0)
                };
                // Kept here too, so quick presses compound before the source answers.
                if let Some(r) = &mut self.replay {
                    r.speed = speed;
                }
                self.status = Some(format!("playback speed ×{speed}"));
                out.push(Command::SetSpeed(speed));
            }
            Action::Confirm | Action::Close => {}
        }
        out
    }

    /// The load view's path as drawn: `load_path`, or the last path where there are fewer.
    pub fn shown_load_path(&self) -> usize {
        let n = self.latest().map_or(0, |r| r.paths.len());
        self.load_path.min(n.saturating_sub(1))
    }

    /// A step at a newly asked-for token count is running: the latest step has another T.
    /// (Live only; a paused or stopped engine runs nothing.)
    pub fn busy_resizing(&self) -> bool {
        self.mode == Mode::Live
            && !self.paused
            && self.engine_error.is_none()
            && self.latest().is_some_and(|r| r.tokens != self.tokens)
    }

    fn move_token(&mut self, by: usize) {
        let n = self.latest().map(|r| r.token_details.len()).unwrap_or(0);
        self.token_sel = (self.token_sel + by).min(n.saturating_sub(1));
    }

    fn update_popup(&mut self, popup: Popup, action: Action) -> Vec<Command> {
        let mut out = Vec::new();
        match (popup, action) {
            (_, Action::Quit) => {
                self.quit = true;
                out.push(Command::Quit);
            }
            (_, Action::Close) => self.popup = None,
            (Popup::Variant(i), Action::Up) => {
                self.popup = Some(Popup::Variant(i.saturating_sub(1)))
            }
            (Popup::Variant(i), Action::Down) => {
                self.popup = Some(Popup::Variant((i + 1).min(VARIANTS.len() - 1)))
            }
            (Popup::Variant(i), Action::Confirm) => {
                self.popup = None;
                if let Some(&v) = VARIANTS.get(i) {
                    self.variant = v;
                    self.status = Some(format!("path B variant → {v}"));
                    out.push(Command::SetVariant(v));
                }
            }
            (Popup::Goto(buf), Action::Confirm) => {
                self.popup = None;
                match buf.parse::<usize>() {
                    Ok(n) => {
                        let len = self.replay.map(|r| r.len).unwrap_or(0);
                        if n < len {
                            out.push(Command::Seek(n));
                        } else {
                            self.status = Some(format!(
                                "no step {n}: the session has steps 0..{}",
                                len.saturating_sub(1)
                            ));
                        }
                    }
                    Err(_) => self.status = Some("type a step number, then Enter".into()),
                }
            }
            (Popup::Help, _) => self.popup = None,
            _ => {}
        }
        out
    }
}

/// Path B, whose variant the variant menu sets (the second path; a user kernel, path C, may
/// follow it), as `Engine::set_variant` picks it.
pub fn path_b(paths: &[PathSpec]) -> Option<&PathSpec> {
    paths.get(paths.len().min(2).saturating_sub(1))
}
