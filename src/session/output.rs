//! Where an export goes: stdout, or a file that appears only when it is complete.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where an export goes: stdout, or a file written through a temporary file in the same folder
/// and renamed into place on `commit`, so a failure never leaves a half-written output. (Like
/// `route::write_atomically`, but streaming: an export of a large session never sits in memory.)
pub enum Output {
    Stdout(BufWriter<std::io::Stdout>),
    File {
        writer: BufWriter<File>,
        tmp: TempFile,
        dest: PathBuf,
    },
}

/// A temporary file removed when dropped, unless it was moved into place.
pub struct TempFile {
    path: PathBuf,
    moved: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.moved {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Output {
    /// Stdout when `path` is None; else refuses an existing `path` unless `force`.
    pub fn create(path: Option<&Path>, force: bool) -> Result<Output> {
        let Some(dest) = path else {
            return Ok(Output::Stdout(BufWriter::new(std::io::stdout())));
        };
        if dest.exists() && !force {
            bail!(
                "output file {} already exists; pass --force to overwrite it",
                dest.display()
            );
        }
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("moescope-export");
        let path = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let file = File::create(&path).with_context(|| {
            format!(
                "cannot create output file {} (through {})",
                dest.display(),
                path.display()
            )
        })?;
        Ok(Output::File {
            writer: BufWriter::with_capacity(1 << 20, file),
            tmp: TempFile { path, moved: false },
            dest: dest.to_path_buf(),
        })
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File { writer, .. } => writer,
        }
    }

    /// Flushes and moves the finished file into place. Dropping an `Output` without committing
    /// removes its temporary file.
    pub fn commit(self) -> Result<()> {
        match self {
            Output::Stdout(mut w) => w.flush().context("writing the export to stdout"),
            Output::File {
                writer,
                mut tmp,
                dest,
            } => {
                let file = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("writing {}", tmp.path.display()))?;
                file.sync_all()
                    .with_context(|| format!("writing {}", tmp.path.display()))?;
                std::fs::rename(&tmp.path, &dest).with_context(|| {
                    format!("cannot move {} to {}", tmp.path.display(), dest.display())
                })?;
                tmp.moved = true;
                Ok(())
            }
        }
    }
}

/// Refuses to export a session onto itself, even with --force.
pub fn refuse_same_file(input: &Path, output: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            bail!(
                "output file {} is the session being exported; choose another -o",
                output.display()
            );
        }
    }
    Ok(())
}
