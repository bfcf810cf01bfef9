//! Replay: open a session file by indexing its line offsets (one scan, fixed-size buffer), and
//! parse a step only when it is read. Memory is the index (8 bytes a step) plus one line.

use super::{SessionHeader, SESSION_FORMAT, SESSION_VERSION, SESSION_VERSION_MIN};
use crate::engine::step::StepRecord;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Longest header line accepted; a real one is a few kilobytes.
const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Longest unterminated last line worth trying to parse; a real step is tens of kilobytes.
const MAX_TAIL_BYTES: u64 = 256 << 20;
/// Scan buffer: large enough for one read syscall to cover many lines.
const SCAN_BUFFER: usize = 1 << 20;

/// Random access to a session file's steps without loading them all.
pub struct SessionReader {
    path: PathBuf,
    file: File,
    header: SessionHeader,
    /// `bounds[i]..bounds[i + 1]` is step i's line (newline included): n + 1 offsets.
    bounds: Vec<u64>,
    line: Vec<u8>,
}

impl SessionReader {
    /// Opens and indexes `path`; warnings (e.g. a skipped truncated last line) are returned.
    pub fn open(path: &Path) -> Result<(SessionReader, Vec<String>)> {
        let file = File::open(path)
            .with_context(|| format!("cannot open session file {}", path.display()))?;
        let name = path.display().to_string();
        let (header, header_len) = read_header(&file).with_context(|| format!("session {name}"))?;
        let mut reader = SessionReader {
            path: path.to_path_buf(),
            file,
            header,
            bounds: vec![header_len],
            line: Vec::new(),
        };
        let mut warnings = Vec::new();
        reader
            .index(&mut warnings)
            .with_context(|| format!("session {name}"))?;
        // A schema mismatch shows on the first step: fail at open, not deep in a replay.
        if !reader.is_empty() {
            reader.read(0)?;
        }
        Ok((reader, warnings))
    }

    pub fn header(&self) -> &SessionHeader {
        &self.header
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Step `i` (0-based).
    pub fn read(&mut self, i: usize) -> Result<StepRecord> {
        if i >= self.len() {
            bail!(
                "step {i} is out of range: session {} has {} steps",
                self.path.display(),
                self.len()
            );
        }
        let (start, end) = (self.bounds[i], self.bounds[i + 1]);
        self.line.resize((end - start) as usize, 0);
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.file.read_exact(&mut self.line))
            .with_context(|| {
                format!(
                    "cannot read line {} of session {}",
                    i + 2,
                    self.path.display()
                )
            })?;
        serde_json::from_slice(&self.line).with_context(|| {
            format!(
                "session {} line {}: not a valid step record",
                self.path.display(),
                i + 2
            )
        })
    }

