//! `handover logs`: prints the last lines of the log files named in `[logs]`, and with
//! `--follow` the lines written after them.
//!
//! It reads the files only, never the control socket, so it works whether or not handover
//! runs. The end of a file is read backwards in blocks, so a file of any size costs a few
//! blocks of memory; lines are copied from the file to stdout by their offsets, so a line of
//! any length does too.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use handover_proto::logtag::{self, Tag, TIME_LEN};
use handover_supervisor::output::{rotated_files, time, Rotated};

use crate::config::{LogSink, LogsConfig};
use crate::exit;

/// Bytes read at a time, backwards for the last lines and forwards when following.
const BLOCK: usize = 64 * 1024;

/// Bytes at the start of a line enough to hold any tag.
const TAG_MAX: usize = logtag::TAG_MAX;

/// How often `--follow` looks for new lines.
const POLL: Duration = Duration::from_millis(200);

/// Most bytes `--follow` reads from one file before it prints what it has.
const STEP_BYTES: u64 = 4 * 1024 * 1024;

/// Longest unfinished line `--follow` holds while waiting for its newline. handover's own
/// lines are far shorter (a 1 MiB `max_line`, escaped, is at most 4 MiB and a tag); a longer
/// one is skipped, with a note on stderr.
const MAX_HELD: usize = 8 * 1024 * 1024;

/// One of workers' output streams, as `--stream` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Stream {
    /// Workers' stdout.
    Stdout,
    /// Workers' stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        self.tagged().name()
    }

    /// The same stream as tags name it.
    fn tagged(self) -> logtag::Stream {
        match self {
            Stream::Stdout => logtag::Stream::Stdout,
            Stream::Stderr => logtag::Stream::Stderr,
        }
    }
}

/// What `handover logs` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Print the last `lines` lines, then keep printing new ones.
    pub follow: bool,
    /// How many lines to print first.
    pub lines: usize,
    /// Which lines to print.
    pub filter: Filter,
}

/// Which lines to print: all, or those whose tag names this worker index and stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// `--worker`.
    pub worker: Option<u32>,
    /// `--stream`.
    pub stream: Option<Stream>,
}

impl Filter {
    fn is_all(&self) -> bool {
        self.worker.is_none() && self.stream.is_none()
    }

    /// Whether the line (or its first bytes, at least [`TAG_MAX`] of them) is kept.
    fn keeps(&self, line: &[u8]) -> bool {
        if self.is_all() {
            return true;
        }
        let Some(tag) = Tag::parse(line) else {
            return false;
        };
        self.worker.is_none_or(|w| w == tag.worker)
            && self.stream.is_none_or(|s| s.tagged() == tag.stream)
    }
}

/// The time of a line, if it starts with a tag.
fn time_of(line: &[u8]) -> Option<[u8; TIME_LEN]> {
    Tag::parse(line).map(|tag| tag.time)
}

/// Gives each line a time to merge by: its own, else that of the line before it in the same
/// file (else of the first line after it that has one), so that a line without a tag stays
/// next to its neighbours.
fn fill_times(times: &[Option<[u8; TIME_LEN]>]) -> Vec<[u8; TIME_LEN]> {
    let first = times
        .iter()
        .flatten()
        .next()
        .copied()
        .unwrap_or([0; TIME_LEN]);
    let mut last = first;
    times
        .iter()
        .map(|time| {
            if let Some(time) = time {
                last = *time;
            }
            last
        })
        .collect()
}

/// Merges two lists, each in time order, into one; on equal times `a`'s come first.
fn merge<T>(a: Vec<([u8; TIME_LEN], T)>, b: Vec<([u8; TIME_LEN], T)>) -> Vec<T> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some((ta, _)), Some((tb, _))) => ta <= tb,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return merged,
        };
        let next = if take_a { a.next() } else { b.next() };
        merged.extend(next.map(|(_, item)| item));
    }
}

/// Why `handover logs` stopped.
#[derive(Debug)]
enum Failure {
    /// A log file could not be opened or read.
    Read(PathBuf, io::Error),
    /// Stdout could not be written.
    Write(io::Error),
}

impl Failure {
    fn read(path: &Path) -> impl FnOnce(io::Error) -> Failure + '_ {
        move |err| Failure::Read(path.to_path_buf(), err)
    }

    /// Reports the failure on stderr and returns the exit code. A closed stdout (`| head`)
    /// is how a reader says it has seen enough: no message, exit 0.
    fn report(self) -> u8 {
        match self {
            Failure::Write(err) if err.kind() == io::ErrorKind::BrokenPipe => exit::OK,
            Failure::Write(err) => {
                eprintln!("handover: cannot write to stdout: {err}");
                exit::IO
            }
            Failure::Read(path, err) => {
                eprintln!("handover: cannot read {}: {err}", path.display());
                exit::IO
            }
        }
    }
}

