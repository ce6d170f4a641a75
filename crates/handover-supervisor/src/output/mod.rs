//! Workers' stdout and stderr: split into lines, tagged, escaped, and sent to their
//! destinations (the journal, handover's own stdout or stderr, files, or nowhere).
//!
//! The supervisor's loop only formats lines into in-memory buffers; writing happens in a
//! thread per destination ([`writer`]), so a slow or full disk never holds up the loop, and
//! through it the workers, whose pipes the loop keeps draining.

mod file;
pub mod time;
mod writer;

use std::io::Write as _;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use file::{rotated_files, Rotated, Rotation};
use writer::{Target, Writer};

/// Appended to every piece of a split line but the last.
pub const CONTINUES: &[u8] = b" [continues]";

pub use handover_proto::logtag::Stream;

/// Where one stream goes, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Where handover's own log goes: the journal when handover logs there, else as [`Sink::Own`].
    Inherit,
    /// handover's own stdout (for stdout) or stderr (for stderr), tagged.
    Own,
    /// Nowhere.
    Null,
    /// A file.
    File(PathBuf),
}

/// The `[logs]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    /// Workers' stdout.
    pub stdout: Sink,
    /// Workers' stderr.
    pub stderr: Sink,
    /// Tag lines in files.
    pub tag: bool,
    /// Longest line passed on; longer ones are split.
    pub max_line: usize,
    /// Rotation of files.
    pub rotation: Rotation,
    /// Bytes waiting per destination beyond which lines are dropped.
    pub buffer: usize,
    /// handover logs to the journal (so `Inherit` means the journal).
    pub journal: bool,
    /// How lines on handover's own stdout and stderr look.
    pub format: handover_proto::logline::Format,
}

impl Default for OutputConfig {
    fn default() -> OutputConfig {
        OutputConfig {
            stdout: Sink::Inherit,
            stderr: Sink::Inherit,
            tag: true,
            max_line: 16 * 1024,
            rotation: Rotation {
                max_size: 10 << 20,
                keep: 10,
                compress: true,
            },
            buffer: 1 << 20,
            journal: false,
            format: handover_proto::logline::Format::Text,
        }
    }
}

/// A destination could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot open {}: {source}", path.display())]
pub struct OpenError {
    /// `logs.stdout` or `logs.stderr`.
    pub key: &'static str,
    /// The path, or what stood for it.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// How lines of one stream are written.
#[derive(Debug)]
enum Route {
    Null,
    Journal(Arc<Writer>),
    Tagged(Arc<Writer>),
    Raw(Arc<Writer>),
    /// One logfmt (or, when set, JSON) record per line, on handover's stdout or stderr.
    Record(Arc<Writer>, bool),
}

/// Who wrote a line.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The worker's generation.
    pub generation: u64,
    /// Its index in the generation.
    pub index: u32,
    /// Its pid (0 if unknown).
    pub pid: i32,
    /// Its program (`argv[0]`), for the journal's identifier.
    pub program: &'a [u8],
}

/// Every destination of workers' output.
#[derive(Debug)]
pub struct Output {
    stdout: Route,
    stderr: Route,
    max_line: usize,
    /// Each distinct writer once, for reopen, status and finish.
    writers: Vec<(Arc<Writer>, bool)>,
    /// The last tag time written, and its text: a flood writes many lines per millisecond.
    clock: std::sync::Mutex<(u64, String)>,
}

impl Output {
    /// Opens every destination and starts their threads.
    pub fn open(config: &OutputConfig) -> Result<Output, OpenError> {
        let mut writers = Vec::new();
        let stdout = route(
            config,
            &mut writers,
            "logs.stdout",
            &config.stdout,
            Stream::Stdout,
        )?;
        let stderr = route(
            config,
            &mut writers,
            "logs.stderr",
            &config.stderr,
            Stream::Stderr,
        )?;
        Ok(Output {
            stdout,
            stderr,
            max_line: config.max_line,
            writers,
            clock: std::sync::Mutex::new((u64::MAX, String::new())),
        })
    }

    /// Whether workers' stdout is thrown away (then it is `/dev/null` itself, not a pipe).
    pub fn stdout_is_null(&self) -> bool {
        matches!(self.stdout, Route::Null)
    }

