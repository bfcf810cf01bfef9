//! The UI's side of a step source: what the UI knows before any step (`Meta`), what it asks
//! (`Command`) and what it is told (`SourceEvent`). A source — a live engine or a recorded
//! session, both built by `commands` — runs on its own thread started by [`spawn`], so the App
//! and the UI loop are the same for both and a long GPU step never blocks drawing.

use crate::engine::config::MoeConfig;
use crate::engine::paths::{PathSpec, Variant};
use crate::engine::step::StepRecord;
use crate::engine::BackendKind;
use anyhow::{Context, Result};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::mpsc;
use tokio::sync::mpsc as tmpsc;

/// Name of the source thread; the panic hook recognizes it (see `ui::term`).
pub const SOURCE_THREAD: &str = "moescope-source";
/// Records in flight between the source and the UI; a full channel holds the engine back.
const CHANNEL: usize = 64;

/// Where a replay stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayPos {
    pub pos: usize,
    pub len: usize,
    pub playing: bool,
    pub speed: f64,
}

/// What the UI knows about the source before any step.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// "live" or the session file.
    pub source: String,
    pub config: MoeConfig,
    pub backend: BackendKind,
    pub device: String,
    pub paths: Vec<PathSpec>,
    pub tokens: usize,
    pub weights: String,
    /// Live: the most tokens per step that fit the machine's memory, where known.
    pub max_tokens: Option<usize>,
}

/// From the UI to the source.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    SetPaused(bool),
    Step,
    StepBack,
    /// Replay: go to this position (0-based index into the session).
    Seek(usize),
    SetSpeed(f64),
    SetTokens(usize),
    SetVariant(Variant),
    /// Start recording to this file, or to `moescope-<unix time>.jsonl` when None.
    StartRecording(Option<PathBuf>),
    StopRecording,
    Quit,
}

/// From the source to the UI.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    Ready(Box<Meta>),
    Notice(String),
    Record(Box<StepRecord>),
    /// Why there is no telemetry (None: it runs).
    Telemetry(Option<String>),
    /// The file being recorded to, None when recording stopped.
    Recording(Option<PathBuf>),
    Replay(ReplayPos),
    /// The live engine paused on its own (e.g. --steps reached).
    Paused(bool),
    /// A step failed; the engine stopped.
    StepError(String),
    /// The source could not start.
    Failed(String),
}

/// The UI's end of a source.
pub struct SourceHandle {
    pub commands: mpsc::Sender<Command>,
    pub events: tmpsc::Receiver<SourceEvent>,
}

impl SourceHandle {
    /// Sends commands; a source that has ended ignores them.
    pub fn send(&self, cmds: Vec<Command>) {
        for c in cmds {
            let _ = self.commands.send(c);
        }
    }
}

/// The source thread's end of the event channel.
pub struct Outbox(tmpsc::Sender<SourceEvent>);

impl Outbox {
    /// False when the UI has gone, so the thread should end.
    pub fn send(&self, ev: SourceEvent) -> bool {
        self.0.blocking_send(ev).is_ok()
    }
}

/// Runs `body` on the source thread: it takes the UI's commands and sends events. A panic there
/// becomes a `StepError` the UI shows, not a trace over the screen.
pub fn spawn(
    body: impl FnOnce(mpsc::Receiver<Command>, &Outbox) + Send + 'static,
) -> Result<SourceHandle> {
    let (ev_tx, ev_rx) = tmpsc::channel(CHANNEL);
    let (cmd_tx, cmd_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(SOURCE_THREAD.into())
        .spawn(move || {
            let out = Outbox(ev_tx);
            // A panic in the engine (e.g. in a driver binding) becomes an error the UI shows
            // instead of a trace over the screen; the panic hook keeps its message for us.
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(cmd_rx, &out)));
            if caught.is_err() {
                let msg =
                    take_source_panic().unwrap_or_else(|| "the engine thread panicked".into());
                out.send(SourceEvent::StepError(format!("engine panicked: {msg}")));
            }
        })
        .context("starting the engine thread")?;
    Ok(SourceHandle {
        commands: cmd_tx,
        events: ev_rx,
    })
}

thread_local! {
    /// The message of a panic on the source thread, for the UI to show.
    static SOURCE_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps a panic's message on the source thread (the UI's panic hook calls it there).
pub fn keep_source_panic(message: String) {
    SOURCE_PANIC.with(|p| *p.borrow_mut() = Some(message));
}

/// The message of the last panic on this (source) thread.
fn take_source_panic() -> Option<String> {
    SOURCE_PANIC.with(|p| p.borrow_mut().take())
}
