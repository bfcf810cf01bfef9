//! The one run loop. A [`Driver`] owns what a run needs besides the UI: the engine, the NVML
//! sampler and the session recorder. [`Driver::step`] runs the engine, attaches the newest
//! telemetry sample and records the step (flushed) before anything else sees it; a headless run
//! drains [`Driver::records`] into stdout or an exporter, and the TUI's live source
//! ([`spawn_live`]) calls the same `step` between the UI's commands.

use crate::engine::spec::RunSpec;
use crate::engine::step::StepRecord;
use crate::engine::telemetry::Telemetry;
use crate::engine::{BackendKind, Engine};
use crate::session::{SessionHeader, SessionWriter};
use crate::ui::source::{self, Command, Meta, Outbox, SourceEvent, SourceHandle};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A run in progress: engine, telemetry, recorder.
pub struct Driver {
    engine: Engine,
    telemetry: Telemetry,
    recorder: Option<SessionWriter>,
    started: Instant,
    steps: u64,
}

/// One step as the driver delivers it.
pub struct Stepped {
    pub record: StepRecord,
    /// The recording failed on this step and was stopped (the TUI shows it, headless fails).
    pub recording_failed: Option<anyhow::Error>,
}

impl Driver {
    /// Starts NVML sampling of GPU 0 at `telemetry_hz` (0 = off) beside the engine.
    pub fn new(engine: Engine, telemetry_hz: f64) -> Driver {
        Driver {
            engine,
            telemetry: Telemetry::start(0, telemetry_hz),
            recorder: None,
            started: Instant::now(),
            steps: 0,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Why there is no telemetry, where there is none.
    pub fn telemetry_unavailable(&self) -> Option<&str> {
        self.telemetry.unavailable()
    }

    /// The header of a session recorded from this run now (paths as they run now).
    pub fn header(&self) -> SessionHeader {
        SessionHeader::new(&self.engine)
    }

    /// Starts recording to `path` (an existing file is refused unless `force`).
    pub fn start_recording(&mut self, path: &Path, force: bool) -> Result<()> {
        let writer = SessionWriter::create(path, &self.header(), force)
            .with_context(|| format!("cannot record to {}", path.display()))?;
        self.recorder = Some(writer);
        Ok(())
    }

    /// Stops recording; returns the file recorded to, if any.
    pub fn stop_recording(&mut self) -> Option<PathBuf> {
        self.recorder.take().map(|w| w.path().to_path_buf())
    }

    /// Runs one step and records it.
    pub fn step(&mut self) -> Result<Stepped> {
        let mut record = self.engine.step()?;
        record.telemetry = self.telemetry.latest();
        self.steps += 1;
        let mut recording_failed = None;
        if let Some(w) = &mut self.recorder {
            if let Err(e) = w.write(&record) {
                let path = w.path().display().to_string();
                self.recorder = None;
                recording_failed = Some(e.context(format!("recording to {path} stopped")));
            }
        }
        Ok(Stepped {
            record,
            recording_failed,
        })
    }

    /// `n` steps as an iterator; a recording failure ends it with that error (headless runs).
    pub fn records(&mut self, n: u64) -> impl Iterator<Item = Result<StepRecord>> + '_ {
        (0..n).map(move |_| {
            let stepped = self.step()?;
            match stepped.recording_failed {
                Some(e) => Err(e),
                None => Ok(stepped.record),
            }
        })
    }

    /// Steps run and their rate since the driver started.
    pub fn rate(&self) -> (u64, f64) {
        let secs = self.started.elapsed().as_secs_f64();
        (
            self.steps,
            if secs > 0.0 {
                self.steps as f64 / secs
            } else {
                0.0
            },
        )
    }
}

/// How the TUI's live run starts.
pub struct LivePlan {
    pub spec: RunSpec,
    pub telemetry_hz: f64,
    /// `--record FILE` (and `--force`): recorded from the first step; failing to create it ends
    /// the run, as in headless mode.
    pub record: Option<PathBuf>,
    pub force: bool,
    /// `--steps N`: pause after N steps.
    pub steps: Option<u64>,
}

/// Starts the live engine on the source thread (built there: CUDA setup can take a while).
pub fn spawn_live(plan: LivePlan) -> Result<SourceHandle> {
    source::spawn(move |cmds, out| live(plan, cmds, out))
}

/// Seconds since the Unix epoch, for recording file names.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn meta(engine: &Engine) -> Meta {
    let info = engine.info();
    Meta {
        source: "live".into(),
        config: engine.config().clone(),
        backend: info.kind,
        device: info.device,
        paths: engine.paths().to_vec(),
        tokens: engine.tokens(),
        weights: engine.description().to_string(),
        max_tokens: Some(engine.max_tokens()),
    }
}

