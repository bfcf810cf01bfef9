//! Replay: open a session file by indexing its line offsets (one scan, fixed-size buffer), and
//! parse a step only when it is read. Memory is the index (16 bytes a step) plus one line.
//!
//! A damaged file keeps every step that is still whole: a line that is not one JSON object, or
//! that does not parse as a step when read, is skipped and reported by its line number (see
//! [`Damage`]); steps out of order are flagged, a repeated step number is kept once. Only a file
//! with no valid step left (or a broken header) is refused.
//!
//! Just over 600 lines: the index, the damage report and the repair write-out belong together
//! (one reading of a file), and their tests are at the end.

use super::{SessionHeader, SESSION_FORMAT, SESSION_VERSION, SESSION_VERSION_MIN};
use crate::engine::step::StepRecord;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Longest header line accepted; a real one is a few kilobytes.
const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Longest step line worth trying to parse; a real step is tens of kilobytes.
const MAX_LINE_BYTES: u64 = 256 << 20;
/// Scan buffer: large enough for one read syscall to cover many lines.
const SCAN_BUFFER: usize = 1 << 20;
/// Bad lines named one by one in the report; the rest are counted.
const NAMED_LINES: usize = 20;

/// One indexed step line.
#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u64,
    /// Bytes, newline excluded.
    len: u32,
    /// 1-based line number in the file.
    line: u32,
}

/// What was wrong with a file: each skipped line with the reason, and order problems.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Damage {
    /// (line number, why it was skipped), in file order.
    pub bad_lines: Vec<(usize, String)>,
    /// Lines whose step number is not above the one before (kept, in file order).
    pub reordered: Vec<usize>,
    /// Lines whose step number appeared before (skipped: the first is kept).
    pub duplicates: Vec<usize>,
    /// Damage not tied to one line (an interrupted last line, ...).
    pub notes: Vec<String>,
}

impl Damage {
    pub fn is_empty(&self) -> bool {
        self.bad_lines.is_empty()
            && self.reordered.is_empty()
            && self.duplicates.is_empty()
            && self.notes.is_empty()
    }

    /// Lines skipped in all (bad and repeated).
    pub fn skipped(&self) -> usize {
        self.bad_lines.len() + self.duplicates.len()
    }

    /// One message per problem (the first few by line number), then a summary.
    pub fn report(&self, file: &str, kept: usize) -> Vec<String> {
        let mut out: Vec<String> = self.notes.iter().map(|n| format!("{file}: {n}")).collect();
        for (line, why) in self.bad_lines.iter().take(NAMED_LINES) {
            out.push(format!("{file}: line {line} skipped: {why}"));
        }
        if self.bad_lines.len() > NAMED_LINES {
            out.push(format!(
                "{file}: {} more bad lines skipped",
                self.bad_lines.len() - NAMED_LINES
            ));
        }
        if !self.duplicates.is_empty() {
            out.push(format!(
                "{file}: {} repeated step(s) skipped (the first copy kept): lines {}",
                self.duplicates.len(),
                line_list(&self.duplicates)
            ));
        }
        if !self.reordered.is_empty() {
            out.push(format!(
                "{file}: {} step(s) out of order (kept where they are): lines {}",
                self.reordered.len(),
                line_list(&self.reordered)
            ));
        }
        if self.skipped() > 0 {
            out.push(format!(
                "{file}: kept {kept} valid steps, skipped {} damaged or repeated lines",
                self.skipped()
            ));
        }
        out
    }
}

fn line_list(lines: &[usize]) -> String {
    let mut s: Vec<String> = lines
        .iter()
        .take(NAMED_LINES)
        .map(|l| l.to_string())
        .collect();
    if lines.len() > NAMED_LINES {
        s.push(format!("and {} more", lines.len() - NAMED_LINES));
    }
    s.join(", ")
}

/// Random access to a session file's steps without loading them all.
pub struct SessionReader {
    path: PathBuf,
    file: File,
    header: SessionHeader,
    entries: Vec<Entry>,
    damage: Damage,
    /// Entries found unparsable when read (skipped by `steps`).
    unreadable: HashSet<usize>,
    /// The last step number indexed (order checks while indexing).
    last_step: Option<u64>,
    /// Step number → the index of its first valid line (repeats are skipped when read).
    first_of: HashMap<u64, usize>,
    line: Vec<u8>,
}

