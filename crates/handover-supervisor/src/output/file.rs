//! A log file: appended to, rotated by size into date-named files that are gzipped in the
//! background and pruned to the newest `keep`, reopened on request (logrotate's create
//! mode), and safe under logrotate's copytruncate (it is opened with `O_APPEND`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;

use super::time;

/// Mode of a log file handover creates (before the umask).
const FILE_MODE: u32 = 0o640;
/// After a rotation failed (the directory refuses renames, say), wait this long before the
/// next attempt, writing on past `max_size` meanwhile.
const ROTATE_RETRY: Duration = Duration::from_secs(60);
/// Stack of the compressing thread: the compressor's state is large, and unoptimised builds
/// keep it on the stack while building it.
const GZIP_STACK: usize = 4 << 20;
/// Suffix of a file being compressed.
const TMP_SUFFIX: &str = ".gz.tmp";

/// Size-based rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before the file would grow past this; 0: never.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: u32,
    /// gzip rotated files.
    pub compress: bool,
}

/// An open log file.
pub(crate) struct LogFile {
    path: PathBuf,
    file: Option<File>,
    /// Bytes in the file as far as handover knows (checked again before rotating, since
    /// copytruncate may have emptied it).
    size: u64,
    /// The last byte written was not a newline: a line is half written (after an error), and
    /// must be finished before any rotation.
    mid_line: bool,
    rotation: Rotation,
    /// Time stamp of the newest rotated file, so names only ever grow.
    last_stamp: u64,
    rotations: u64,
    rotate_after: Option<Instant>,
    compressor: Arc<Mutex<Compressor>>,
}

/// Rotated files waiting for compression, and whether a thread is on them. The thread exits
/// when the queue is empty (its stack is large, and gone with it).
#[derive(Default)]
struct Compressor {
    queue: VecDeque<PathBuf>,
    running: bool,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

impl LogFile {
    /// Opens (creating) `path`. Rotated files left by an earlier run are taken into account:
    /// new names sort after theirs, and uncompressed ones get compressed.
    pub(crate) fn open(path: &Path, rotation: Rotation) -> io::Result<LogFile> {
        let file = open(path)?;
        let meta = file.metadata()?;
        let size = meta.len();
        // A device or a FIFO (`/dev/full`, a pipe to a log collector) is written, never
        // renamed.
        let rotation = if meta.is_file() {
            rotation
        } else {
            Rotation {
                max_size: 0,
                compress: false,
                ..rotation
            }
        };
        let mut log = LogFile {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            mid_line: false,
            rotation,
            last_stamp: 0,
            rotations: 0,
            rotate_after: None,
            compressor: Arc::default(),
        };
        if !meta.is_file() {
            return Ok(log);
        }
        let rotated = scan(path, true);
        log.last_stamp = rotated.iter().map(|r| r.stamp).max().unwrap_or(0);
        if rotation.compress {
            for leftover in rotated.iter().filter(|r| !r.compressed) {
                log.compress(leftover.path.clone());
            }
        }
        Ok(log)
    }

    pub(crate) fn rotations(&self) -> u64 {
        self.rotations
    }

    /// Opens the path again (it was renamed or removed).
    pub(crate) fn reopen(&mut self) -> io::Result<()> {
        let file = open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Writes whole lines, rotating between them; returns how much was written and the
    /// error that stopped it.
    pub(crate) fn write(&mut self, data: &[u8]) -> (usize, Option<io::Error>) {
        let mut done = 0;
        while done < data.len() {
            if self.file.is_none() {
                if let Err(err) = self.reopen() {
                    return (done, Some(err));
                }
            }
            let rest = &data[done..];
            let len = match self.chunk(rest) {
                Some(len) => len,
                None => {
                    self.rotate();
                    continue;
                }
            };
            let Some(file) = self.file.as_mut() else {
                continue;
            };
            match file.write(&rest[..len]) {
                Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    done += n;
                    self.size += n as u64;
                    self.mid_line = rest[n - 1] != b'\n';
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return (done, Some(err)),
            }
        }
        (done, None)
    }

    /// How much of `rest` to write next, or `None` to rotate first.
    fn chunk(&mut self, rest: &[u8]) -> Option<usize> {
        let line_end = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| i + 1)
        };
        if self.mid_line {
            return Some(line_end(rest));
        }
        let max = self.rotation.max_size;
        if max == 0 || self.size + rest.len() as u64 <= max {
            return Some(rest.len());
        }
        if self.rotate_after.is_some_and(|at| Instant::now() < at) {
            return Some(rest.len());
        }
        // copytruncate may have emptied the file behind handover's back.
        if let Some(file) = &self.file {
            if let Ok(meta) = file.metadata() {
                self.size = meta.len();
            }
        }
        if self.size + rest.len() as u64 <= max {
            return Some(rest.len());
        }
        let room = max.saturating_sub(self.size) as usize;
        let fit = rest[..room.min(rest.len())]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if fit > 0 {
            Some(fit)
        } else if self.size == 0 {
            // A line longer than max_size gets a file of its own.
            Some(line_end(rest))
        } else {
            None
        }
    }

