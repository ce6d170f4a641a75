//! handover's own log: text on stderr (or stdout), or native journal entries.
//!
//! Workers' lines reach the same destinations through the writer threads of `[logs]`
//! (`handover_supervisor::output`). Once those exist ([`Routing`]), handover's own lines
//! for a shared destination are queued behind them in the same writer, so the lines a worker
//! wrote before it exited always come before handover's "worker stopped", and the event
//! loop never waits for a slow journal or terminal. Before that, and after the [`Routing`]
//! guard is dropped, lines are written directly.

use std::io::Write as _;
use std::sync::{Arc, RwLock};

use handover_supervisor::Output;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::config::LogFormat;
use crate::env::Environment;
use crate::journal_stream;

/// Whether handover's own lines are logfmt or JSON records ([`init`] said so).
static STRUCTURED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether handover's own lines are logfmt or JSON records: then nothing else may write a
/// plain line to its stdout or stderr.
pub(crate) fn structured() -> bool {
    STRUCTURED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where lines go while the workers' writers run.
static ROUTE: RwLock<Option<Arc<Output>>> = RwLock::new(None);

/// While it lives, lines for a destination that workers' output shares go through that
/// output's writers. Dropped, it writes directly again and lets the writers finish (at most
/// 5 s), so every line queued so far, handover's and workers', is written.
pub(crate) struct Routing(Arc<Output>);

impl Routing {
    pub(crate) fn start(output: Arc<Output>) -> Routing {
        *ROUTE.write().unwrap_or_else(|p| p.into_inner()) = Some(output.clone());
        Routing(output)
    }
}

impl Drop for Routing {
    fn drop(&mut self) {
        // First: the writers' threads stop, and a line for them now would be lost.
        *ROUTE.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.0.finish(std::time::Duration::from_secs(5));
    }
}

fn routed(send: impl FnOnce(&Output) -> bool) -> bool {
    // Cloned out of the lock: queueing a line can log (a full buffer says so), and that
    // line must not take the lock again while it is held.
    let output = ROUTE.read().unwrap_or_else(|p| p.into_inner()).clone();
    output.is_some_and(|output| send(&output))
}

/// Sets up logging; returns whether it goes to the journal natively (then workers' output
/// goes there too, as entries of their own).
///
/// Text lines that go to the journal stream anyway (`--log-to-stdout` under systemd, or a
/// journal whose socket cannot be used) carry no time: the journal adds its own.
///
/// With `format` logfmt or JSON, every text line is one record of that format instead (see
/// [`Structured`]).
pub(crate) fn init(environment: &Environment, log_to_stdout: bool, format: LogFormat) -> bool {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter =
        || EnvFilter::try_from_env("HANDOVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let output = if log_to_stdout {
        journal_stream::Output::Stdout
    } else {
        journal_stream::Output::Stderr
    };
    let to_journal_stream = journal_stream::is_journal(environment, output);
    if !log_to_stdout && to_journal_stream {
        if let Ok(journal) = Journal::new() {
            if tracing_subscriber::registry()
                .with(filter())
                .with(journal)
                .try_init()
                .is_ok()
            {
                return true;
            }
        }
    }
    if format != LogFormat::Text {
        STRUCTURED.store(true, std::sync::atomic::Ordering::Relaxed);
        let layer = Structured {
            stdout: log_to_stdout,
            json: format == LogFormat::Json,
        };
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(layer)
            .try_init();
        return false;
    }
    let builder = fmt()
        .with_env_filter(filter())
        .with_target(false)
        .with_ansi(false);
    let writer = move || Text {
        stdout: log_to_stdout,
        line: Vec::new(),
    };
    let _ = if to_journal_stream {
        builder.without_time().with_writer(writer).try_init()
    } else {
        builder.with_writer(writer).try_init()
    };
    false
}

/// One formatted event on its way to stderr or stdout, sent whole when dropped.
struct Text {
    stdout: bool,
    line: Vec<u8>,
}

impl std::io::Write for Text {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Text {
    fn drop(&mut self) {
        if self.line.is_empty() || routed(|o| o.own_text(self.stdout, &self.line)) {
            return;
        }
        let _ = if self.stdout {
            std::io::stdout().lock().write_all(&self.line)
        } else {
            std::io::stderr().lock().write_all(&self.line)
        };
    }
}

/// handover's own events as logfmt or JSON records, one line each: `time` (UTC, with
/// milliseconds), `level`, `msg`, then the event's fields by their names. Written like the
/// text lines: queued behind workers' lines where they share the stream.
struct Structured {
    stdout: bool,
    json: bool,
}

impl<S: Subscriber> Layer<S> for Structured {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let line = structured_line(event, self.json);
        if routed(|o| o.own_text(self.stdout, &line)) {
            return;
        }
        let _ = if self.stdout {
            std::io::stdout().lock().write_all(&line)
        } else {
            std::io::stderr().lock().write_all(&line)
        };
    }
}

/// One event as a record of its own line.
fn structured_line(event: &Event<'_>, json: bool) -> Vec<u8> {
    let mut collected = Collected::default();
    event.record(&mut collected);
    let time =
        handover_supervisor::output::time::rfc3339(handover_supervisor::output::time::now_ms());
    let level = match *event.metadata().level() {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    };
    let mut line = Vec::with_capacity(128);
    let mut record = handover_proto::logline::Record::start(&mut line, json);
    record
        .text("time", time.as_bytes())
        .text("level", level.as_bytes())
        .text("msg", collected.message.as_bytes());
    for (name, value) in &collected.fields {
        match value {
            Value::Text(text) => record.text(name, text.as_bytes()),
            Value::Number(n) => record.number(name, *n),
            Value::Bool(b) => record.boolean(name, *b),
        };
    }
    record.finish();
    line
}

/// A field's value, kept typed so that numbers stay numbers in JSON.
enum Value {
    Text(String),
    Number(i128),
    Bool(bool),
}

/// An event's message and fields, in the order they were given.
#[derive(Default)]
struct Collected {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Collected {
    fn record_str(&mut self, f: &Field, value: &str) {
        if f.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((f.name(), Value::Text(value.to_string())));
        }
    }

    fn record_i64(&mut self, f: &Field, value: i64) {
        self.fields.push((f.name(), Value::Number(value.into())));
    }

    fn record_u64(&mut self, f: &Field, value: u64) {
        self.fields.push((f.name(), Value::Number(value.into())));
    }

    fn record_bool(&mut self, f: &Field, value: bool) {
        self.fields.push((f.name(), Value::Bool(value)));
    }

    fn record_debug(&mut self, f: &Field, value: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((f.name(), Value::Text(format!("{value:?}"))));
        }
    }
}

