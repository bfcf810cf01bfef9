//! Damaged session files keep every valid step: a truncated last line is skipped with a warning,
//! a bad line anywhere is skipped and named, out-of-order and repeated steps are flagged; only a
//! broken header or a file with no valid step left is refused; nothing panics.

mod session_util;

use moescope::engine::paths::Variant;
use moescope::session::export;
use moescope::session::summary::Summary;
use moescope::session::{ExportFormat, SessionReader};
use session_util::{record, validate_chrome_trace};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The lines of one recorded 4-step session (header first), recorded once per test binary.
fn lines() -> &'static Vec<String> {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    LINES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        record(&path, 4, Variant::Correct);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        text.lines().map(str::to_string).collect()
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn joined(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn open_err(path: &Path) -> String {
    match SessionReader::open(path) {
        Ok(_) => panic!("{} opened; expected an error", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a_truncated_last_line_is_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let l = lines();
    // A run killed in the middle of writing step 3 (line 5).
    let mut text = joined(&l[..4]);
    text.push_str(&l[4][..l[4].len() / 2]);
    let path = write(dir.path(), "killed.jsonl", &text);
    let (mut reader, warnings) = SessionReader::open(&path).unwrap();
    assert_eq!(reader.len(), 3);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("line 5") && warnings[0].contains("incomplete"),
        "{}",
        warnings[0]
    );
    let header = reader.header().clone();
    let s = Summary::of_steps(&header, reader.steps()).unwrap();
    assert_eq!(s.steps, 3);
    let mut out = Vec::new();
    export::write(ExportFormat::Chrome, &header, reader.steps(), &mut out).unwrap();
    validate_chrome_trace(std::str::from_utf8(&out).unwrap());
}

#[test]
fn a_complete_last_line_without_newline_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let l = lines();
    let text = joined(l);
    let path = write(dir.path(), "s.jsonl", text.trim_end());
    let (mut reader, warnings) = SessionReader::open(&path).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(reader.len(), 4);
    assert_eq!(reader.read(3).unwrap().step, 3);
}

/// Opens `path`, reads every step and returns (steps kept, the final report).
fn kept(path: &Path) -> (Vec<u64>, Vec<String>) {
    let (mut reader, _) = SessionReader::open(path).unwrap();
    let steps = reader.steps().map(|r| r.unwrap().step).collect::<Vec<_>>();
    (steps, reader.report())
}

fn mentions(report: &[String], needle: &str) -> bool {
    report.iter().any(|w| w.contains(needle))
}

#[test]
fn a_corrupt_middle_line_is_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines().clone();
    // Cut in the middle but still on its own line (a truncated line followed by a newline).
    l[2] = l[2][..l[2].len() / 2].to_string();
    let path = write(dir.path(), "cut.jsonl", &joined(&l));
    let (steps, report) = kept(&path);
    assert_eq!(steps, [0, 2, 3]);
    assert!(mentions(&report, "line 3 skipped"), "{report:?}");
    assert!(
        mentions(&report, "kept 3 valid steps, skipped 1"),
        "{report:?}"
    );

    let mut l = lines().clone();
    l[3] = "garbage".to_string();
    let path = write(dir.path(), "garbage.jsonl", &joined(&l));
    let (steps, report) = kept(&path);
    assert_eq!(steps, [0, 1, 3]);
    assert!(mentions(&report, "line 4 skipped"), "{report:?}");
}

#[test]
fn appended_garbage_and_a_truncated_last_line_with_newline_lose_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = joined(lines());
    text.push_str("\u{0}\u{7f}binary junk\n{\"half\":\n\n");
    let path = write(dir.path(), "junk.jsonl", &text);
    let (steps, report) = kept(&path);
    assert_eq!(steps, [0, 1, 2, 3]);
    for line in ["line 6", "line 7", "line 8"] {
        assert!(mentions(&report, line), "{line}: {report:?}");
    }

    let l = lines();
    let mut text = joined(&l[..4]);
    text.push_str(&l[4][..l[4].len() - 10]);
    text.push('\n');
    let path = write(dir.path(), "cut-last.jsonl", &text);
    let (steps, report) = kept(&path);
    assert_eq!(steps, [0, 1, 2]);
    assert!(mentions(&report, "line 5 skipped"), "{report:?}");
}

