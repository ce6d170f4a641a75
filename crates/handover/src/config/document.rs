//! The configuration text, read once and parsed once into a span-preserving TOML document
//! (toml's `DeTable`), and the means to walk it: every table and value reached through it
//! carries its path (`worker.env.PATH`, `socket[1].listen`) and where it is written, so every
//! error names its line and column without asking the TOML parser again.

use std::borrow::Cow;
use std::io::Read;
use std::num::IntErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeInteger, DeTable, DeValue};
use toml::Spanned;

use super::grammar::{self, show_size};

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub(crate) struct ConfigError {
    /// The file.
    pub(crate) path: PathBuf,
    /// 1-based line; 0 only when the file could not be read at all (missing, a directory,
    /// no permission), so there is no line to name.
    pub(crate) line: usize,
    /// 1-based column, in characters; 0 together with `line`.
    pub(crate) column: usize,
    /// What is wrong, naming the key. Never empty.
    pub(crate) message: String,
}

/// Largest configuration file [`read`] takes, in bytes (1 MiB).
pub(crate) const MAX_FILE_SIZE: usize = 1024 * 1024;

pub(super) type Res<T> = Result<T, ConfigError>;

/// Reads a configuration file: at most [`MAX_FILE_SIZE`] bytes of UTF-8. A file that is too
/// large or not UTF-8 is refused at the position of the first byte that is over the limit
/// or invalid.
pub(super) fn read(path: &Path) -> Res<String> {
    let unpositioned = |message: String| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        message,
    };
    let cannot =
        |e: std::io::Error| unpositioned(format!("cannot read the configuration file: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    let located = |offset: usize, message: String| {
        let (line, column) = byte_line_col(&bytes, offset);
        ConfigError {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    if bytes.len() > MAX_FILE_SIZE {
        return Err(located(
            MAX_FILE_SIZE,
            format!(
                "the configuration file is too large: it goes on past {MAX_FILE_SIZE} bytes \
                (1 MiB), the limit, here"
            ),
        ));
    }
    match String::from_utf8(bytes.clone()) {
        Ok(text) => Ok(text),
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            Err(located(
                offset,
                format!(
                    "the configuration file is not valid UTF-8: byte 0x{:02x} here does not \
                    start a character",
                    bytes[offset]
                ),
            ))
        }
    }
}

/// 1-based line and column (in characters) of a byte offset of text that may not be UTF-8:
/// an invalid byte counts as one character.
fn byte_line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// A key as it appears in a path: bare when it can be written bare in TOML, quoted otherwise.
pub(super) fn path_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// What a value is, for "expected X, got Y" messages.
pub(super) fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The file being validated: its path and text, to turn spans into positions.
pub(super) struct Cx<'t> {
    pub(super) path: &'t Path,
    pub(super) text: &'t str,
}

impl<'t> Cx<'t> {
    /// An error at a byte offset of the text.
    pub(super) fn at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        let mut message = message.into();
        if message.trim().is_empty() {
            message = "invalid TOML here".into();
        }
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// Parses the text into its document, once. A TOML syntax error is reported where the
    /// parser found it, with its message made one line.
    pub(super) fn parse(&self) -> Res<DeTable<'t>> {
        DeTable::parse(self.text)
            .map(Spanned::into_inner)
            .map_err(|e| {
                let span = e.span().unwrap_or(0..0);
                let mut message = tidy(e.message());
                if let Some(found) = self.text.get(span.clone()).filter(|t| !t.is_empty()) {
                    let found: String = found.chars().take(40).collect();
                    message.push_str(&format!(" (`{}`)", found.escape_debug()));
                }
                self.at(span.start, message)
            })
    }

    /// The top-level table of a parsed document.
    pub(super) fn root<'d>(&'d self, table: &'d DeTable<'d>) -> Table<'d> {
        Table {
            cx: self,
            path: String::new(),
            start: 0,
            entries: table,
        }
    }

    /// A table the file does not have, standing in for it so that its section gets its
    /// defaults through the same validation.
    pub(super) fn absent<'d>(&'d self, path: &str, empty: &'d DeTable<'d>) -> Table<'d> {
        Table {
            cx: self,
            path: path.to_owned(),
            start: 0,
            entries: empty,
        }
    }

    /// Where a table whose value span is `span` starts, for errors about a key it lacks: its
    /// `[header]` or `[[header]]` when it has one, else where it is first named (a dotted
    /// key, or the `{` of an inline table).
    fn table_start(&self, span: &Range<usize>) -> usize {
        let before = self.text[..span.start.min(self.text.len())].trim_end_matches([' ', '\t']);
        if before.ends_with("[[") {
            before.len() - 2
        } else if before.ends_with('[') {
            before.len() - 1
        } else {
            span.start
        }
    }
}