/// Why one step could not be read.
enum ReadFailure {
    /// The line is there but is not a step record: skip it.
    Bad(String),
    /// The file could not be read: stop.
    Io(anyhow::Error),
}

impl SessionReader {
    /// Opens and indexes `path`. The warnings name every skipped or flagged line and end with
    /// a summary; the file is refused only when its header is broken or no step is left.
    pub fn open(path: &Path) -> Result<(SessionReader, Vec<String>)> {
        let file = File::open(path)
            .with_context(|| format!("cannot open session file {}", path.display()))?;
        let name = path.display().to_string();
        let (header, header_len) = read_header(&file).with_context(|| format!("session {name}"))?;
        let mut reader = SessionReader {
            path: path.to_path_buf(),
            file,
            header,
            entries: Vec::new(),
            damage: Damage::default(),
            unreadable: HashSet::new(),
            last_step: None,
            first_of: HashMap::new(),
            line: Vec::new(),
        };
        reader
            .index(header_len)
            .with_context(|| format!("session {name}"))?;
        reader.drop_unreadable_head()?;
        if reader.entries.is_empty() && reader.damage.skipped() > 0 {
            let report = reader.damage.report(&name, 0).join("\n");
            bail!("session {name} has no valid step left:\n{report}");
        }
        let warnings = reader.damage.report(&name, reader.len());
        Ok((reader, warnings))
    }

    pub fn header(&self) -> &SessionHeader {
        &self.header
    }

    /// Number of indexed steps (lines that looked like a step when opened).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was found wrong so far (at open, and lines that failed to parse when read).
    pub fn damage(&self) -> &Damage {
        &self.damage
    }

    /// Steps not found unreadable so far (all valid once `steps` has run to the end).
    pub fn kept(&self) -> usize {
        self.len() - self.unreadable.len()
    }

    /// The damage report as it stands: after `steps` has run to the end it covers every line.
    pub fn report(&self) -> Vec<String> {
        self.damage
            .report(&self.path.display().to_string(), self.kept())
    }

    /// Refuses a file whose every step turned out unreadable (after `steps` ran to the end).
    pub fn ensure_some_valid(&self) -> Result<()> {
        if self.kept() == 0 && self.damage.skipped() > 0 {
            bail!(
                "session {} has no valid step left:\n{}",
                self.path.display(),
                self.report().join("\n")
            );
        }
        Ok(())
    }

    /// Step `i` (0-based among the indexed steps).
    pub fn read(&mut self, i: usize) -> Result<StepRecord> {
        match self.try_read(i) {
            Ok(r) => Ok(r),
            Err(ReadFailure::Io(e)) => Err(e),
            Err(ReadFailure::Bad(why)) => bail!(
                "session {} line {}: not a valid step record: {why}",
                self.path.display(),
                self.entries[i].line
            ),
        }
    }

    /// The raw line of step `i`, newline excluded (what `replay --repair` copies).
    pub fn raw(&mut self, i: usize) -> Result<&[u8]> {
        self.load_line(i).map_err(|e| match e {
            ReadFailure::Io(e) => e,
            ReadFailure::Bad(why) => anyhow::anyhow!(why),
        })?;
        Ok(&self.line)
    }