    /// The longest line passed on.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Passes on one line (without its newline; `continues` for a piece of a longer line).
    pub fn line(&self, stream: Stream, origin: &Origin<'_>, text: &[u8], continues: bool) {
        let route = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        match route {
            Route::Null => {}
            Route::Raw(writer) => writer.push(|buf| {
                buf.extend_from_slice(text);
                if continues {
                    buf.extend_from_slice(CONTINUES);
                }
                buf.push(b'\n');
            }),
            Route::Tagged(writer) => writer.push(|buf| {
                let ms = time::now_ms();
                let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
                if clock.0 != ms {
                    *clock = (ms, time::rfc3339(ms));
                }
                handover_proto::logtag::write(
                    buf,
                    &clock.1,
                    origin.generation,
                    origin.index,
                    origin.pid,
                    stream,
                );
                drop(clock);
                escape(buf, text);
                if continues {
                    buf.extend_from_slice(CONTINUES);
                }
                buf.push(b'\n');
            }),
            Route::Journal(writer) => writer.push(|buf| {
                journal_entry(buf, origin, stream, text, continues);
            }),
            Route::Record(writer, json) => writer.push(|buf| {
                let ms = time::now_ms();
                let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
                if clock.0 != ms {
                    *clock = (ms, time::rfc3339(ms));
                }
                let mut record = handover_proto::logline::Record::start(buf, *json);
                record.text("time", clock.1.as_bytes());
                drop(clock);
                record
                    .text("stream", stream.name().as_bytes())
                    .text("msg", text)
                    .number("generation", origin.generation)
                    .number("worker", origin.index)
                    .number("pid", origin.pid);
                if continues {
                    record.boolean("continues", true);
                }
                record.finish();
            }),
        }
    }

    /// Queues a line of handover's own log (formatted, newline included) behind workers'
    /// output on handover's stdout (`stdout`) or stderr, so the two keep their order. Returns
    /// false when workers' output does not go there; the caller then writes it itself.
    pub fn own_text(&self, stdout: bool, line: &[u8]) -> bool {
        let Some(writer) = self.writer(if stdout { "stdout" } else { "stderr" }) else {
            return false;
        };
        writer.push(|buf| buf.extend_from_slice(line));
        true
    }

    /// Queues a native journal entry of handover's own behind workers' entries. Returns false
    /// when workers' output does not go to the journal.
    pub fn own_journal_entry(&self, entry: &[u8]) -> bool {
        let Some(writer) = self.writer("journal") else {
            return false;
        };
        writer.push(|buf| {
            buf.extend_from_slice(&(entry.len() as u32).to_ne_bytes());
            buf.extend_from_slice(entry);
        });
        true
    }

    /// The writer of a destination by name (`stdout`, `stderr`, `journal`; files by their
    /// absolute path, so no file can take one of those names).
    fn writer(&self, name: &str) -> Option<&Arc<Writer>> {
        self.writers
            .iter()
            .map(|(writer, _)| writer)
            .find(|writer| writer.name() == name)
    }

    /// Opens every file again (SIGUSR1). Returns whether there is any file.
    pub fn reopen(&self) -> bool {
        let mut any = false;
        for (writer, is_file) in &self.writers {
            if *is_file {
                writer.reopen();
                any = true;
            }
        }
        any
    }

    /// Each file: its path, lines dropped and rotations, for `status`.
    pub fn status(&self) -> Vec<handover_proto::status::LogFileStatus> {
        self.writers
            .iter()
            .filter(|(_, is_file)| *is_file)
            .map(|(writer, _)| {
                let (dropped, rotations) = writer.counters();
                handover_proto::status::LogFileStatus {
                    path: writer.name().to_string(),
                    dropped,
                    rotations,
                }
            })
            .collect()
    }

    /// Writes out what is buffered; waits at most `within` in all.
    pub fn finish(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        for (writer, _) in &self.writers {
            writer.finish(deadline.saturating_duration_since(std::time::Instant::now()));
        }
    }
}

/// How `stream` goes to `sink`. Destinations are shared: both streams naming one file, or
/// both going to the journal, use one writer (`writers` holds each once, with whether it is
/// a file).
fn route(
    config: &OutputConfig,
    writers: &mut Vec<(Arc<Writer>, bool)>,
    key: &'static str,
    sink: &Sink,
    stream: Stream,
) -> Result<Route, OpenError> {
    let (name, is_file) = match sink {
        Sink::Null => return Ok(Route::Null),
        Sink::Inherit if config.journal => ("journal".to_string(), false),
        Sink::Inherit | Sink::Own => (stream.name().to_string(), false),
        Sink::File(path) => (path.display().to_string(), true),
    };
    let writer = match writers.iter().find(|(w, _)| w.name() == name) {
        Some((writer, _)) => writer.clone(),
        None => {
            let target = match sink {
                Sink::File(path) => file::LogFile::open(path, config.rotation).map(Target::File),
                _ if config.journal && *sink == Sink::Inherit => Target::journal(),
                _ => match stream {
                    Stream::Stdout => std::io::stdout().as_fd().try_clone_to_owned(),
                    Stream::Stderr => std::io::stderr().as_fd().try_clone_to_owned(),
                }
                .map(|fd| Target::Stream(std::fs::File::from(fd))),
            };
            let failed = |source| OpenError {
                key,
                path: PathBuf::from(&name),
                source,
            };
            let writer = Arc::new(
                Writer::start(name.clone(), config.buffer, target.map_err(failed)?)
                    .map_err(failed)?,
            );
            writers.push((writer.clone(), is_file));
            writer
        }
    };
    use handover_proto::logline::Format;
    Ok(match sink {
        Sink::File(_) if !config.tag => Route::Raw(writer),
        Sink::File(_) => Route::Tagged(writer),
        Sink::Inherit if config.journal => Route::Journal(writer),
        _ => match config.format {
            Format::Text => Route::Tagged(writer),
            Format::Logfmt => Route::Record(writer, false),
            Format::Json => Route::Record(writer, true),
        },
    })
}

