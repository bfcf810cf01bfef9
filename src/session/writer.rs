//! Recording: the header line, then one StepRecord per line, each written and flushed on its
//! own so that a killed run keeps every step that finished.

use super::{SessionHeader, SESSION_FORMAT, SESSION_VERSION};
use crate::engine::step::StepRecord;
use crate::engine::Engine;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// Held while a line is written: whoever holds it knows no session line is half-written.
static WRITES: Mutex<()> = Mutex::new(());

/// Waits for a line being written to finish and keeps further ones from starting while the
/// guard lives; a process exiting on a signal holds it, so every session ends on a whole line.
pub fn hold_writes() -> MutexGuard<'static, ()> {
    WRITES.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionHeader {
    /// The header of a session recorded from `engine`, started now.
    pub fn new(engine: &Engine) -> SessionHeader {
        let info = engine.info();
        SessionHeader {
            format: SESSION_FORMAT.to_string(),
            version: SESSION_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            backend: info.kind,
            device: info.device,
            config: engine.config().clone(),
            paths: engine.paths().to_vec(),
            weights: engine.description().to_string(),
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

/// Appends StepRecords to a session file, flushed per step.
pub struct SessionWriter {
    // Unbuffered: each line goes to the OS in one write, so a kill leaves whole lines
    // (at worst one partial last line, which the reader skips with a warning).
    file: File,
    path: PathBuf,
    line: Vec<u8>,
    steps: u64,
}

impl SessionWriter {
    /// Creates `path` (refused if it exists unless `force`) and writes the header.
    pub fn create(path: &Path, header: &SessionHeader, force: bool) -> Result<SessionWriter> {
        let mut options = OpenOptions::new();
        options.write(true);
        if force {
            options.create(true).truncate(true);
        } else {
            // create_new checks and creates in one step: no window for another writer.
            options.create_new(true);
        }
        let file = match options.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "session file {} already exists; pass --force to overwrite it",
                path.display()
            ),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create session file {}", path.display()))
            }
        };
        let mut writer = SessionWriter {
            file,
            path: path.to_path_buf(),
            line: Vec::with_capacity(16 * 1024),
            steps: 0,
        };
        serde_json::to_writer(&mut writer.line, header).context("encoding the session header")?;
        writer.flush_line()?;
        Ok(writer)
    }

    /// Appends one step and flushes it.
    pub fn write(&mut self, record: &StepRecord) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)
            .with_context(|| format!("encoding step {} for the session", record.step))?;
        self.flush_line()?;
        self.steps += 1;
        Ok(())
    }

    /// Steps written so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn flush_line(&mut self) -> Result<()> {
        self.line.push(b'\n');
        let _writing = hold_writes();
        self.file
            .write_all(&self.line)
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing to session file {}", self.path.display()))?;
        self.line.clear();
        Ok(())
    }
}