/// The files to read: the distinct files of the streams asked for. `Err` says where the
/// output goes instead when none goes to a file.
fn files(logs: &LogsConfig, stream: Option<Stream>) -> Result<Vec<PathBuf>, String> {
    let sinks = [
        (Stream::Stdout, &logs.stdout),
        (Stream::Stderr, &logs.stderr),
    ];
    let wanted: Vec<(Stream, &LogSink)> = sinks
        .into_iter()
        .filter(|(s, _)| stream.is_none_or(|wanted| wanted == *s))
        .collect();
    let mut paths: Vec<PathBuf> = Vec::new();
    for (_, sink) in &wanted {
        if let LogSink::File(path) = sink {
            if !paths.contains(path) {
                paths.push(path.clone());
            }
        }
    }
    if !paths.is_empty() {
        return Ok(paths);
    }
    let places: Vec<String> = wanted
        .iter()
        .map(|(stream, sink)| format!("workers' {} {}", stream.name(), elsewhere(*stream, sink)))
        .collect();
    Err(format!("{}: no log file to read", places.join("; ")))
}

/// Where a stream that does not go to a file goes, for the message saying so.
fn elsewhere(stream: Stream, sink: &LogSink) -> String {
    let name = stream.name();
    match sink {
        LogSink::Inherit => format!(
            "goes where handover's own log goes: under systemd to the journal (read it with \
             `journalctl -u UNIT`, UNIT being handover's service), otherwise to handover's \
             own {name}"
        ),
        LogSink::Own => format!("goes to handover's own {name}"),
        LogSink::Null => "is discarded ([logs] says /dev/null)".into(),
        LogSink::File(path) => format!("goes to {}", path.display()),
    }
}