#[test]
fn a_line_of_the_wrong_shape_is_skipped_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines().clone();
    // One JSON object, but not a step record: found when the step is read.
    l[3] = r#"{"step":"three"}"#.to_string();
    let path = write(dir.path(), "s.jsonl", &joined(&l));
    let (mut reader, _) = SessionReader::open(&path).unwrap();
    assert!(reader.read(1).is_ok());
    let err = format!("{:#}", reader.read(2).unwrap_err());
    assert!(
        err.contains("line 4") && err.contains("not a valid step record"),
        "{err}"
    );
    // The summary and every export keep the other steps.
    let header = reader.header().clone();
    let s = Summary::of_steps(&header, reader.steps()).unwrap();
    assert_eq!(s.steps, 3);
    assert!(mentions(&reader.report(), "line 4 skipped"));
    for format in [
        ExportFormat::Json,
        ExportFormat::Chrome,
        ExportFormat::Eplb,
        ExportFormat::Csv,
    ] {
        let (mut reader, _) = SessionReader::open(&path).unwrap();
        let mut out = Vec::new();
        export::write(format, &header, reader.steps(), &mut out).unwrap();
        assert!(!out.is_empty(), "{format:?}");
        assert_eq!(reader.kept(), 3, "{format:?}");
    }

    // A first step of another schema is found at open: skipped, the rest kept.
    let mut l = lines().clone();
    l[1] = r#"{"step":0}"#.to_string();
    let path = write(dir.path(), "first.jsonl", &joined(&l));
    let (reader, warnings) = SessionReader::open(&path).unwrap();
    assert_eq!(reader.len(), 3);
    assert!(mentions(&warnings, "line 2 skipped"), "{warnings:?}");
}

#[test]
fn a_file_with_no_valid_step_left_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}\ngarbage\n{{\"step\":0}}\n", lines()[0]);
    let path = write(dir.path(), "none.jsonl", &text);
    let err = open_err(&path);
    assert!(
        err.contains("no valid step left") && err.contains("line 2") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn reordered_and_repeated_steps_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let l = lines();
    let mut text = format!("{}\n", l[0]);
    for i in [0, 1, 3, 2, 3] {
        text.push_str(&format!("{}\n", l[i + 1]));
    }
    let path = write(dir.path(), "order.jsonl", &text);
    let (steps, report) = kept(&path);
    assert_eq!(steps, [0, 1, 3, 2]);
    assert!(
        mentions(&report, "1 repeated step(s) skipped"),
        "{report:?}"
    );
    assert!(
        mentions(&report, "out of order") && mentions(&report, "lines 5"),
        "{report:?}"
    );
}

#[test]
fn an_empty_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines().clone();
    l.insert(2, String::new());
    let path = write(dir.path(), "s.jsonl", &joined(&l));
    let (steps, report) = kept(&path);
    assert_eq!(steps, [0, 1, 2, 3]);
    assert!(
        mentions(&report, "line 3 skipped: the line is empty"),
        "{report:?}"
    );
}

#[test]
fn an_unknown_version_or_format_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines().clone();
    l[0] = l[0].replacen("\"version\":2", "\"version\":99", 1);
    let path = write(dir.path(), "v99.jsonl", &joined(&l));
    let err = open_err(&path);
    assert!(
        err.contains("line 1")
            && err.contains("version 99")
            && err.contains("reads versions 1 to 2"),
        "{err}"
    );

    let mut l = lines().clone();
    l[0] = l[0].replacen("moescope-session", "other-tool", 1);
    let path = write(dir.path(), "other.jsonl", &joined(&l));
    let err = open_err(&path);
    assert!(
        err.contains("\"other-tool\"") && err.contains("moescope-session"),
        "{err}"
    );

    let mut l = lines().clone();
    l[0] = r#"{"format":"moescope-session","version":1}"#.to_string();
    let path = write(dir.path(), "thin.jsonl", &joined(&l));
    let err = open_err(&path);
    assert!(
        err.contains("line 1") && err.contains("missing field"),
        "{err}"
    );
}

#[test]
fn files_that_are_no_session_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("empty.jsonl", String::new(), "empty"),
        ("text.jsonl", "hello\n".to_string(), "line 1 is not JSON"),
        (
            "array.jsonl",
            "[1,2]\n".to_string(),
            "no string field `format`",
        ),
        (
            "cut-header.jsonl",
            lines()[0][..40].to_string(),
            "header) is incomplete",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write(dir.path(), name, &text);
        let err = open_err(&path);
        assert!(err.contains(needle), "{name}: {err}");
        assert!(err.contains(name), "the error names the file: {err}");
    }
    let err = open_err(&dir.path().join("missing.jsonl"));
    assert!(err.contains("cannot open session file"), "{err}");
}