/// Where journald takes native-protocol entries.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Native journal entries for handover's own events: `MESSAGE`, `PRIORITY`,
/// `SYSLOG_IDENTIFIER=handover`, the code location, and each field as `HANDOVER_<NAME>`.
struct Journal {
    socket: std::os::unix::net::UnixDatagram,
}

impl Journal {
    fn new() -> std::io::Result<Journal> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.connect(JOURNAL_SOCKET)?;
        Ok(Journal { socket })
    }

    /// Sends an entry directly; one too large for a datagram goes through a sealed memfd.
    fn send(&self, entry: &[u8]) {
        match self.socket.send(entry) {
            Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
                use std::os::fd::AsFd;
                let _ = handover_sys::journal::send_sealed(
                    self.socket.as_fd(),
                    JOURNAL_SOCKET.as_ref(),
                    entry,
                );
            }
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for Journal {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let priority = match *meta.level() {
            Level::ERROR => "3",
            Level::WARN => "4",
            Level::INFO => "5",
            Level::DEBUG => "6",
            Level::TRACE => "7",
        };
        let mut entry = Vec::with_capacity(256);
        field(&mut entry, "PRIORITY", priority.as_bytes());
        field(&mut entry, "SYSLOG_IDENTIFIER", b"handover");
        field(&mut entry, "TARGET", meta.target().as_bytes());
        if let Some(file) = meta.file() {
            field(&mut entry, "CODE_FILE", file.as_bytes());
        }
        if let Some(line) = meta.line() {
            field(&mut entry, "CODE_LINE", line.to_string().as_bytes());
        }
        event.record(&mut Fields(&mut entry));
        if !routed(|o| o.own_journal_entry(&entry)) {
            self.send(&entry);
        }
    }
}

