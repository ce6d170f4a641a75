//! The structured line formats of handover's stdout and stderr (`[logs] format`): logfmt and
//! JSON lines, one record per line, written by the supervisor (workers' lines) and by the
//! binary (handover's own) through the same encoder, so a log collector parses both alike.
//!
//! Whatever the bytes of a value, a record is exactly one line of printable UTF-8: newlines,
//! quotes, backslashes and control characters are escaped, and a byte that is not UTF-8 is
//! written as the four characters `\xNN` (JSON strings must be Unicode, and logfmt parsers
//! expect it).
//!
//! ```text
//! time=2026-11-21T10:00:00.123Z stream=stdout msg="GET / 200" generation=3 worker=1 pid=1234
//! {"time":"2026-11-21T10:00:00.123Z","stream":"stdout","msg":"GET / 200","generation":3,"worker":1,"pid":1234}
//! ```

use std::fmt::Write as _;

/// How lines on handover's stdout and stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Plain text: handover's own lines as `TIME LEVEL message fields`, workers' lines
    /// tagged as in files (see [`crate::logtag`]).
    #[default]
    Text,
    /// logfmt: `key=value` pairs separated by spaces, values quoted when they need it.
    Logfmt,
    /// JSON lines: one JSON object per line.
    Json,
}

impl Format {
    /// Every format's name, as the configuration spells it.
    pub const NAMES: [&'static str; 3] = ["text", "logfmt", "json"];

    /// The format of a name (`text`, `logfmt`, `json`).
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "text" => Some(Format::Text),
            "logfmt" => Some(Format::Logfmt),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// The name, as the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Logfmt => "logfmt",
            Format::Json => "json",
        }
    }
}

/// One structured record being appended to a buffer: fields in the order they are added,
/// then [`Record::finish`] ends the line.
#[derive(Debug)]
pub struct Record<'b> {
    buf: &'b mut Vec<u8>,
    json: bool,
    empty: bool,
}

impl<'b> Record<'b> {
    /// Starts a record in `buf`, in JSON when `json`, else in logfmt.
    pub fn start(buf: &'b mut Vec<u8>, json: bool) -> Record<'b> {
        if json {
            buf.push(b'{');
        }
        Record {
            buf,
            json,
            empty: true,
        }
    }

    /// The key, with whatever is not a letter, digit, `_`, `.` or `-` made `_` (a key never
    /// needs quoting, in either format).
    fn key(&mut self, key: &str) {
        if !self.empty {
            self.buf.push(if self.json { b',' } else { b' ' });
        }
        self.empty = false;
        if self.json {
            self.buf.push(b'"');
        }
        if key.is_empty() {
            self.buf.push(b'_');
        }
        self.buf.extend(key.bytes().map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
                b
            } else {
                b'_'
            }
        }));
        if self.json {
            self.buf.extend_from_slice(b"\":");
        } else {
            self.buf.push(b'=');
        }
    }

    /// A text value, from any bytes.
    pub fn text(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.key(key);
        if self.json || needs_quotes(value) {
            quoted(self.buf, value);
        } else {
            self.buf.extend_from_slice(value);
        }
        self
    }

    /// A number, written bare in both formats.
    pub fn number(&mut self, key: &str, value: impl Into<i128>) -> &mut Self {
        self.key(key);
        let _ = write!(Bytes(self.buf), "{}", value.into());
        self
    }

    /// A boolean, written bare (`true`, `false`) in both formats.
    pub fn boolean(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Ends the record and its line.
    pub fn finish(self) {
        if self.json {
            self.buf.push(b'}');
        }
        self.buf.push(b'\n');
    }
}

/// `fmt::Write` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Whether a logfmt value must be quoted: empty, or holding a space, `=`, `"`, `\`, a
/// control character or a byte that is not UTF-8.
fn needs_quotes(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return true;
    };
    text.chars()
        .any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || c.is_control() || is_separator(c))
}

/// U+2028 and U+2029 end lines in some readers (JavaScript among them).
fn is_separator(c: char) -> bool {
    c == '\u{2028}' || c == '\u{2029}'
}