/// Runs `handover logs` on `[logs]` of the configuration read from `config_path`.
pub(crate) fn run(config_path: &Path, logs: &LogsConfig, options: &Options) -> ExitCode {
    let paths = match files(logs, options.filter.stream) {
        Ok(paths) => paths,
        Err(message) => {
            eprintln!("handover: {}: {message}", config_path.display());
            return ExitCode::from(exit::USAGE);
        }
    };
    if !logs.tag && !options.filter.is_all() {
        eprintln!(
            "handover: --worker and --stream need tagged lines, but {} sets tag = false in [logs]",
            config_path.display()
        );
        return ExitCode::from(exit::USAGE);
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(BLOCK, stdout.lock());
    let result = show(&paths, logs.tag, options, &mut out);
    ExitCode::from(match result {
        Ok(()) => exit::OK,
        Err(failure) => failure.report(),
    })
}

/// Prints the last lines of `paths`, then, with `--follow`, new lines until interrupted.
fn show(
    paths: &[PathBuf],
    tagged: bool,
    options: &Options,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut logs = Vec::new();
    for path in paths {
        let file = match open(path) {
            Ok(file) => Some(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound && options.follow => {
                eprintln!(
                    "handover: {} does not exist yet; waiting for it",
                    path.display()
                );
                None
            }
            Err(err) => return Err(Failure::Read(path.clone(), err)),
        };
        logs.push((path.as_path(), file));
    }
    let mut followers = Vec::new();
    let mut tails = Vec::new();
    for (path, file) in logs {
        let tail = match &file {
            Some(file) => {
                let len = file.metadata().map_err(Failure::read(path))?.len();
                tail(file, len, options.lines, &options.filter, BLOCK)
                    .map_err(Failure::read(path))?
            }
            None => Tail::default(),
        };
        followers.push(Follower::new(path, file, tail.end).map_err(Failure::read(path))?);
        tails.push(tail);
    }
    print_tails(&followers, tails, tagged, options.lines, out)?;
    out.flush().map_err(Failure::Write)?;
    if options.follow {
        follow(&mut followers, tagged, &options.filter, out)?;
    }
    Ok(())
}

/// Opens a log file for reading. Never blocks (on a FIFO put in its place), and refuses what
/// is not a regular file.
fn open(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// One line of a file, by its offsets (`end` is just after its newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    time: Option<[u8; TIME_LEN]>,
}

impl Span {
    fn new(start: u64, end: u64) -> Span {
        Span {
            start,
            end,
            time: None,
        }
    }
}

/// The last lines of a file.
#[derive(Debug, Default)]
struct Tail {
    /// Oldest first.
    spans: Vec<Span>,
    /// Just after the last newline: where following goes on (an unfinished last line is
    /// left for it).
    end: u64,
}

/// Finds the last `n` complete lines of the first `len` bytes of `file` that `filter` keeps,
/// reading backwards `block` bytes at a time until it has them or reaches the start.
fn tail(file: &File, len: u64, n: usize, filter: &Filter, block: usize) -> io::Result<Tail> {
    let mut found: Vec<Span> = Vec::new(); // newest first
    let mut buf = vec![0u8; block.max(1)];
    let mut end = None; // just after the last newline
    let mut pos = len; // what is before it is still to be read
    let mut line_end = len; // of the line whose start is being looked for
    while pos > 0 && (found.len() < n || end.is_none()) {
        let buf_start = pos.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(pos - buf_start) as usize];
        file.read_exact_at(chunk, buf_start)?;
        for i in (0..chunk.len()).rev() {
            if chunk[i] != b'\n' {
                continue;
            }
            let start = buf_start + i as u64 + 1;
            if end.is_none() {
                end = Some(start);
            } else {
                keep(
                    file,
                    filter,
                    Span::new(start, line_end),
                    chunk,
                    buf_start,
                    &mut found,
                )?;
            }
            line_end = start;
            if found.len() == n {
                break;
            }
        }
        pos = buf_start;
    }
    if pos == 0 && found.len() < n && end.is_some() {
        // The first line of the file, which no newline precedes.
        keep(file, filter, Span::new(0, line_end), &[], 0, &mut found)?;
    }
    found.reverse();
    Ok(Tail {
        spans: found,
        end: end.unwrap_or(0),
    })
}

/// Adds `span` to `found` if `filter` keeps it, reading its start from `buf` (which holds the
/// file from `buf_start` on) or else from the file.
fn keep(
    file: &File,
    filter: &Filter,
    mut span: Span,
    buf: &[u8],
    buf_start: u64,
    found: &mut Vec<Span>,
) -> io::Result<()> {
    let head_end = span.end.min(span.start + TAG_MAX as u64);
    let mut head = [0u8; TAG_MAX];
    let head = if span.start >= buf_start && head_end <= buf_start + buf.len() as u64 {
        &buf[(span.start - buf_start) as usize..(head_end - buf_start) as usize]
    } else {
        let head = &mut head[..(head_end - span.start) as usize];
        file.read_exact_at(head, span.start)?;
        &*head
    };
    if filter.keeps(head) {
        span.time = time_of(head);
        found.push(span);
    }
    Ok(())
}

/// Prints the last `n` lines: merged by time when there are two tagged files, else file after
/// file.
fn print_tails(
    followers: &[Follower],
    mut tails: Vec<Tail>,
    tagged: bool,
    n: usize,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let numbered = |index: usize, tail: Tail| -> Vec<([u8; TIME_LEN], (usize, Span))> {
        let times: Vec<_> = tail.spans.iter().map(|s| s.time).collect();
        fill_times(&times)
            .into_iter()
            .zip(tail.spans.into_iter().map(|span| (index, span)))
            .collect()
    };
    let lines: Vec<(usize, Span)> = if tagged && tails.len() == 2 {
        let b = tails.pop().unwrap_or_default();
        let a = tails.pop().unwrap_or_default();
        let merged = merge(numbered(0, a), numbered(1, b));
        let skip = merged.len().saturating_sub(n);
        merged.into_iter().skip(skip).collect()
    } else {
        tails
            .into_iter()
            .enumerate()
            .flat_map(|(index, tail)| tail.spans.into_iter().map(move |span| (index, span)))
            .collect()
    };
    let mut buf = vec![0u8; BLOCK];
    for (index, span) in lines {
        let follower = &followers[index];
        if let Some(file) = &follower.file {
            copy(file, &follower.path, span, &mut buf, out)?;
        }
    }
    Ok(())
}

/// Copies one line from `file` to `out`.
fn copy(
    file: &File,
    path: &Path,
    span: Span,
    buf: &mut [u8],
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut at = span.start;
    while at < span.end {
        let want = buf.len().min((span.end - at) as usize);
        let chunk = &mut buf[..want];
        file.read_exact_at(chunk, at).map_err(Failure::read(path))?;
        out.write_all(chunk).map_err(Failure::Write)?;
        at += want as u64;
    }
    Ok(())
}

/// Prints new lines as they are written, until interrupted (or stdout closes).
fn follow(
    followers: &mut [Follower],
    tagged: bool,
    filter: &Filter,
    out: &mut impl Write,
) -> Result<(), Failure> {
    loop {
        let mut more = false;
        let mut batches = Vec::new();
        for follower in followers.iter_mut() {
            let mut lines = Vec::new();
            more |= follower
                .step(&mut lines)
                .map_err(Failure::read(&follower.path))?;
            lines.retain(|line| filter.keeps(line));
            batches.push(lines);
        }
        for line in merge_batches(batches, tagged) {
            out.write_all(&line).map_err(Failure::Write)?;
        }
        out.flush().map_err(Failure::Write)?;
        if !more {
            std::thread::sleep(POLL);
        }
    }
}

/// New lines of each file, in one list: merged by time when there are two tagged files.
fn merge_batches(mut batches: Vec<Vec<Vec<u8>>>, tagged: bool) -> Vec<Vec<u8>> {
    let timed = |lines: Vec<Vec<u8>>| {
        let times: Vec<_> = lines.iter().map(|line| time_of(line)).collect();
        fill_times(&times)
            .into_iter()
            .zip(lines)
            .collect::<Vec<_>>()
    };
    if tagged && batches.len() == 2 {
        let b = batches.pop().unwrap_or_default();
        let a = batches.pop().unwrap_or_default();
        merge(timed(a), timed(b))
    } else {
        batches.into_iter().flatten().collect()
    }
}

/// Follows one path: reads what is appended to the file open there, and moves on to a new
/// file at the path when the old one was renamed or removed (rotation, SIGUSR1 reopen),
/// starting over when it is truncated (copytruncate).
#[derive(Debug)]
struct Follower {
    path: PathBuf,
    /// The file being read; `None` while the path has never existed.
    file: Option<File>,
    /// Device and inode of `file`.
    id: Option<(u64, u64)>,
    /// The next byte to read.
    offset: u64,
    /// The start of an unfinished line, waiting for its newline.
    partial: Vec<u8>,
    /// Within a line longer than [`MAX_HELD`], which is skipped.
    skipping: bool,
    /// When `file` was opened at the path: its rotated name will carry a later time.
    opened_at: u64,
}

impl Follower {
    /// Follows `path` from `offset` of `file`, the file open there (if any).
    fn new(path: &Path, file: Option<File>, offset: u64) -> io::Result<Follower> {
        let id = match &file {
            Some(file) => Some(identity(&file.metadata()?)),
            None => None,
        };
        Ok(Follower {
            path: path.to_path_buf(),
            file,
            id,
            offset,
            partial: Vec::new(),
            skipping: false,
            opened_at: time::now_ms(),
        })
    }

    /// Appends the lines completed since the last step to `lines`. Returns whether there is
    /// more to read right away (the file had more than one step's worth, or a new file
    /// replaced it).
    ///
    /// The file open is read to its end before the path is looked at again: a file renamed
    /// away is finished first (handover may write to it until it reopens), and the path's
    /// new file is only taken once a step finds nothing new in the old one. A path that is
    /// missing for a while keeps the old file.
    fn step(&mut self, lines: &mut Vec<Vec<u8>>) -> io::Result<bool> {
        if let Some(file) = &self.file {
            let len = file.metadata()?.len();
            if len < self.offset {
                // Truncated in place: what is there now was written from its start.
                self.restart();
            }
            let limit = len.min(self.offset + STEP_BYTES);
            let read = self.read(limit, lines)?;
            if read > 0 {
                return Ok(limit < len);
            }
        }
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        if self.id == Some(identity(&meta)) {
            return Ok(false);
        }
        let opened_at = time::now_ms();
        let file = match open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        if self.file.is_some() {
            self.catch_up(lines)?;
        }
        self.id = Some(identity(&file.metadata()?));
        self.file = Some(file);
        self.opened_at = opened_at;
        self.restart();
        Ok(true)
    }

    /// The file read so far was rotated, and handover may have rotated more than once
    /// since the last step: reads in full the rotated files that came after it, so no line
    /// is skipped. The file read so far is the first rotation since it was opened (or the
    /// one with its inode, while it is not compressed yet).
    fn catch_up(&mut self, lines: &mut Vec<Vec<u8>>) -> io::Result<()> {
        let rotated: Vec<Rotated> = rotated_files(&self.path)
            .into_iter()
            .filter(|r| r.stamp >= self.opened_at)
            .collect();
        let mine = rotated.iter().position(|r| {
            !r.compressed && std::fs::metadata(&r.path).is_ok_and(|m| Some(identity(&m)) == self.id)
        });
        let after = match mine {
            Some(i) => rotated[i].stamp,
            None => match rotated.first() {
                Some(first) => first.stamp,
                None => return Ok(()),
            },
        };
        let mut done = Vec::new();
        for r in rotated.iter().filter(|r| r.stamp > after) {
            if done.contains(&r.stamp) {
                continue;
            }
            done.push(r.stamp);
            let text = match read_rotated(r) {
                Ok(text) => text,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            self.partial.clear();
            self.skipping = false;
            for line in text.split_inclusive(|&b| b == b'\n') {
                if line.ends_with(b"\n") {
                    lines.push(line.to_vec());
                }
            }
        }
        Ok(())
    }

    /// Reads from the start of the file; an unfinished line of before is dropped.
    fn restart(&mut self) {
        self.offset = 0;
        self.partial.clear();
        self.skipping = false;
    }

    /// Reads up to `limit`, returning how many bytes it read.
    fn read(&mut self, limit: u64, lines: &mut Vec<Vec<u8>>) -> io::Result<u64> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let mut buf = vec![0u8; BLOCK];
        let start = self.offset;
        while self.offset < limit {
            let want = buf.len().min((limit - self.offset) as usize);
            let got = match file.read_at(&mut buf[..want], self.offset) {
                Ok(0) => break,
                Ok(got) => got,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            self.offset += got as u64;
            for piece in buf[..got].split_inclusive(|&b| b == b'\n') {
                let complete = piece.last() == Some(&b'\n');
                if self.skipping {
                    self.skipping = !complete;
                } else if complete {
                    self.partial.extend_from_slice(piece);
                    lines.push(std::mem::take(&mut self.partial));
                } else if self.partial.len() + piece.len() > MAX_HELD {
                    eprintln!(
                        "handover: {}: skipping a line longer than {} MiB",
                        self.path.display(),
                        MAX_HELD >> 20
                    );
                    self.partial = Vec::new();
                    self.skipping = true;
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
        }
        Ok(self.offset - start)
    }
}

/// The whole of a rotated file, decompressed; the `.gz` if compression renamed it meanwhile.
fn read_rotated(rotated: &Rotated) -> io::Result<Vec<u8>> {
    let gunzip = |path: &Path| -> io::Result<Vec<u8>> {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(File::open(path)?).read_to_end(&mut text)?;
        Ok(text)
    };
    if rotated.compressed {
        return gunzip(&rotated.path);
    }
    match std::fs::read(&rotated.path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut gz = rotated.path.clone().into_os_string();
            gz.push(".gz");
            gunzip(Path::new(&gz))
        }
        other => other,
    }
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "handover-logs-test-{}-{}-{name}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn append(path: &Path, data: &[u8]) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        file.write_all(data).unwrap();
    }

    fn line(time: &str, worker: u32, stream: &str, text: &str) -> String {
        format!(
            "2026-11-21T10:00:{time}Z gen=3 worker={worker} pid={} {stream}: {text}\n",
            1000 + worker
        )
    }

    fn tail_text(path: &Path, n: usize, filter: &Filter, block: usize) -> (Vec<String>, u64) {
        let file = open(path).unwrap();
        let len = file.metadata().unwrap().len();
        let tail = tail(&file, len, n, filter, block).unwrap();
        let lines = tail
            .spans
            .iter()
            .map(|s| {
                let mut buf = vec![0; (s.end - s.start) as usize];
                file.read_exact_at(&mut buf, s.start).unwrap();
                String::from_utf8(buf).unwrap()
            })
            .collect();
        (lines, tail.end)
    }

    /// The last `n` complete lines the simple way.
    fn naive(content: &str, n: usize) -> Vec<String> {
        let complete = &content[..content.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<String> = complete.split_inclusive('\n').map(String::from).collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    #[test]
    fn tail_across_block_boundaries() {
        let dir = TempDir::new("tail");
        let contents = [
            "",
            "\n",
            "\n\n\n",
            "one\n",
            "no newline",
            "one\ntwo\nthree\n",
            "one\ntwo\nunfinished",
            "\nstarts empty\n\nand has empty lines\n\n",
            "a line much longer than any block size used below, to span several\nx\n",
            "ends with a long unfinished line\nlonger than several of the blocks used below",
        ];
        for content in contents {
            let path = dir.file("log", content.as_bytes());
            for block in [1, 2, 3, 5, 7, 16, 64, BLOCK] {
                for n in 0..8 {
                    let (lines, end) = tail_text(&path, n, &Filter::default(), block);
                    assert_eq!(lines, naive(content, n), "{content:?} block {block} n {n}");
                    // Where following goes on, also with -n 0.
                    let expected_end = content.rfind('\n').map_or(0, |i| i + 1) as u64;
                    assert_eq!(end, expected_end, "{content:?} block {block} n {n}");
                }
            }
        }
    }

    #[test]
    fn tail_reads_invalid_utf8_and_long_lines_as_bytes() {
        let dir = TempDir::new("bytes");
        let mut content = vec![0xff, 0xfe, 0, b'\n'];
        content.extend(std::iter::repeat_n(b'x', 3 * BLOCK + 17));
        content.push(b'\n');
        let path = dir.file("log", &content);
        let file = open(&path).unwrap();
        let tail = tail(&file, content.len() as u64, 5, &Filter::default(), BLOCK).unwrap();
        let mut out = Vec::new();
        let follower = Follower::new(&path, Some(file), tail.end).unwrap();
        print_tails(&[follower], vec![tail], false, 5, &mut out).unwrap();
        assert_eq!(out, content);
    }

    #[test]
    fn filters_keep_matching_tags_only() {
        let all = Filter::default();
        let worker1 = Filter {
            worker: Some(1),
            stream: None,
        };
        let stderr = Filter {
            worker: None,
            stream: Some(Stream::Stderr),
        };
        let both = Filter {
            worker: Some(1),
            stream: Some(Stream::Stderr),
        };
        let cases = [
            (line("00.000", 1, "stdout", "a"), [true, true, false, false]),
            (line("00.000", 1, "stderr", "a"), [true, true, true, true]),
            (
                line("00.000", 11, "stderr", "worker=1 stderr: "),
                [true, false, true, false],
            ),
            (
                "untagged worker=1 stderr: x\n".to_string(),
                [true, false, false, false],
            ),
        ];
        for (text, expected) in cases {
            let got = [&all, &worker1, &stderr, &both].map(|f| f.keeps(text.as_bytes()));
            assert_eq!(got, expected, "{text:?}");
        }
    }

    #[test]
    fn filters_apply_before_taking_the_last_lines() {
        let dir = TempDir::new("filter");
        let mut content = String::new();
        content.push_str(&line("00.000", 1, "stdout", "early one"));
        content.push_str(&line("00.001", 1, "stderr", "early two"));
        for i in 0..500 {
            content.push_str(&line(&format!("01.{i:03}"), 0, "stdout", "noise"));
        }
        content.push_str(&line("02.000", 1, "stdout", "late"));
        let path = dir.file("log", content.as_bytes());
        let worker1 = Filter {
            worker: Some(1),
            stream: None,
        };
        let (lines, _) = tail_text(&path, 3, &worker1, 64);
        assert_eq!(
            lines,
            [
                line("00.000", 1, "stdout", "early one"),
                line("00.001", 1, "stderr", "early two"),
                line("02.000", 1, "stdout", "late")
            ]
        );
        let (lines, _) = tail_text(&path, 1, &worker1, 64);
        assert_eq!(lines, [line("02.000", 1, "stdout", "late")]);
        let stderr = Filter {
            worker: None,
            stream: Some(Stream::Stderr),
        };
        let (lines, _) = tail_text(&path, 10, &stderr, 7);
        assert_eq!(lines, [line("00.001", 1, "stderr", "early two")]);
        let none = Filter {
            worker: Some(9),
            stream: None,
        };
        assert!(tail_text(&path, 10, &none, 64).0.is_empty());
    }

    #[test]
    fn two_tagged_files_merge_by_time() {
        let dir = TempDir::new("merge");
        let out = [
            line("00.000", 0, "stdout", "o1"),
            line("00.002", 0, "stdout", "o2"),
            line("00.002", 0, "stdout", "o3"),
            line("00.005", 0, "stdout", "o4"),
        ]
        .concat();
        let err = [
            line("00.001", 0, "stderr", "e1"),
            line("00.002", 0, "stderr", "e2"),
            "untagged x\n".to_string(),
            line("00.004", 0, "stderr", "e3"),
            line("00.006", 0, "stderr", "e4"),
        ]
        .concat();
        let paths = [
            dir.file("out.log", out.as_bytes()),
            dir.file("err.log", err.as_bytes()),
        ];
        let print = |n: usize, tagged: bool| {
            let options = Options {
                follow: false,
                lines: n,
                filter: Filter::default(),
            };
            let mut printed = Vec::new();
            show(&paths, tagged, &options, &mut printed).unwrap();
            String::from_utf8(printed).unwrap()
        };
        let texts = |printed: String| -> Vec<String> {
            printed
                .lines()
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            texts(print(20, true)),
            ["o1", "e1", "o2", "o3", "e2", "x", "e3", "o4", "e4"]
        );
        assert_eq!(texts(print(5, true)), ["e2", "x", "e3", "o4", "e4"]);
        assert_eq!(texts(print(1, true)), ["e4"]);
        assert_eq!(print(0, true), "");
        // Untagged: each file's last lines, file after file.
        assert_eq!(texts(print(2, false)), ["o3", "o4", "e3", "e4"]);
    }

    #[test]
    fn merge_keeps_each_list_in_order() {
        let t = |s: &str| -> [u8; TIME_LEN] {
            format!("2026-11-21T10:00:{s}Z")
                .into_bytes()
                .try_into()
                .unwrap()
        };
        let a = vec![(t("00.000"), "a1"), (t("00.003"), "a2")];
        let b = vec![
            (t("00.000"), "b1"),
            (t("00.001"), "b2"),
            (t("00.009"), "b3"),
        ];
        assert_eq!(merge(a, b), ["a1", "b1", "b2", "a2", "b3"]);
        assert_eq!(
            merge(Vec::<([u8; TIME_LEN], u8)>::new(), vec![(t("00.000"), 1)]),
            [1]
        );
        assert_eq!(
            fill_times(&[None, Some(t("00.005")), None, Some(t("00.001")), None]),
            [
                t("00.005"),
                t("00.005"),
                t("00.005"),
                t("00.001"),
                t("00.001")
            ]
        );
        assert_eq!(fill_times(&[None]), [[0; TIME_LEN]]);
    }

    /// Steps until a step finds nothing new, as `--follow` does between two sleeps.
    fn step(follower: &mut Follower) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let before = lines.len();
            let more = follower.step(&mut lines).unwrap();
            if !more && lines.len() == before {
                break;
            }
        }
        lines
            .into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    fn follower_at_end(path: &Path) -> Follower {
        let file = open(path).unwrap();
        let len = file.metadata().unwrap().len();
        let end = tail(&file, len, 1, &Filter::default(), BLOCK).unwrap().end;
        Follower::new(path, Some(file), end).unwrap()
    }

    #[test]
    fn follow_holds_unfinished_lines() {
        let dir = TempDir::new("partial");
        let path = dir.file("log", b"old\nunfin");
        let mut follower = follower_at_end(&path);
        assert!(step(&mut follower).is_empty());
        append(&path, b"ished\nnext");
        assert_eq!(step(&mut follower), ["unfinished\n"]);
        append(&path, b" one\n\n");
        assert_eq!(step(&mut follower), ["next one\n", "\n"]);
        assert!(step(&mut follower).is_empty());
    }

    #[test]
    fn follow_finishes_a_rotated_file_then_reads_the_new_one() {
        let dir = TempDir::new("rotate");
        let path = dir.file("log", b"one\n");
        let mut follower = follower_at_end(&path);
        append(&path, b"two\n");
        let rotated = dir.0.join("log.2026-11-21T10-00-00.000Z");
        std::fs::rename(&path, &rotated).unwrap();
        // Written to the renamed file before the writer reopens (logrotate's create mode).
        append(&rotated, b"three\n");
        let mut lines = Vec::new();
        assert!(!follower.step(&mut lines).unwrap());
        assert_eq!(lines, [b"two\n".to_vec(), b"three\n".to_vec()]);
        // The path is missing for a while: the old file is kept.
        assert!(step(&mut follower).is_empty());
        append(&rotated, b"four\n");
        assert_eq!(step(&mut follower), ["four\n"]);
        // The new file is taken once the old one has nothing new.
        append(&path, b"five\n");
        append(&rotated, b"late\n");
        assert_eq!(step(&mut follower), ["late\n", "five\n"]);
        append(&path, b"six\n");
        assert_eq!(step(&mut follower), ["six\n"]);
        // Removed and created again (a SIGUSR1 reopen after the file was deleted).
        std::fs::remove_file(&rotated).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(step(&mut follower).is_empty());
        append(&path, b"seven\n");
        assert_eq!(step(&mut follower), ["seven\n"]);
    }

    #[test]
    fn follow_starts_over_after_truncation() {
        let dir = TempDir::new("truncate");
        let path = dir.file("log", b"one\ntwo\n");
        let mut follower = follower_at_end(&path);
        append(&path, b"three\nunfinished");
        assert_eq!(step(&mut follower), ["three\n"]);
        // copytruncate: copied away, then emptied in place.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(step(&mut follower).is_empty());
        append(&path, b"four\n");
        assert_eq!(step(&mut follower), ["four\n"]);
        // Truncated and written again between two steps, to less than was read.
        std::fs::write(&path, b"x\n").unwrap();
        assert_eq!(step(&mut follower), ["x\n"]);
    }

    #[test]
    fn follow_waits_for_a_missing_file() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("log");
        let mut follower = Follower::new(&path, None, 0).unwrap();
        assert!(step(&mut follower).is_empty());
        append(&path, b"first\n");
        assert_eq!(step(&mut follower), ["first\n"]);
    }

    #[test]
    fn follow_skips_a_line_too_long_to_hold() {
        let dir = TempDir::new("long");
        let path = dir.file("log", b"");
        let mut follower = follower_at_end(&path);
        append(&path, &vec![b'x'; MAX_HELD + 10]);
        assert!(step(&mut follower).is_empty());
        append(&path, b"xxx\nnext\n");
        assert_eq!(step(&mut follower), ["next\n"]);
    }

    #[test]
    fn merge_batches_orders_new_lines_of_two_files() {
        let a = vec![
            line("00.001", 0, "stdout", "a").into_bytes(),
            line("00.004", 0, "stdout", "b").into_bytes(),
        ];
        let b = vec![line("00.002", 0, "stderr", "c").into_bytes()];
        let texts =
            |lines: Vec<Vec<u8>>| -> Vec<u8> { lines.iter().map(|l| l[l.len() - 2]).collect() };
        assert_eq!(
            texts(merge_batches(vec![a.clone(), b.clone()], true)),
            b"acb"
        );
        assert_eq!(texts(merge_batches(vec![a, b], false)), b"abc");
    }

    #[test]
    fn files_are_the_distinct_file_sinks() {
        let file = |p: &str| LogSink::File(PathBuf::from(p));
        let logs = |stdout, stderr| LogsConfig {
            stdout,
            stderr,
            ..LogsConfig::default()
        };
        let both = logs(file("/l/a.log"), file("/l/a.log"));
        assert_eq!(files(&both, None).unwrap(), [PathBuf::from("/l/a.log")]);
        let two = logs(file("/l/a.log"), file("/l/b.log"));
        assert_eq!(
            files(&two, None).unwrap(),
            [PathBuf::from("/l/a.log"), PathBuf::from("/l/b.log")]
        );
        assert_eq!(
            files(&two, Some(Stream::Stderr)).unwrap(),
            [PathBuf::from("/l/b.log")]
        );
        let none = logs(LogSink::Inherit, LogSink::Null);
        let message = files(&none, None).unwrap_err();
        assert!(message.contains("journalctl -u UNIT"), "{message}");
        assert!(message.contains("stderr is discarded"), "{message}");
        let half = logs(file("/l/a.log"), LogSink::Own);
        assert_eq!(files(&half, None).unwrap(), [PathBuf::from("/l/a.log")]);
        let message = files(&half, Some(Stream::Stderr)).unwrap_err();
        assert!(message.contains("handover's own stderr"), "{message}");
    }

    #[test]
    fn errors_name_the_file_and_a_closed_stdout_is_fine() {
        let dir = TempDir::new("errors");
        let options = Options {
            follow: false,
            lines: 20,
            filter: Filter::default(),
        };
        let missing = dir.0.join("missing.log");
        match show(
            std::slice::from_ref(&missing),
            true,
            &options,
            &mut Vec::new(),
        ) {
            Err(Failure::Read(path, err)) => {
                assert_eq!(path, missing);
                assert_eq!(err.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        match show(
            std::slice::from_ref(&dir.0),
            true,
            &options,
            &mut Vec::new(),
        ) {
            Err(Failure::Read(path, _)) => assert_eq!(path, dir.0),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Failure::Write(io::ErrorKind::BrokenPipe.into()).report(),
            exit::OK
        );
        assert_eq!(
            Failure::Write(io::ErrorKind::StorageFull.into()).report(),
            exit::IO
        );
    }
}