    /// Every step in order, parsed one at a time.
    pub fn steps(&mut self) -> impl Iterator<Item = Result<StepRecord>> + '_ {
        (0..self.len()).map(move |i| self.read(i))
    }

    /// Records where each step line starts and ends. Every complete line is checked to look
    /// like one JSON object (cheap: first and last byte); full parsing waits for `read`. An
    /// unterminated last line is kept if it parses, else skipped with a warning.
    fn index(&mut self, warnings: &mut Vec<String>) -> Result<()> {
        let mut pos = self.bounds[0];
        self.file
            .seek(SeekFrom::Start(pos))
            .context("cannot seek past the header")?;
        let mut buf = vec![0u8; SCAN_BUFFER];
        // First and last byte of the line being scanned; the line may span reads.
        let (mut first, mut last): (Option<u8>, u8) = (None, 0);
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("cannot read the file"),
            };
            let chunk = &buf[..n];
            let mut from = 0;
            for nl in memchr::memchr_iter(b'\n', chunk) {
                if nl > from {
                    first.get_or_insert(chunk[from]);
                    last = chunk[nl - 1];
                }
                // bounds holds one offset per indexed step plus the start: this is line len+2.
                check_line_shape(first, last, self.bounds.len() + 1)?;
                self.bounds.push(pos + nl as u64 + 1);
                first = None;
                from = nl + 1;
            }
            if from < n {
                first.get_or_insert(chunk[from]);
                last = chunk[n - 1];
            }
            pos += n as u64;
        }
        let tail_start = *self.bounds.last().unwrap_or(&pos);
        if pos > tail_start {
            self.index_tail(tail_start, pos, warnings)?;
        }
        Ok(())
    }

    /// The bytes after the last newline: a step if they parse, else a truncated line to skip.
    fn index_tail(&mut self, start: u64, end: u64, warnings: &mut Vec<String>) -> Result<()> {
        let line_no = self.bounds.len() + 1;
        let len = end - start;
        let parsed = if len <= MAX_TAIL_BYTES {
            let mut tail = vec![0u8; len as usize];
            self.file
                .seek(SeekFrom::Start(start))
                .and_then(|_| self.file.read_exact(&mut tail))
                .with_context(|| format!("cannot read line {line_no}"))?;
            if tail.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            serde_json::from_slice::<StepRecord>(&tail).map_err(|e| e.to_string())
        } else {
            Err(format!("{len} bytes is longer than any step"))
        };
        match parsed {
            Ok(_) => self.bounds.push(end),
            Err(why) => warnings.push(format!(
                "{}: line {line_no} is incomplete ({len} bytes, no newline at the end: {why}); \
                 skipped it — the recording was probably interrupted",
                self.path.display()
            )),
        }
        Ok(())
    }
}

/// A step line must be one JSON object: `{` first, `}` last (a `\r` of CRLF tolerated).
fn check_line_shape(first: Option<u8>, last: u8, line_no: usize) -> Result<()> {
    match first {
        None => bail!("line {line_no} is empty; expected a step record (one JSON object per line)"),
        Some(b'{') if last == b'}' || last == b'\r' => Ok(()),
        Some(_) => bail!(
            "line {line_no} is not a step record: expected one JSON object on the line, \
             from `{{` to `}}`"
        ),
    }
}

/// Reads and checks line 1. Returns the header and its length in bytes, newline included.
fn read_header(file: &File) -> Result<(SessionHeader, u64)> {
    let mut line = Vec::new();
    BufReader::new(file)
        .take(MAX_HEADER_BYTES)
        .read_until(b'\n', &mut line)
        .context("cannot read line 1")?;
    if line.is_empty() {
        bail!("the file is empty; expected a moescope session (JSONL, a header line first)");
    }
    if line.last() != Some(&b'\n') {
        if line.len() as u64 >= MAX_HEADER_BYTES {
            bail!("line 1 is longer than {MAX_HEADER_BYTES} bytes; expected the session header");
        }
        bail!("line 1 (the header) is incomplete: the file ends before its newline");
    }
    let value: serde_json::Value =
        serde_json::from_slice(&line).context("line 1 is not JSON; expected the session header")?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(SESSION_FORMAT) => {}
        Some(other) => {
            bail!("line 1 has format \"{other}\"; expected \"{SESSION_FORMAT}\"")
        }
        None => {
            bail!("line 1 has no string field `format`; expected a \"{SESSION_FORMAT}\" header")
        }
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if (u64::from(SESSION_VERSION_MIN)..=u64::from(SESSION_VERSION)).contains(&v) => {}
        Some(v) => bail!(
            "line 1: session format version {v} is not supported; moescope {} reads versions \
             {SESSION_VERSION_MIN} to {SESSION_VERSION}",
            env!("CARGO_PKG_VERSION")
        ),
        None => bail!("line 1 has no integer field `version`"),
    }
    let header: SessionHeader =
        serde_json::from_value(value).context("line 1 is not a moescope session header")?;
    Ok((header, line.len() as u64))
}