    /// Every valid step in order, parsed one at a time. A line that does not parse is skipped
    /// and added to [`damage`](Self::damage); only a read error ends the iteration with Err.
    pub fn steps(&mut self) -> impl Iterator<Item = Result<StepRecord>> + '_ {
        self.valid_indices().map(|(_, r)| r)
    }

    /// Like `steps`, with each step's index.
    fn valid_indices(&mut self) -> impl Iterator<Item = (usize, Result<StepRecord>)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || loop {
            if i >= self.len() {
                return None;
            }
            let at = i;
            i += 1;
            if self.unreadable.contains(&at) {
                continue;
            }
            match self.try_read(at) {
                Ok(r) if *self.first_of.entry(r.step).or_insert(at) != at => self.mark_repeated(at),
                Ok(r) => return Some((at, Ok(r))),
                Err(ReadFailure::Io(e)) => return Some((at, Err(e))),
                Err(ReadFailure::Bad(why)) => self.mark_unreadable(at, why),
            }
        })
    }

    /// Indices of the steps that parse (reads every step once).
    pub fn valid_steps(&mut self) -> Result<Vec<usize>> {
        self.valid_indices()
            .map(|(i, r)| r.map(|_| i))
            .collect::<Result<Vec<_>>>()
    }

    /// A valid line whose step number an earlier valid line has: skipped, the first kept.
    fn mark_repeated(&mut self, i: usize) {
        if self.unreadable.insert(i) {
            self.damage.duplicates.push(self.entries[i].line as usize);
            self.damage.duplicates.sort_unstable();
        }
    }

    fn mark_unreadable(&mut self, i: usize, why: String) {
        if self.unreadable.insert(i) {
            self.damage
                .bad_lines
                .push((self.entries[i].line as usize, why));
            self.damage.bad_lines.sort_by_key(|b| b.0);
        }
    }

    fn load_line(&mut self, i: usize) -> Result<(), ReadFailure> {
        let Some(&Entry { start, len, line }) = self.entries.get(i) else {
            return Err(ReadFailure::Io(anyhow::anyhow!(
                "step {i} is out of range: session {} has {} steps",
                self.path.display(),
                self.len()
            )));
        };
        self.line.resize(len as usize, 0);
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.file.read_exact(&mut self.line))
            .with_context(|| format!("cannot read line {line} of session {}", self.path.display()))
            .map_err(ReadFailure::Io)
    }

    fn try_read(&mut self, i: usize) -> Result<StepRecord, ReadFailure> {
        self.load_line(i)?;
        serde_json::from_slice(&self.line).map_err(|e| ReadFailure::Bad(e.to_string()))
    }

    /// A schema mismatch shows on the first step: the leading lines that do not parse are
    /// damage found now, not deep in a replay.
    fn drop_unreadable_head(&mut self) -> Result<()> {
        let mut first_good = self.entries.len();
        for i in 0..self.entries.len() {
            match self.try_read(i) {
                Ok(_) => {
                    first_good = i;
                    break;
                }
                Err(ReadFailure::Io(e)) => return Err(e),
                Err(ReadFailure::Bad(why)) => {
                    let line = self.entries[i].line as usize;
                    self.damage.bad_lines.push((line, why));
                }
            }
        }
        self.damage.bad_lines.sort_by_key(|b| b.0);
        self.entries.drain(..first_good);
        Ok(())
    }

    /// Records where each step line starts and ends. Every line is checked to look like one
    /// JSON object (cheap: first and last byte) and its step number is read from its start;
    /// full parsing waits for `read`.
    fn index(&mut self, header_len: u64) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(header_len))
            .context("cannot seek past the header")?;
        let mut scan = LineScan::new(header_len);
        let size = self.file.metadata().map_or(SCAN_BUFFER as u64, |m| m.len());
        let mut buf = vec![0u8; (size.saturating_sub(header_len) as usize).clamp(1, SCAN_BUFFER)];
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("cannot read the file"),
            };
            scan.feed(&buf[..n], &mut |line| self.add_line(line));
        }
        if let Some(line) = scan.finish() {
            self.add_tail(line)?;
        }
        Ok(())
    }

    /// One complete line.
    fn add_line(
        &mut self,
        ScannedLine {
            start,
            end,
            line,
            shape,
        }: ScannedLine,
    ) {
        let len = end - start;
        if let Err(why) = shape.check(len) {
            self.damage.bad_lines.push((line, why));
            return;
        }
        self.entries.push(Entry {
            start,
            len: len as u32,
            line: line as u32,
        });
        self.check_order(shape.step);
    }

    /// The bytes after the last newline: a step if they parse, else an interrupted line.
    fn add_tail(
        &mut self,
        ScannedLine {
            start,
            end,
            line,
            shape,
        }: ScannedLine,
    ) -> Result<()> {
        let len = end - start;
        if shape.blank {
            return Ok(());
        }
        let parsed = if shape.check(len).is_ok() {
            let mut tail = vec![0u8; len as usize];
            self.file
                .seek(SeekFrom::Start(start))
                .and_then(|_| self.file.read_exact(&mut tail))
                .with_context(|| format!("cannot read line {line}"))?;
            serde_json::from_slice::<StepRecord>(&tail).map_err(|e| e.to_string())
        } else {
            Err("not one JSON object".to_string())
        };
        match parsed {
            Ok(_) => {
                self.entries.push(Entry {
                    start,
                    len: len as u32,
                    line: line as u32,
                });
                self.check_order(shape.step);
            }
            Err(why) => self.damage.notes.push(format!(
                "line {line} is incomplete ({len} bytes, no newline at the end: {why}); \
                 skipped it — the recording was probably interrupted"
            )),
        }
        Ok(())
    }

    /// Flags a step number not above the previous one (a repeat is found when read: only a
    /// line that parses may stand for its step).
    fn check_order(&mut self, step: Option<u64>) {
        let Some(step) = step else { return };
        let line = self.entries.last().map_or(0, |e| e.line as usize);
        if self.last_step.is_some_and(|last| step <= last) {
            self.damage.reordered.push(line);
        }
        self.last_step = Some(step);
    }
}

