//! Recording: the header line, then one StepRecord per line, each written and flushed on its
//! own so that a killed run keeps every step that finished.

use super::{SessionHeader, SESSION_FORMAT, SESSION_VERSION};
use crate::cli::RunArgs;
use crate::engine::config::MoeConfig;
use crate::engine::paths::PathSpec;
use crate::engine::step::StepRecord;
use crate::engine::{BackendInfo, Engine};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

impl SessionHeader {
    /// The header of a session recorded from `engine`, started now. `weights` says where the
    /// weights came from (see [`describe_weights`]).
    pub fn new(engine: &Engine, weights: impl Into<String>) -> SessionHeader {
        SessionHeader::from_parts(&engine.info(), engine.config(), engine.paths(), weights)
    }

    /// The same from the pieces, for a caller whose engine lives on another thread (the TUI
    /// starting a recording mid-run): `paths` as they run now, A then B.
    pub fn from_parts(
        info: &BackendInfo,
        config: &MoeConfig,
        paths: &[PathSpec],
        weights: impl Into<String>,
    ) -> SessionHeader {
        SessionHeader {
            format: SESSION_FORMAT.to_string(),
            version: SESSION_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            backend: info.kind.clone(),
            device: info.device.clone(),
            config: config.clone(),
            paths: paths.to_vec(),
            weights: weights.into(),
            started: rfc3339_utc(SystemTime::now()),
        }
    }

    /// The header of a `moescope run` with these options on `engine`.
    pub fn for_run(engine: &Engine, args: &RunArgs) -> SessionHeader {
        SessionHeader::new(engine, describe_weights(engine, args))
    }
}

/// Where a run's weights and inputs come from, for the header's `weights` field: the weight
/// source's own description (seed and skew, or the checkpoint layer actually loaded), plus what
/// only the options know.
pub fn describe_weights(engine: &Engine, args: &RunArgs) -> String {
    let layer = &args.layer;
    let mut s = engine.weights_description();
    if layer.model.is_none() {
        if let Some(cfg) = &layer.config {
            s.push_str(&format!(", shape of {}", cfg.display()));
        }
        if layer.tp > 1 {
            s.push_str(&format!(", tp {} (one rank)", layer.tp));
        }
    }
    if let Some(h) = &args.hidden_states {
        s.push_str(&format!(", hidden states from {}", h.display()));
    }
    s
}

/// `time` as RFC 3339 UTC with second precision, e.g. `2026-11-27T09:22:44Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (eras of 400 years, March-based
/// years so that the leap day falls last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
        self.file
            .write_all(&self.line)
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing to session file {}", self.path.display()))?;
        self.line.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_of_known_instants() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(at(951_827_696), "2000-02-29T12:34:56Z");
        // 2026-11-27 09:22:44.
        assert_eq!(at(1_795_771_364), "2026-11-27T09:22:44Z");
        // 2100-03-01: 2100 is not a leap year.
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