    /// Renames the file to its date-stamped name and hands it to compression (or prunes).
    /// The next write opens a new file.
    fn rotate(&mut self) {
        let mut stamp = time::now_ms().max(self.last_stamp + 1);
        let target = loop {
            let candidate = stamped(&self.path, stamp, "");
            if !candidate.exists() && !stamped(&self.path, stamp, ".gz").exists() {
                break candidate;
            }
            stamp += 1;
        };
        match std::fs::rename(&self.path, &target) {
            Ok(()) => {}
            // Removed or renamed by somebody else: a new file is what rotation gives anyway.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.file = None;
                return;
            }
            Err(err) => {
                warn!(
                    "{}: cannot rotate to {}: {err}; trying again in a minute",
                    self.path.display(),
                    target.display()
                );
                self.rotate_after = Some(Instant::now() + ROTATE_RETRY);
                return;
            }
        }
        self.last_stamp = stamp;
        self.rotations += 1;
        self.file = None;
        self.size = 0;
        if self.rotation.compress {
            self.compress(target);
        } else {
            prune(&self.path, self.rotation.keep);
        }
    }

    /// Queues a rotated file for compression, starting the compressing thread if none runs.
    fn compress(&mut self, rotated: PathBuf) {
        let mut queue = lock(&self.compressor);
        queue.queue.push_back(rotated);
        if queue.running {
            return;
        }
        queue.running = true;
        drop(queue);
        let compressor = self.compressor.clone();
        let path = self.path.clone();
        let keep = self.rotation.keep;
        let started = std::thread::Builder::new()
            .name("handover-gzip".into())
            .stack_size(GZIP_STACK)
            .spawn(move || loop {
                let next = {
                    let mut queue = lock(&compressor);
                    let next = queue.queue.pop_front();
                    queue.running = next.is_some();
                    next
                };
                let Some(rotated) = next else {
                    return;
                };
                if let Err(err) = gzip(&rotated) {
                    warn!("{}: cannot compress: {err}", rotated.display());
                }
                prune(&path, keep);
            });
        if let Err(err) = started {
            warn!("{}: cannot start compressing: {err}", self.path.display());
            lock(&self.compressor).running = false;
        }
    }
}

fn lock(compressor: &Mutex<Compressor>) -> MutexGuard<'_, Compressor> {
    compressor
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `PATH.STAMP` + `suffix`.
fn stamped(path: &Path, stamp: u64, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".");
    name.push(time::file_stamp(stamp));
    name.push(suffix);
    PathBuf::from(name)
}

/// Compresses `rotated` to `rotated.gz` (through a temporary file), then removes it.
fn gzip(rotated: &Path) -> io::Result<()> {
    let mut tmp_name = rotated.as_os_str().to_os_string();
    tmp_name.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut input = match File::open(rotated) {
            Ok(file) => file,
            // Pruned before its turn came.
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        let output = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
        io::copy(&mut input, &mut encoder)?;
        encoder.finish()?;
        Ok(true)
    })();
    match result {
        Ok(true) => {
            let mut gz = rotated.as_os_str().to_os_string();
            gz.push(".gz");
            std::fs::rename(&tmp, PathBuf::from(gz))?;
            std::fs::remove_file(rotated)
        }
        Ok(false) => Ok(()),
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err)
        }
    }
}

/// A rotated file found next to its log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Rotated {
    /// Where it is.
    pub path: PathBuf,
    /// When it was rotated (milliseconds since the epoch, from its name).
    pub stamp: u64,
    /// Whether it is the `.gz`.
    pub compressed: bool,
}

/// The rotated files of `path`: `PATH.STAMP` and `PATH.STAMP.gz`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<Rotated> {
    scan(path, false)
}

/// Like [`rotated_files`], and removes temporary files of compressions a killed handover left
/// behind: only before this handover compresses anything itself.
fn scan(path: &Path, remove_tmp: bool) -> Vec<Rotated> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut prefix = base.as_bytes().to_vec();
    prefix.push(b'.');
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().into_vec();
        let Some(rest) = name.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            continue;
        };
        if let Some(stamp) = rest.strip_suffix(TMP_SUFFIX) {
            if remove_tmp && time::parse_file_stamp(stamp).is_some() {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let (stamp, compressed) = match rest.strip_suffix(".gz") {
            Some(stamp) => (stamp, true),
            None => (rest, false),
        };
        if let Some(ms) = time::parse_file_stamp(stamp) {
            found.push(Rotated {
                path: entry.path(),
                stamp: ms,
                compressed,
            });
        }
    }
    found.sort_by_key(|r| (r.stamp, r.compressed));
    found
}

/// Deletes all but the newest `keep` rotations of `path` (a rotation found both compressed
/// and not, mid-compression, counts once).
fn prune(path: &Path, keep: u32) {
    let rotated = rotated_files(path);
    let mut stamps: Vec<u64> = rotated.iter().map(|r| r.stamp).collect();
    stamps.dedup();
    let excess = stamps.len().saturating_sub(keep as usize);
    let Some(&newest_dropped) = stamps.get(excess.wrapping_sub(1)) else {
        return;
    };
    for old in rotated.iter().filter(|r| r.stamp <= newest_dropped) {
        if let Err(err) = std::fs::remove_file(&old.path) {
            if err.kind() != io::ErrorKind::NotFound {
                warn!("{}: cannot remove: {err}", old.path.display());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