/// What the scan saw of one line: first and last non-CR byte, whether it is blank, and the
/// step number at its start (`{"step":N,`, how the writer begins every record).
#[derive(Clone, Copy, Debug, Default)]
struct Shape {
    first: Option<u8>,
    last: u8,
    blank: bool,
    step: Option<u64>,
}

impl Shape {
    /// A step line must be one JSON object: `{` first, `}` last (a `\r` of CRLF tolerated).
    fn check(&self, len: u64) -> Result<(), String> {
        if len > MAX_LINE_BYTES {
            return Err(format!("{len} bytes is longer than any step"));
        }
        match self.first {
            _ if self.blank => Err("the line is empty".into()),
            Some(b'{') if self.last == b'}' => Ok(()),
            _ => Err("not one JSON object from `{` to `}`".into()),
        }
    }
}

/// Splits a byte stream into lines, keeping only what `Shape` needs and the first bytes (for
/// the step number); a line may span reads.
struct LineScan {
    pos: u64,
    start: u64,
    /// 1-based number of the line being scanned.
    line: usize,
    shape: Shape,
    prefix: Vec<u8>,
}

/// One line found by the scan: its bytes `start..end` (newline excluded) and number.
struct ScannedLine {
    start: u64,
    end: u64,
    line: usize,
    shape: Shape,
}

/// Bytes of a line's start kept to read its step number.
const PREFIX: usize = 32;

impl LineScan {
    fn new(pos: u64) -> LineScan {
        LineScan {
            pos,
            start: pos,
            line: 2,
            shape: Shape {
                blank: true,
                ..Shape::default()
            },
            prefix: Vec::with_capacity(PREFIX),
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.prefix.len() < PREFIX {
            let n = (PREFIX - self.prefix.len()).min(bytes.len());
            self.prefix.extend_from_slice(&bytes[..n]);
        }
        if let Some(&b) = bytes.iter().rev().find(|b| **b != b'\r') {
            self.shape.last = b;
        }
        if self.shape.blank && !bytes.iter().all(u8::is_ascii_whitespace) {
            self.shape.blank = false;
        }
        self.shape.first.get_or_insert(bytes[0]);
    }

    fn feed(&mut self, chunk: &[u8], each: &mut dyn FnMut(ScannedLine)) {
        let mut from = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            self.take(&chunk[from..nl]);
            let end = self.pos + nl as u64;
            let line = self.done(end);
            each(line);
            self.start = end + 1;
            self.line += 1;
            from = nl + 1;
        }
        self.take(&chunk[from..]);
        self.pos += chunk.len() as u64;
    }

    fn done(&mut self, end: u64) -> ScannedLine {
        let mut shape = std::mem::replace(
            &mut self.shape,
            Shape {
                blank: true,
                ..Shape::default()
            },
        );
        shape.step = step_number(&self.prefix);
        self.prefix.clear();
        ScannedLine {
            start: self.start,
            end,
            line: self.line,
            shape,
        }
    }

    /// The unterminated last line, if any bytes follow the last newline.
    fn finish(mut self) -> Option<ScannedLine> {
        (self.pos > self.start).then(|| self.done(self.pos))
    }
}

/// N of a line that starts `{"step":N`.
fn step_number(prefix: &[u8]) -> Option<u64> {
    let rest = prefix.strip_prefix(b"{\"step\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_numbers_from_the_line_start() {
        assert_eq!(step_number(br#"{"step":12,"tokens":3"#), Some(12));
        assert_eq!(step_number(br#"{"step":"x","#), None);
        assert_eq!(step_number(br#"{"tokens":1,"step":2,"#), None);
        assert_eq!(step_number(br#"{"step":1"#), None);
    }
}
