//! `moescope replay FILE`: the TUI driven by a recorded session (paced as recorded, with seeking),
//! or `--summary`: kernel-time percentiles, imbalance and verdicts over the whole file.

use crate::engine::step::StepRecord;
use crate::session::export::{self, Output};
use crate::session::{print_warnings, summary, SessionReader};
use crate::ui::source::{self, Command, Meta, Outbox, ReplayPos, SourceEvent, SourceHandle};
use crate::ui::{self, Mode};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Opens a recorded session on the source thread, for the TUI.
pub fn spawn_replay(path: PathBuf) -> Result<SourceHandle> {
    source::spawn(move |cmds, out| replay(&path, cmds, out))
}

/// Longest wait between two replayed steps, whatever the recording says.
const MAX_REPLAY_GAP: Duration = Duration::from_secs(5);

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Session file (JSONL) to open.
    pub file: PathBuf,
    /// Print aggregate statistics instead of opening the TUI.
    #[arg(long, conflicts_with = "repair")]
    pub summary: bool,
    /// Write the valid steps of a damaged session to -o (the header, then every step that
    /// parses, repeated steps once), and report what was skipped.
    #[arg(long, requires = "output")]
    pub repair: bool,
    /// Output file of --repair.
    #[arg(short = 'o', long = "output", requires = "repair")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing -o file.
    #[arg(long, requires = "repair")]
    pub force: bool,
}

pub fn run(args: ReplayArgs) -> Result<()> {
    if let (true, Some(out)) = (args.repair, &args.output) {
        return repair(&args.file, out, args.force);
    }
    if !args.summary {
        ui::require_terminal()?;
        return ui::run(Mode::Replay, spawn_replay(args.file)?);
    }
    let (mut reader, _) = SessionReader::open(&args.file)?;
    let header = reader.header().clone();
    let summary = summary::Summary::of_steps(&header, reader.steps())?;
    print_warnings(&reader.report());
    reader.ensure_some_valid()?;
    let text = summary.render(&args.file.display().to_string());
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the summary to stdout")?;
    Ok(())
}

/// `--repair`: the header and every valid step of `file`, written to `out` through a temporary
/// file (nothing half-written), with the damage report on stderr.
fn repair(file: &Path, out: &Path, force: bool) -> Result<()> {
    export::refuse_same_file(file, out)?;
    let mut output = Output::create(Some(out), force)?;
    let (mut reader, _) = SessionReader::open(file)?;
    let valid = reader.valid_steps()?;
    print_warnings(&reader.report());
    reader.ensure_some_valid()?;
    let mut header = serde_json::to_vec(reader.header()).context("encoding the header")?;
    header.push(b'\n');
    let w = output.writer();
    w.write_all(&header)
        .with_context(|| format!("writing {}", out.display()))?;
    for &i in &valid {
        let line = reader.raw(i)?;
        w.write_all(line)
            .and_then(|()| w.write_all(b"\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    output.commit()?;
    eprintln!(
        "moescope: wrote {} valid steps of {} to {}",
        valid.len(),
        file.display(),
        out.display()
    );
    Ok(())
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
        max_tokens: None,
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