/// Turns a message into one line.
fn tidy(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

type Entry<'d> = (&'d Spanned<Cow<'d, str>>, &'d Spanned<DeValue<'d>>);

/// A table of the document, with its path (`worker`, `socket[1]`; empty for the top level).
#[derive(Clone)]
pub(super) struct Table<'d> {
    cx: &'d Cx<'d>,
    path: String,
    /// Where errors about a key the table lacks point.
    start: usize,
    entries: &'d DeTable<'d>,
}

impl<'d> Table<'d> {
    /// The path of a key of this table.
    pub(super) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            path_key(key)
        } else {
            format!("{}.{}", self.path, path_key(key))
        }
    }

    /// The entries in the order they are written.
    pub(super) fn entries(&self) -> Vec<Entry<'d>> {
        let mut entries: Vec<Entry<'d>> = self.entries.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        entries
    }

    /// The entries in the order they are written, each value with its path.
    pub(super) fn items(&self) -> Vec<(&'d Spanned<Cow<'d, str>>, Item<'d>)> {
        self.entries()
            .into_iter()
            .map(|(key, value)| {
                let item = Item {
                    cx: self.cx,
                    key: self.key_path(key.get_ref()),
                    value,
                };
                (key, item)
            })
            .collect()
    }

    /// An error about a key itself (not its value): `PATH: WHY` at the key.
    pub(super) fn bad_key(
        &self,
        key: &Spanned<Cow<'_, str>>,
        why: impl std::fmt::Display,
    ) -> ConfigError {
        self.cx.at(
            key.span().start,
            format!("{}: {why}", self.key_path(key.get_ref())),
        )
    }

    /// The value of `key`, if the table has it.
    pub(super) fn get(&self, key: &str) -> Option<Item<'d>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, value)| Item {
                cx: self.cx,
                key: self.key_path(key),
                value,
            })
    }

    /// An error about a key this table lacks, at the start of the table.
    pub(super) fn missing(&self, key: &str, why: &str) -> ConfigError {
        self.cx.at(
            self.start,
            format!("{}: missing; {why}", self.key_path(key)),
        )
    }

    /// For keys that belong to some values of a selector key (`ready`, `check`): refuses
    /// each of `keys` that is set while `selector` = `value` is not one of `values`, saying
    /// which setting they need (`wanted`).
    pub(super) fn only_with(
        &self,
        keys: &[&str],
        (selector, value): (&str, &str),
        values: &[&str],
        wanted: &str,
    ) -> Res<()> {
        if values.contains(&value) {
            return Ok(());
        }
        match keys.iter().find_map(|key| self.get(key)) {
            Some(v) => Err(v.bad(format!(
                "only applies with {wanted} ({selector} is {value:?})"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses every key not in `known`, at the first one written, naming the keys there are.
    pub(super) fn only_keys(&self, known: &[&str]) -> Res<()> {
        match self
            .entries()
            .into_iter()
            .find(|(key, _)| !known.contains(&key.get_ref().as_ref()))
        {
            Some((key, _)) => Err(self.unknown(key, known)),
            None => Ok(()),
        }
    }

    /// The error about a key of this table that is not in `known`.
    pub(super) fn unknown(&self, key: &Spanned<Cow<'_, str>>, known: &[&str]) -> ConfigError {
        let names: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        self.cx.at(
            key.span().start,
            format!(
                "{}: unknown key, expected one of {}",
                self.key_path(key.get_ref()),
                names.join(", ")
            ),
        )
    }
}

/// A value of the document, with the path that names it in errors.
#[derive(Clone)]
pub(super) struct Item<'d> {
    cx: &'d Cx<'d>,
    /// Its path, such as `worker.count` or `worker.command[1]`.
    pub(super) key: String,
    value: &'d Spanned<DeValue<'d>>,
}

impl<'d> Item<'d> {
    /// The value itself.
    pub(super) fn value(&self) -> &'d DeValue<'d> {
        self.value.get_ref()
    }

    /// Where the value starts.
    pub(super) fn offset(&self) -> usize {
        self.value.span().start
    }

    /// The line the value starts on.
    pub(super) fn line(&self) -> usize {
        line_col(self.cx.text, self.offset()).0
    }

    /// An error about this value: `KEY: WHAT` at the value.
    pub(super) fn bad(&self, what: impl std::fmt::Display) -> ConfigError {
        self.cx.at(self.offset(), format!("{}: {what}", self.key))
    }

    /// An error at this value about another key, such as the key a value makes necessary.
    pub(super) fn bad_as(&self, key: &str, what: impl std::fmt::Display) -> ConfigError {
        self.cx.at(self.offset(), format!("{key}: {what}"))
    }

    /// "expected X, got Y".
    pub(super) fn expected(&self, what: &str) -> ConfigError {
        self.bad(format!("expected {what}, got {}", kind(self.value())))
    }

    /// The value as a table, with its path.
    pub(super) fn table(&self) -> Option<Table<'d>> {
        match self.value() {
            DeValue::Table(entries) => Some(Table {
                cx: self.cx,
                path: self.key.clone(),
                start: self.cx.table_start(&self.value.span()),
                entries,
            }),
            _ => None,
        }
    }

    /// The value as an array: its items, each with its path (`KEY[j]`).
    pub(super) fn items(&self) -> Option<Vec<Item<'d>>> {
        match self.value() {
            DeValue::Array(array) => Some(
                array
                    .iter()
                    .enumerate()
                    .map(|(j, value)| Item {
                        cx: self.cx,
                        key: format!("{}[{j}]", self.key),
                        value,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// A string without NUL characters.
    pub(super) fn string(&self) -> Res<&'d str> {
        match self.value() {
            DeValue::String(s) if s.contains('\0') => Err(self.bad("contains a NUL character")),
            DeValue::String(s) => Ok(s),
            _ => Err(self.expected("a string")),
        }
    }

    /// A string that is not empty.
    pub(super) fn non_empty_string(&self) -> Res<&'d str> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.bad("must not be empty"));
        }
        Ok(s)
    }

    /// `true` or `false`.
    pub(super) fn boolean(&self) -> Res<bool> {
        match self.value() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.expected("true or false")),
        }
    }

    /// An integer within `min..=max`.
    pub(super) fn integer(&self, min: i64, max: i64) -> Res<i64> {
        let DeValue::Integer(integer) = self.value() else {
            return Err(self.expected("an integer"));
        };
        match i64::from_str_radix(integer.as_str(), integer.radix()) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(n) => Err(self.bad(format!("must be between {min} and {max}, got {n}"))),
            Err(e)
                if matches!(
                    e.kind(),
                    IntErrorKind::PosOverflow | IntErrorKind::NegOverflow
                ) =>
            {
                Err(self.bad(format!("must be between {min} and {max}, got {integer}")))
            }
            Err(_) => Err(self.bad(format!("{integer} is not an integer"))),
        }
    }

    /// A duration: a string of the duration grammar. A bare number gets a hint to add a unit.
    pub(super) fn duration(&self) -> Res<Duration> {
        match self.value() {
            DeValue::String(s) => grammar::parse_duration(s).map_err(|why| self.bad(why)),
            DeValue::Integer(n) if negative(n) => Err(self.bad("a duration cannot be negative")),
            DeValue::Integer(n) => Err(self.bad(format!(
                "a duration needs a unit: write \"{n}s\" for seconds (or \"{n}ms\", \"{n}m\", \
                \"{n}h\")",
                n = integer_text(n)
            ))),
            DeValue::Float(x) => {
                let shown = x
                    .as_str()
                    .parse::<f64>()
                    .map_or_else(|_| x.to_string(), |x| x.to_string());
                Err(self.bad(format!(
                    "a duration is a string with a unit: write \"{shown}s\" for seconds (or \
                    ms, m, h)"
                )))
            }
            _ => Err(self.expected("a duration like \"10s\"")),
        }
    }

    /// A duration that is more than zero.
    pub(super) fn positive_duration(&self) -> Res<Duration> {
        let duration = self.duration()?;
        if duration.is_zero() {
            return Err(self.bad("must be more than 0"));
        }
        Ok(duration)
    }

    /// A string that starts with `/`.
    pub(super) fn absolute_path(&self) -> Res<PathBuf> {
        let s = self.string()?;
        if !s.starts_with('/') {
            return Err(self.bad(format!(
                "{s:?} is not an absolute path (it must start with /)"
            )));
        }
        Ok(PathBuf::from(s))
    }

    /// A size: an integer (bytes) or a string of the size grammar; within `min..=max`, or 0
    /// when `zero_ok`.
    pub(super) fn size(&self, min: u64, max: u64, zero_ok: bool) -> Res<u64> {
        let bytes = match self.value() {
            DeValue::Integer(n) if negative(n) => return Err(self.bad("a size cannot be negative")),
            DeValue::Integer(n) => u64::from_str_radix(n.as_str(), n.radix())
                .map_err(|_| self.bad(format!("{n} is too large")))?,
            DeValue::String(s) => grammar::parse_size(s).map_err(|why| self.bad(why))?,
            _ => return Err(self.expected("a size like \"16KiB\"")),
        };
        if (zero_ok && bytes == 0) || (min..=max).contains(&bytes) {
            return Ok(bytes);
        }
        let zero = if zero_ok { "0 or " } else { "" };
        Err(self.bad(format!(
            "must be {zero}between {} and {}, got {bytes} bytes",
            show_size(min),
            show_size(max)
        )))
    }
}

/// Whether a TOML integer is below zero (also when it is too large for an `i64`).
fn negative(integer: &DeInteger<'_>) -> bool {
    i64::from_str_radix(integer.as_str(), integer.radix())
        .map_or(integer.as_str().starts_with('-'), |n| n < 0)
}

/// A TOML integer in decimal, or as written when it is too large for an `i64`.
fn integer_text(integer: &DeInteger<'_>) -> String {
    i64::from_str_radix(integer.as_str(), integer.radix())
        .map_or_else(|_| integer.to_string(), |n| n.to_string())
}
