//! Where StepRecords come from: a live engine or a recorded session. Both run on their own
//! thread, take `Command`s and send `SourceEvent`s, so the App and the UI loop are the same for
//! both and a long GPU step never blocks drawing.

use super::app::ReplayPos;
use crate::cli::RunArgs;
use crate::engine::config::MoeConfig;
use crate::engine::paths::{PathSpec, Variant};
use crate::engine::step::StepRecord;
use crate::engine::Engine;
use crate::session::writer::describe_weights;
use crate::session::{SessionHeader, SessionReader, SessionWriter};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc as tmpsc;

/// Name of the source thread; the panic hook recognizes it (see `ui::term`).
pub const SOURCE_THREAD: &str = "moescope-source";
/// Records in flight between the source and the UI; a full channel holds the engine back.
const CHANNEL: usize = 64;
/// Longest wait between two replayed steps, whatever the recording says.
const MAX_REPLAY_GAP: Duration = Duration::from_secs(5);

/// What the UI knows about the source before any step.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// "live" or the session file.
    pub source: String,
    pub config: MoeConfig,
    pub backend: String,
    pub device: String,
    pub paths: Vec<PathSpec>,
    pub tokens: usize,
    pub weights: String,
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

struct Outbox(tmpsc::Sender<SourceEvent>);

impl Outbox {
    /// False when the UI has gone, so the thread should end.
    fn send(&self, ev: SourceEvent) -> bool {
        self.0.blocking_send(ev).is_ok()
    }
}

fn spawn(
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
                let msg = super::term::take_source_panic()
                    .unwrap_or_else(|| "the engine thread panicked".into());
                out.send(SourceEvent::StepError(format!("engine panicked: {msg}")));
            }
        })
        .context("starting the engine thread")?;
    Ok(SourceHandle {
        commands: cmd_tx,
        events: ev_rx,
    })
}

/// Starts the live engine on its own thread (building it there: CUDA setup can take a while).
pub fn spawn_live(args: RunArgs) -> Result<SourceHandle> {
    spawn(move |cmds, out| live(args, cmds, out))
}

/// Opens a recorded session on its own thread.
pub fn spawn_replay(path: PathBuf) -> Result<SourceHandle> {
    spawn(move |cmds, out| replay(&path, cmds, out))
}

/// Seconds since the Unix epoch, for recording file names.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Live {
    engine: Engine,
    meta: Meta,
    writer: Option<(SessionWriter, PathBuf)>,
}

impl Live {
    /// Starts recording; a failure is a notice (from the `r` key) or returned (from --record).
    fn start_recording(&mut self, path: PathBuf, force: bool, out: &Outbox) -> Result<()> {
        let header = SessionHeader::new(&self.engine, self.meta.weights.clone());
        let w = SessionWriter::create(&path, &header, force)
            .with_context(|| format!("cannot record to {}", path.display()))?;
        self.writer = Some((w, path.clone()));
        out.send(SourceEvent::Recording(Some(path)));
        Ok(())
    }

    fn stop_recording(&mut self, out: &Outbox) {
        if self.writer.take().is_some() {
            out.send(SourceEvent::Recording(None));
        }
    }
}

fn live(args: RunArgs, cmds: mpsc::Receiver<Command>, out: &Outbox) {
    let (mut engine, notices) = match args.build_engine() {
        Ok(x) => x,
        Err(e) => {
            out.send(SourceEvent::Failed(format!("{e:#}")));
            return;
        }
    };
    for n in notices {
        out.send(SourceEvent::Notice(n));
    }
    out.send(SourceEvent::Telemetry(
        engine.start_telemetry(args.telemetry_hz),
    ));
    let info = engine.info();
    let meta = Meta {
        source: "live".into(),
        config: engine.config().clone(),
        backend: info.kind,
        device: info.device,
        paths: engine.paths().to_vec(),
        tokens: engine.tokens(),
        weights: describe_weights(&engine, &args),
    };
    if !out.send(SourceEvent::Ready(Box::new(meta.clone()))) {
        return;
    }
    let mut live = Live {
        engine,
        meta,
        writer: None,
    };
    // An explicit --record that cannot be written ends the run, as in headless mode.
    if let Some(path) = &args.record {
        if let Err(e) = live.start_recording(path.clone(), args.force, out) {
            out.send(SourceEvent::Failed(format!("{e:#}")));
            return;
        }
    }
    let mut paused = false;
    let mut pending_steps = 0u32;
    let mut left = args.steps;
    let mut stopped = false;
    loop {
        let idle = stopped || (paused && pending_steps == 0) || left == Some(0);
        let cmd = if idle {
            match cmds.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        } else {
            match cmds.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        };
        if let Some(cmd) = cmd {
            match cmd {
                Command::Quit => return,
                Command::SetPaused(p) => {
                    paused = p;
                    // Resuming after --steps ran out runs on without a limit.
                    if !p && left == Some(0) {
                        left = None;
                    }
                }
                Command::Step => {
                    pending_steps += 1;
                    if left == Some(0) {
                        left = Some(1);
                    }
                }
                Command::SetTokens(t) => live.engine.set_tokens(t),
                Command::SetVariant(v) => live.engine.set_variant(v),
                Command::StartRecording(path) => {
                    let (path, force) = match path {
                        Some(p) => (p, args.force),
                        None => (
                            PathBuf::from(format!("moescope-{}.jsonl", unix_now())),
                            false,
                        ),
                    };
                    if let Err(e) = live.start_recording(path, force, out) {
                        out.send(SourceEvent::Notice(format!("{e:#}")));
                    }
                }
                Command::StopRecording => live.stop_recording(out),
                Command::StepBack | Command::Seek(_) | Command::SetSpeed(_) => {}
            }
            continue;
        }
        if stopped || (paused && pending_steps == 0) {
            continue;
        }
        pending_steps = pending_steps.saturating_sub(1);
        let record = match live.engine.step() {
            Ok(r) => r,
            Err(e) => {
                stopped = true;
                out.send(SourceEvent::StepError(format!("{e:#}")));
                continue;
            }
        };
        if let Some((w, path)) = &mut live.writer {
            if let Err(e) = w.write(&record) {
                let msg = format!("recording to {} stopped: {e:#}", path.display());
                live.writer = None;
                out.send(SourceEvent::Notice(msg));
                out.send(SourceEvent::Recording(None));
            }
        }
        if let Some(n) = &mut left {
            *n = n.saturating_sub(1);
            if *n == 0 && !paused {
                out.send(SourceEvent::Notice(format!(
                    "--steps reached ({} steps): n runs one more, space runs on",
                    args.steps.unwrap_or(0)
                )));
                out.send(SourceEvent::Paused(true));
                paused = true;
            }
        }
        if !out.send(SourceEvent::Record(Box::new(record))) {
            return;
        }
    }
}

