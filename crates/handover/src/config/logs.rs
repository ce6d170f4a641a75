//! `[logs]`: where workers' stdout and stderr go, and how log files rotate.

use std::path::PathBuf;

use super::document::{Item, Res, Table};
use super::grammar::{GIB, KIB, MIB, TIB};

/// Where one of workers' output streams goes (`[logs] stdout`, `stderr`): the supervisor's
/// own type, which holds nothing of TOML.
pub(crate) use handover_supervisor::Sink as LogSink;

/// The keys of `[logs]`.
pub(super) const KEYS: &[&str] = &[
    "stdout", "stderr", "tag", "max_line", "max_size", "keep", "compress", "buffer", "format",
];

/// How lines on handover's own stdout and stderr look (`[logs] format`).
pub(crate) use handover_proto::logline::Format as LogFormat;

/// `[logs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogsConfig {
    /// `stdout`. Default inherit.
    pub(crate) stdout: LogSink,
    /// `stderr`. Default inherit.
    pub(crate) stderr: LogSink,
    /// `tag`: tag lines in files. Default true.
    pub(crate) tag: bool,
    /// `max_line` in bytes. Default 16 KiB.
    pub(crate) max_line: u64,
    /// `max_size` in bytes; 0 never rotates. Default 10 MiB.
    pub(crate) max_size: u64,
    /// `keep`. Default 10.
    pub(crate) keep: u32,
    /// `compress`. Default true.
    pub(crate) compress: bool,
    /// `buffer` in bytes. Default 1 MiB.
    pub(crate) buffer: u64,
    /// `format`: of every line on handover's stdout and stderr, its own and workers'.
    /// Default text.
    pub(crate) format: LogFormat,
}

impl Default for LogsConfig {
    fn default() -> LogsConfig {
        LogsConfig {
            stdout: LogSink::Inherit,
            stderr: LogSink::Inherit,
            tag: true,
            max_line: 16 * KIB,
            max_size: 10 * MIB,
            keep: 10,
            compress: true,
            buffer: MIB,
            format: LogFormat::Text,
        }
    }
}

/// Validates `[logs]`.
pub(super) fn validate(table: &Table<'_>) -> Res<LogsConfig> {
    let d = LogsConfig::default();
    Ok(LogsConfig {
        stdout: table.get("stdout").map_or(Ok(d.stdout), |v| sink(&v))?,
        stderr: table.get("stderr").map_or(Ok(d.stderr), |v| sink(&v))?,
        tag: table.get("tag").map_or(Ok(d.tag), |v| v.boolean())?,
        max_line: table
            .get("max_line")
            .map_or(Ok(d.max_line), |v| v.size(256, MIB, false))?,
        max_size: table
            .get("max_size")
            .map_or(Ok(d.max_size), |v| v.size(4 * KIB, TIB, true))?,
        keep: table
            .get("keep")
            .map_or(Ok(d.keep), |v| v.integer(0, 10_000).map(|n| n as u32))?,
        compress: table
            .get("compress")
            .map_or(Ok(d.compress), |v| v.boolean())?,
        buffer: table
            .get("buffer")
            .map_or(Ok(d.buffer), |v| v.size(64 * KIB, GIB, false))?,
        format: table.get("format").map_or(Ok(d.format), |v| format(&v))?,
    })
}

/// `format`: "text", "logfmt" or "json".
fn format(v: &Item<'_>) -> Res<LogFormat> {
    let name = v.string()?;
    LogFormat::parse(name).ok_or_else(|| {
        v.bad(format!(
            "{name:?} is not a log format; expected \"text\", \"logfmt\" or \"json\""
        ))
    })
}

/// `stdout` or `stderr`: "inherit", "-", "/dev/null" or the absolute path of a file.
fn sink(v: &Item<'_>) -> Res<LogSink> {
    Ok(match v.string()? {
        "inherit" => LogSink::Inherit,
        "-" => LogSink::Own,
        "/dev/null" => LogSink::Null,
        "" => return Err(v.bad("must not be empty: use \"/dev/null\" to discard")),
        path if path.starts_with('/') => {
            if path.ends_with('/') {
                return Err(v.bad(format!("{path:?} is a directory, not a file")));
            }
            LogSink::File(PathBuf::from(path))
        }
        other => {
            return Err(v.bad(format!(
                "{other:?} is neither \"inherit\", \"-\", \"/dev/null\" nor an absolute path \
                (it must start with /)"
            )))
        }
    })
}

#[cfg(test)]
mod tests;