/// Starts recording and tells the UI; a failure is returned.
fn start_recording(driver: &mut Driver, path: PathBuf, force: bool, out: &Outbox) -> Result<()> {
    driver.start_recording(&path, force)?;
    out.send(SourceEvent::Recording(Some(path)));
    Ok(())
}

/// Pause and step state of the live loop.
struct Pace {
    paused: bool,
    /// Single steps asked for while paused.
    pending: u32,
    /// Steps left before pausing on its own (`--steps`), None: no limit.
    left: Option<u64>,
    /// A step failed: the engine stopped.
    stopped: bool,
}

impl Pace {
    fn idle(&self) -> bool {
        self.stopped || (self.paused && self.pending == 0) || self.left == Some(0)
    }
}

fn live(plan: LivePlan, cmds: mpsc::Receiver<Command>, out: &Outbox) {
    let (engine, notices) = match plan.spec.build_engine() {
        Ok(x) => x,
        Err(e) => {
            out.send(SourceEvent::Failed(format!("{e:#}")));
            return;
        }
    };
    for n in notices {
        out.send(SourceEvent::Notice(n));
    }
    let mut driver = Driver::new(engine, plan.telemetry_hz);
    out.send(SourceEvent::Telemetry(
        driver.telemetry_unavailable().map(String::from),
    ));
    if !out.send(SourceEvent::Ready(Box::new(meta(driver.engine())))) {
        return;
    }
    if let Some(path) = &plan.record {
        if let Err(e) = start_recording(&mut driver, path.clone(), plan.force, out) {
            out.send(SourceEvent::Failed(format!("{e:#}")));
            return;
        }
    }
    let mut pace = Pace {
        paused: false,
        pending: 0,
        left: plan.steps,
        stopped: false,
    };
    loop {
        let cmd = if pace.idle() {
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
                    pace.paused = p;
                    // Resuming after --steps ran out runs on without a limit.
                    if !p && pace.left == Some(0) {
                        pace.left = None;
                    }
                }
                Command::Step => {
                    pace.pending += 1;
                    if pace.left == Some(0) {
                        pace.left = Some(1);
                    }
                }
                Command::SetTokens(t) => driver.engine_mut().set_tokens(t),
                Command::SetVariant(v) => driver.engine_mut().set_variant(v),
                Command::StartRecording(path) => {
                    let (path, force) = match path {
                        Some(p) => (p, plan.force),
                        None => (
                            PathBuf::from(format!("moescope-{}.jsonl", unix_now())),
                            false,
                        ),
                    };
                    if let Err(e) = start_recording(&mut driver, path, force, out) {
                        out.send(SourceEvent::Notice(format!("{e:#}")));
                    }
                }
                Command::StopRecording => {
                    if driver.stop_recording().is_some() {
                        out.send(SourceEvent::Recording(None));
                    }
                }
                Command::StepBack | Command::Seek(_) | Command::SetSpeed(_) => {}
            }
            continue;
        }
        if pace.idle() {
            continue;
        }
        pace.pending = pace.pending.saturating_sub(1);
        let stepped = match driver.step() {
            Ok(s) => s,
            Err(e) => {
                pace.stopped = true;
                out.send(SourceEvent::StepError(format!("{e:#}")));
                continue;
            }
        };
        if let Some(e) = stepped.recording_failed {
            out.send(SourceEvent::Notice(format!("{e:#}")));
            out.send(SourceEvent::Recording(None));
        }
        if let Some(n) = &mut pace.left {
            *n = n.saturating_sub(1);
            if *n == 0 && !pace.paused {
                out.send(SourceEvent::Notice(format!(
                    "--steps reached ({} steps): n runs one more, space runs on",
                    plan.steps.unwrap_or(0)
                )));
                out.send(SourceEvent::Paused(true));
                pace.paused = true;
            }
        }
        if !out.send(SourceEvent::Record(Box::new(stepped.record))) {
            return;
        }
    }
}

/// Whether telemetry is expected on this backend (its absence is worth a notice).
pub fn telemetry_expected(kind: BackendKind) -> bool {
    kind == BackendKind::Cuda
}