/// Appends `value` as a double-quoted string: `\"`, `\\`, `\n`, `\r`, `\t`, other control
/// characters and the line separators as `\uXXXX`, bytes that are not UTF-8 as the text
/// `\xNN` (its backslash escaped, so it reads back as those four characters).
fn quoted(buf: &mut Vec<u8>, value: &[u8]) {
    buf.push(b'"');
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => buf.extend_from_slice(b"\\\""),
                '\\' => buf.extend_from_slice(b"\\\\"),
                '\n' => buf.extend_from_slice(b"\\n"),
                '\r' => buf.extend_from_slice(b"\\r"),
                '\t' => buf.extend_from_slice(b"\\t"),
                c if c.is_control() || is_separator(c) => {
                    let _ = write!(Bytes(buf), "\\u{:04x}", c as u32);
                }
                c => {
                    let mut bytes = [0u8; 4];
                    buf.extend_from_slice(c.encode_utf8(&mut bytes).as_bytes());
                }
            }
        }
        for &b in chunk.invalid() {
            let _ = write!(Bytes(buf), "\\\\x{b:02x}");
        }
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn logfmt(build: impl FnOnce(&mut Record<'_>)) -> String {
        let mut buf = Vec::new();
        let mut record = Record::start(&mut buf, false);
        build(&mut record);
        record.finish();
        String::from_utf8(buf).expect("a record is UTF-8")
    }

    fn json(build: impl FnOnce(&mut Record<'_>)) -> String {
        let mut buf = Vec::new();
        let mut record = Record::start(&mut buf, true);
        build(&mut record);
        record.finish();
        String::from_utf8(buf).expect("a record is UTF-8")
    }

    #[test]
    fn names_round_trip() {
        for name in Format::NAMES {
            assert_eq!(Format::parse(name).map(Format::name), Some(name));
        }
        assert_eq!(Format::parse("JSON"), None);
        assert_eq!(Format::parse(""), None);
    }

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        let line = logfmt(|r| {
            r.text("time", b"2026-11-21T10:00:00.123Z")
                .text("stream", b"stdout")
                .text("msg", b"GET / 200")
                .number("generation", 3u64)
                .number("pid", -1)
                .boolean("continues", false);
        });
        assert_eq!(
            line,
            "time=2026-11-21T10:00:00.123Z stream=stdout msg=\"GET / 200\" generation=3 \
             pid=-1 continues=false\n"
        );
        assert_eq!(
            logfmt(|r| {
                r.text("msg", b"");
            }),
            "msg=\"\"\n"
        );
        assert_eq!(
            logfmt(|r| {
                r.text("k", b"a=b");
            }),
            "k=\"a=b\"\n"
        );
        assert_eq!(
            logfmt(|r| {
                r.text("k", "héllo".as_bytes());
            }),
            "k=héllo\n"
        );
    }

    #[test]
    fn logfmt_escapes_quotes_newlines_and_control_bytes() {
        let line = logfmt(|r| {
            r.text("msg", b"say \"hi\"\nfake=1 level=error\r\t\\ \x1b[31m\x7f");
        });
        assert_eq!(
            line,
            "msg=\"say \\\"hi\\\"\\nfake=1 level=error\\r\\t\\\\ \\u001b[31m\\u007f\"\n"
        );
        // A forged second line cannot appear: the record is one line.
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            logfmt(|r| {
                r.text("msg", b"\xff\xfeok");
            }),
            "msg=\"\\\\xff\\\\xfeok\"\n"
        );
        assert_eq!(
            logfmt(|r| {
                r.text("msg", "a\u{2028}b\u{85}".as_bytes());
            }),
            "msg=\"a\\u2028b\\u0085\"\n"
        );
    }

    #[test]
    fn keys_are_never_quoted() {
        assert_eq!(
            logfmt(|r| {
                r.text("a b=\"c", b"v");
            }),
            "a_b__c=v\n"
        );
        assert_eq!(
            logfmt(|r| {
                r.text("", b"v");
            }),
            "_=v\n"
        );
        assert_eq!(
            json(|r| {
                r.text("a\"b", b"v");
            }),
            "{\"a_b\":\"v\"}\n"
        );
    }

    #[test]
    fn json_lines_escape_and_parse_back() {
        let line = json(|r| {
            r.text("time", b"2026-11-21T10:00:00.123Z")
                .text("msg", b"say \"hi\"\n\x00\x1b\\ \xc3")
                .number("worker", 1u32)
                .boolean("continues", true);
        });
        assert_eq!(
            line,
            "{\"time\":\"2026-11-21T10:00:00.123Z\",\"msg\":\"say \\\"hi\\\"\\n\\u0000\\u001b\\\\ \
             \\\\xc3\",\"worker\":1,\"continues\":true}\n"
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["msg"], "say \"hi\"\n\u{0}\u{1b}\\ \\xc3");
        assert_eq!(value["worker"], 1);
        assert_eq!(value["continues"], true);
        assert_eq!(json(|_| {}), "{}\n");
    }

    /// Unquotes a logfmt value as the common parsers do.
    fn unquote_logfmt(value: &str) -> String {
        let inner = &value[1..value.len() - 1];
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                }
                Some(other) => out.push(other),
                None => panic!("dangling backslash in {value}"),
            }
        }
        out
    }

    proptest! {
        /// Any bytes give one line that reads back as the text (bytes that are not UTF-8 as
        /// `\xNN`), in both formats.
        #[test]
        fn any_value_is_one_line_that_reads_back(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut expected = String::new();
            for chunk in value.utf8_chunks() {
                expected.push_str(chunk.valid());
                for b in chunk.invalid() {
                    expected.push_str(&format!("\\x{b:02x}"));
                }
            }
            let line = json(|r| { r.text("msg", &value); });
            prop_assert_eq!(line.matches('\n').count(), 1);
            prop_assert!(line.ends_with('\n'));
            let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            prop_assert_eq!(parsed["msg"].as_str(), Some(expected.as_str()));

            let line = logfmt(|r| { r.text("msg", &value); });
            prop_assert_eq!(line.matches('\n').count(), 1);
            let text = line.strip_prefix("msg=").unwrap().strip_suffix('\n').unwrap();
            prop_assert!(!text.chars().any(|c| c.is_control()));
            let back = if text.starts_with('"') { unquote_logfmt(text) } else { text.to_string() };
            prop_assert_eq!(back, expected);
        }
    }
}