/// Appends `text` as printable UTF-8: control characters other than tab, DEL, and bytes
/// that are not UTF-8 become `\xNN`.
pub fn escape(buf: &mut Vec<u8>, text: &[u8]) {
    let plain = |b: u8| b == b'\t' || (0x20..0x7f).contains(&b);
    if text.iter().all(|&b| plain(b)) {
        buf.extend_from_slice(text);
        return;
    }
    let hex = |buf: &mut Vec<u8>, b: u8| {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        buf.extend_from_slice(&[
            b'\\',
            b'x',
            DIGITS[(b >> 4) as usize],
            DIGITS[(b & 15) as usize],
        ]);
    };
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' && (c as u32) < 0x80 {
                hex(buf, c as u8);
            } else if c.is_control() && c != '\t' {
                // C1 controls (U+0080..U+009F) act as escape sequences on some terminals.
                let mut bytes = [0u8; 4];
                for &b in c.encode_utf8(&mut bytes).as_bytes() {
                    hex(buf, b);
                }
            } else {
                let mut bytes = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut bytes).as_bytes());
            }
        }
        for &b in chunk.invalid() {
            hex(buf, b);
        }
    }
}

/// One journal entry in the native protocol (`KEY=value` lines; values never hold a newline
/// here), preceded by its length for the writer.
fn journal_entry(
    buf: &mut Vec<u8>,
    origin: &Origin<'_>,
    stream: Stream,
    text: &[u8],
    continues: bool,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let program = Path::new(std::ffi::OsStr::from_bytes(origin.program))
        .file_name()
        .map_or(&b"worker"[..], |name| name.as_bytes());
    buf.extend_from_slice(b"PRIORITY=6\nSYSLOG_IDENTIFIER=");
    escape(buf, program);
    let _ = write!(
        buf,
        "\nSYSLOG_PID={pid}\nHANDOVER_GENERATION={}\nHANDOVER_WORKER={}\nHANDOVER_PID={pid}\n\
         HANDOVER_STREAM={}\nMESSAGE=",
        origin.generation,
        origin.index,
        stream.name(),
        pid = origin.pid,
    );
    escape(buf, text);
    if continues {
        buf.extend_from_slice(CONTINUES);
    }
    buf.push(b'\n');
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug, Default)]
pub struct Lines {
    /// The unfinished line: at most `max` bytes.
    partial: Vec<u8>,
}

impl Lines {
    /// Feeds bytes; calls `emit(line, continues)` for each complete line (without its
    /// newline) and for each `max`-byte piece of a longer one (`continues` set).
    pub fn push(&mut self, mut bytes: &[u8], max: usize, mut emit: impl FnMut(&[u8], bool)) {
        let max = max.max(1);
        loop {
            if self.partial.len() >= max {
                // A full piece: the next byte says whether the line ends here.
                match bytes.first() {
                    None => return,
                    Some(b'\n') => {
                        emit(&self.partial, false);
                        bytes = &bytes[1..];
                    }
                    Some(_) => emit(&self.partial, true),
                }
                self.partial.clear();
                continue;
            }
            if bytes.is_empty() {
                return;
            }
            let room = max - self.partial.len();
            let window = &bytes[..room.min(bytes.len())];
            if let Some(i) = window.iter().position(|&b| b == b'\n') {
                if self.partial.is_empty() {
                    emit(&window[..i], false);
                } else {
                    self.partial.extend_from_slice(&window[..i]);
                    emit(&self.partial, false);
                    self.partial.clear();
                }
                bytes = &bytes[i + 1..];
            } else if self.partial.is_empty() && bytes.len() > room {
                // A whole piece in hand, and the byte after it: no copy needed.
                let ends = bytes[room] == b'\n';
                emit(window, !ends);
                bytes = &bytes[room + usize::from(ends)..];
            } else {
                self.partial.extend_from_slice(window);
                bytes = &bytes[window.len()..];
            }
        }
    }

    /// At end of file: the unfinished line, if any.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(&self.partial, false);
            self.partial = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests;