#[test]
fn a_header_without_steps_opens_empty_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.jsonl", &joined(&lines()[..1]));
    let (mut reader, warnings) = SessionReader::open(&path).unwrap();
    assert!(warnings.is_empty() && reader.is_empty());
    assert!(reader.read(0).is_err());
    let header = reader.header().clone();
    let s = Summary::of_steps(&header, reader.steps()).unwrap();
    assert!(s.render("s.jsonl").contains("none recorded"));
    let mut out = Vec::new();
    export::write(ExportFormat::Chrome, &header, reader.steps(), &mut out).unwrap();
    let t = validate_chrome_trace(std::str::from_utf8(&out).unwrap());
    assert!(t.slices.is_empty() && !t.thread_names.is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn session_bytes() -> &'static [u8] {
        static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
        BYTES.get_or_init(|| joined(lines()).into_bytes())
    }

    /// Opens `bytes` as a session and reads every step; must never panic.
    fn open_and_read(dir: &Path, bytes: &[u8]) -> anyhow::Result<(usize, Vec<String>)> {
        let path = dir.join("s.jsonl");
        std::fs::write(&path, bytes).unwrap();
        let (mut reader, warnings) = SessionReader::open(&path)?;
        let n = reader.len();
        for step in reader.steps() {
            step?;
        }
        Ok((n, warnings))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A recording cut at any byte after the header keeps exactly its complete steps; a cut
        /// inside the header is an error.
        #[test]
        fn a_cut_anywhere_keeps_the_complete_steps(cut in 0usize..1_000_000) {
            let bytes = session_bytes();
            let cut = cut % (bytes.len() + 1);
            let dir = tempfile::tempdir().unwrap();
            let header_len = lines()[0].len() + 1;
            let result = open_and_read(dir.path(), &bytes[..cut]);
            if cut < header_len {
                prop_assert!(result.is_err());
            } else {
                let (n, warnings) = result.unwrap();
                // Lines after the header that end before the cut (newline included).
                let complete = bytes[header_len..cut].iter().filter(|&&b| b == b'\n').count();
                let partial = !bytes[..cut].ends_with(b"\n");
                // A partial line is kept only when it is a whole record that lost its newline.
                let whole = partial && bytes.get(cut) == Some(&b'\n');
                prop_assert_eq!(n, complete + usize::from(whole));
                prop_assert_eq!(warnings.len(), usize::from(partial && !whole));
            }
        }

        /// Bytes overwritten anywhere: an error or a readable session, never a panic.
        #[test]
        fn corrupt_bytes_never_panic(
            edits in proptest::collection::vec((0usize..1_000_000, any::<u8>()), 1..8)
        ) {
            let mut bytes = session_bytes().to_vec();
            let len = bytes.len();
            for (at, b) in edits {
                bytes[at % len] = b;
            }
            let dir = tempfile::tempdir().unwrap();
            let _ = open_and_read(dir.path(), &bytes);
        }
    }
}

fn moescope(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn repair_writes_the_valid_steps_and_export_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines().clone();
    l[2] = l[2][..l[2].len() / 3].to_string();
    l.push("garbage".into());
    let damaged = write(dir.path(), "damaged.jsonl", &joined(&l));
    let fixed = dir.path().join("fixed.jsonl");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let out = moescope(&[
        os("replay"),
        os("--repair"),
        damaged.as_os_str(),
        os("-o"),
        fixed.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("line 3 skipped") && err.contains("line 6 skipped"),
        "{err}"
    );
    assert!(err.contains("wrote 3 valid steps"), "{err}");
    let (steps, report) = kept(&fixed);
    assert_eq!(steps, [0, 2, 3]);
    assert!(report.is_empty(), "{report:?}");

    // Export of the damaged file: every valid step, the damage on stderr, exit 0.
    let csv = dir.path().join("out.csv");
    let out = moescope(&[
        os("export"),
        damaged.as_os_str(),
        os("--format"),
        os("csv"),
        os("-o"),
        csv.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("kept 3 valid steps"), "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let steps: std::collections::BTreeSet<&str> = text
        .lines()
        .skip(1)
        .filter_map(|r| r.split(',').next())
        .collect();
    assert_eq!(steps.into_iter().collect::<Vec<_>>(), ["0", "2", "3"]);

    // Nothing valid: refused, and no output file left.
    let none = write(
        dir.path(),
        "none.jsonl",
        &format!("{}\ngarbage\n", lines()[0]),
    );
    let gone = dir.path().join("gone.csv");
    let out = moescope(&[
        os("export"),
        none.as_os_str(),
        os("--format"),
        os("csv"),
        os("-o"),
        gone.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(!gone.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
