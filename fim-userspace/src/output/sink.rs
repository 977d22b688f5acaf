//! Where OCSF lines go: stdout, or a file rotated by size (`fim.json` -> `fim.json.1` -> ...).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::ocsf::{OcsfContext, event};
use crate::config::Output;
use crate::store::ChangeRecord;

/// How often a file output checks that its path still names the open file (logrotate moved
/// or deleted it: reopen).
const RECHECK: Duration = Duration::from_secs(1);

enum Target {
    Stdout(std::io::Stdout),
    File(Rotating),
}

struct Rotating {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    /// `None` after a failure: the next write reopens.
    file: Option<(BufWriter<File>, u64, u64)>,
    size: u64,
    checked: Instant,
}

/// The configured output of change events, one OCSF JSON object per line.
pub struct OutputSink {
    target: Target,
    ctx: OcsfContext,
    line: Vec<u8>,
}

impl OutputSink {
    pub fn open(output: &Output, ctx: OcsfContext) -> Result<OutputSink> {
        let target = match output {
            Output::Stdout => Target::Stdout(std::io::stdout()),
            Output::File {
                path,
                max_size_bytes,
                keep,
            } => {
                let mut rotating = Rotating {
                    path: path.clone(),
                    max_size: *max_size_bytes,
                    keep: *keep,
                    file: None,
                    size: 0,
                    checked: Instant::now(),
                };
                rotating.reopen()?;
                Target::File(rotating)
            }
        };
        Ok(OutputSink {
            target,
            ctx,
            line: Vec::with_capacity(4096),
        })
    }

    /// Writes one change (buffered; see [`OutputSink::flush`]).
    pub fn write(&mut self, change: &ChangeRecord) -> Result<()> {
        let event = event(change, &self.ctx);
        self.write_value(&event)
    }

    /// Writes one OCSF event of any class (buffered).
    pub fn write_value(&mut self, event: &serde_json::Value) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, event).context("serialising an OCSF event")?;
        self.line.push(b'\n');
        match &mut self.target {
            Target::Stdout(out) => out
                .lock()
                .write_all(&self.line)
                .context("writing to stdout"),
            Target::File(file) => file.write(&self.line),
        }
    }

    pub fn context(&self) -> &OcsfContext {
        &self.ctx
    }

    pub fn flush(&mut self) -> Result<()> {
        match &mut self.target {
            Target::Stdout(out) => out.lock().flush().context("flushing stdout"),
            Target::File(file) => file.flush(),
        }
    }
}

impl Rotating {
    fn reopen(&mut self) -> Result<()> {
        if let Some(parent) = self.path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::owner_only::FILE_MODE)
            .open(&self.path)
            .with_context(|| format!("opening the output {}", self.path.display()))?;
        // Whatever the umask, and an output file an older fim created 0640: the owner only.
        // Rotated files are renames of this one and keep its mode.
        crate::owner_only::restrict(&file, &self.path)?;
        let meta = file.metadata().context("stat of the output")?;
        self.size = meta.len();
        self.file = Some((
            BufWriter::with_capacity(64 * 1024, file),
            meta.dev(),
            meta.ino(),
        ));
        self.checked = Instant::now();
        Ok(())
    }

    fn rotated_name(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> Result<()> {
        if let Some((mut w, _, _)) = self.file.take() {
            let _ = w.flush();
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path)
                .with_context(|| format!("removing {}", self.path.display()))?;
        } else {
            let _ = std::fs::remove_file(self.rotated_name(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated_name(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated_name(n + 1))
                        .with_context(|| format!("rotating {}", from.display()))?;
                }
            }
            std::fs::rename(&self.path, self.rotated_name(1))
                .with_context(|| format!("rotating {}", self.path.display()))?;
        }
        self.reopen()
    }

    /// Whether the path still names the file we hold open.
    fn still_ours(&self, path: &Path) -> bool {
        match (&self.file, std::fs::metadata(path)) {
            (Some((_, dev, ino)), Ok(meta)) => meta.dev() == *dev && meta.ino() == *ino,
            _ => false,
        }
    }

    fn write(&mut self, line: &[u8]) -> Result<()> {
        if self.checked.elapsed() >= RECHECK {
            self.checked = Instant::now();
            if !self.still_ours(&self.path.clone()) {
                self.file = None;
            }
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        let Some((w, _, _)) = self.file.as_mut() else {
            anyhow::bail!("output {} is not open", self.path.display());
        };
        if let Err(e) = w.write_all(line) {
            // A full disk: drop the handle, the next write reopens and tries again.
            self.file = None;
            return Err(e).with_context(|| format!("writing {}", self.path.display()));
        }
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some((w, _, _)) = self.file.as_mut()
            && let Err(e) = w.flush()
        {
            self.file = None;
            return Err(e).with_context(|| format!("flushing {}", self.path.display()));
        }
        Ok(())
    }
}