struct Replayer<'a> {
    reader: SessionReader,
    at: ReplayPos,
    /// The current step's recorded time, to pace playback.
    t_ms: f64,
    /// The step after the current one, read ahead while playing (its time sets the wait).
    ahead: Option<StepRecord>,
    out: &'a Outbox,
}

impl Replayer<'_> {
    /// Shows position `i`. False when the UI has gone.
    fn go(&mut self, i: usize) -> bool {
        let len = self.at.len;
        if len == 0 {
            return self.out.send(SourceEvent::Replay(self.at));
        }
        let i = i.min(len - 1);
        let read = match self.ahead.take() {
            Some(r) if i == self.at.pos + 1 => Ok(r),
            _ => self.reader.read(i),
        };
        self.at.pos = i;
        if i + 1 == len {
            self.at.playing = false;
        }
        let sent = match read {
            Ok(r) => {
                self.t_ms = r.t_ms;
                self.out.send(SourceEvent::Record(Box::new(r)))
            }
            Err(e) => {
                self.at.playing = false;
                self.out
                    .send(SourceEvent::Notice(format!("step at position {i}: {e:#}")))
            }
        };
        sent && self.out.send(SourceEvent::Replay(self.at))
    }

    /// How long to wait before the next step while playing.
    fn gap(&mut self) -> Duration {
        if self.ahead.is_none() && self.at.pos + 1 < self.at.len {
            self.ahead = self.reader.read(self.at.pos + 1).ok();
        }
        match &self.ahead {
            Some(next) => Duration::from_secs_f64(
                ((next.t_ms - self.t_ms) / 1e3 / self.at.speed).clamp(0.0, 1e6),
            )
            .min(MAX_REPLAY_GAP),
            None => Duration::ZERO,
        }
    }
}

fn replay(path: &Path, cmds: mpsc::Receiver<Command>, out: &Outbox) {
    let (reader, warnings) = match SessionReader::open(path) {
        Ok(x) => x,
        Err(e) => {
            out.send(SourceEvent::Failed(format!(
                "cannot replay {}: {e:#}",
                path.display()
            )));
            return;
        }
    };
    for w in warnings {
        out.send(SourceEvent::Notice(w));
    }
    let h = reader.header().clone();
    let meta = Meta {
        source: path.display().to_string(),
        config: h.config,
        backend: h.backend,
        device: h.device,
        paths: h.paths,
        tokens: 0,
        weights: h.weights,
    };
    out.send(SourceEvent::Telemetry(None));
    if !out.send(SourceEvent::Ready(Box::new(meta))) {
        return;
    }
    let len = reader.len();
    if len == 0 {
        out.send(SourceEvent::Notice("the session has no steps".into()));
    }
    let mut r = Replayer {
        reader,
        at: ReplayPos {
            pos: 0,
            len,
            playing: false,
            speed: 1.0,
        },
        t_ms: 0.0,
        ahead: None,
        out,
    };
    if !r.go(0) {
        return;
    }
    loop {
        let cmd = if r.at.playing {
            // Wait the recorded gap to the next step (scaled), unless a command comes first.
            match cmds.recv_timeout(r.gap()) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match cmds.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        let ok = match cmd {
            None | Some(Command::Step) => r.go(r.at.pos + 1),
            Some(Command::Quit) => return,
            Some(Command::SetPaused(p)) => {
                r.at.playing = !p && r.at.pos + 1 < len;
                out.send(SourceEvent::Replay(r.at))
            }
            Some(Command::StepBack) => r.go(r.at.pos.saturating_sub(1)),
            Some(Command::Seek(i)) => r.go(i),
            Some(Command::SetSpeed(s)) => {
                r.at.speed = s;
                out.send(SourceEvent::Replay(r.at))
            }
            Some(_) => true,
        };
        if !ok {
            return;
        }
    }
}