/// Appends `NAME=value`, or the binary form (`NAME`, newline, length, value) for a value
/// with a newline, as the native protocol has it.
fn field(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

/// Records an event's fields into a journal entry.
struct Fields<'a>(&'a mut Vec<u8>);

impl Fields<'_> {
    fn put(&mut self, field_name: &str, value: &[u8]) {
        if field_name == "message" {
            field(self.0, "MESSAGE", value);
            return;
        }
        // Journal field names: upper-case letters, digits and underscores.
        let mut name = String::from("HANDOVER_");
        name.extend(field_name.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
        field(self.0, &name, value);
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, value: &str) {
        self.put(f.name(), value.as_bytes());
    }

    fn record_i64(&mut self, f: &Field, value: i64) {
        self.put(f.name(), value.to_string().as_bytes());
    }

    fn record_u64(&mut self, f: &Field, value: u64) {
        self.put(f.name(), value.to_string().as_bytes());
    }

    fn record_bool(&mut self, f: &Field, value: bool) {
        self.put(f.name(), value.to_string().as_bytes());
    }

    fn record_debug(&mut self, f: &Field, value: &dyn std::fmt::Debug) {
        self.put(f.name(), format!("{value:?}").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captures the lines [`structured_line`] makes for the events logged in `f`.
    fn capture(json: bool, f: impl FnOnce()) -> Vec<String> {
        use tracing_subscriber::prelude::*;
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Capture(Arc<std::sync::Mutex<Vec<String>>>, bool);
        impl<S: Subscriber> Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let line = String::from_utf8(structured_line(event, self.1)).unwrap();
                self.0.lock().unwrap().push(line);
            }
        }
        let subscriber = tracing_subscriber::registry().with(Capture(lines.clone(), json));
        tracing::subscriber::with_default(subscriber, f);
        let lines = lines.lock().unwrap().clone();
        lines
    }

    #[test]
    fn own_lines_are_logfmt_records_with_escaped_values() {
        let lines = capture(false, || {
            tracing::warn!(
                generation = 2u64,
                worker = 1u32,
                pid = -5i64,
                outcome = "exit \"1\"\nforged=1",
                "worker exited"
            );
            tracing::info!(socket = %"http", "bound \"127.0.0.1:80\"");
        });
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert!(first.starts_with("time=20"), "{first}");
        assert!(
            first.ends_with(
                " level=warn msg=\"worker exited\" generation=2 worker=1 pid=-5 \
                 outcome=\"exit \\\"1\\\"\\nforged=1\"\n"
            ),
            "{first}"
        );
        assert!(
            lines[1].ends_with(" level=info msg=\"bound \\\"127.0.0.1:80\\\"\" socket=http\n"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn own_lines_are_json_objects() {
        let lines = capture(true, || {
            tracing::error!(generation = 3u64, ok = true, "start failed:\n\"x\"");
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].matches('\n').count(), 1);
        let value: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(value["level"], "error");
        assert_eq!(value["msg"], "start failed:\n\"x\"");
        assert_eq!(value["generation"], 3);
        assert_eq!(value["ok"], true);
        let time = value["time"].as_str().unwrap().as_bytes();
        assert!(
            handover_proto::logtag::is_time(time.try_into().unwrap()),
            "{value}"
        );
    }

    #[test]
    fn fields_are_native_protocol_lines_and_newlines_use_the_binary_form() {
        let mut entry = Vec::new();
        field(&mut entry, "MESSAGE", b"hello");
        field(&mut entry, "HANDOVER_X", b"a\nb");
        let mut expected = b"MESSAGE=hello\nHANDOVER_X\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"a\nb\n");
        assert_eq!(entry, expected);
        let mut fields = Fields(&mut entry);
        fields.put("socket", b"http");
        fields.put("worker.index", b"1");
        assert!(entry.ends_with(b"HANDOVER_SOCKET=http\nHANDOVER_WORKER_INDEX=1\n"));
    }
}
