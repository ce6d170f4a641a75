//! The tag at the start of each line handover writes for a worker, written and read here
//! side by side so that the supervisor (which writes it) and `handover logs` (which filters and
//! merges by it) can never drift apart:
//!
//! `2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout: `

use std::io::Write as _;

/// Length of the time that starts a tag: `2026-11-21T10:00:00.123Z`.
pub const TIME_LEN: usize = 24;

/// The longest tag: a time, the largest numbers, `stderr`, the separators.
pub const TAG_MAX: usize = TIME_LEN + " gen= worker= pid= stderr: ".len() + 20 + 10 + 10;

/// One of a worker's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What a tag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// The time, as written (UTC, millisecond precision): byte order is time order.
    pub time: [u8; TIME_LEN],
    /// The worker's generation.
    pub generation: u64,
    /// The worker's index in its generation.
    pub worker: u32,
    /// The worker's pid (0 when unknown).
    pub pid: u32,
    /// Which stream the line came from.
    pub stream: Stream,
}

/// Appends the tag for a line to `buf`; `time` is [`TIME_LEN`] bytes as [`Tag::time`].
pub fn write(
    buf: &mut Vec<u8>,
    time: &str,
    generation: u64,
    worker: u32,
    pid: i32,
    stream: Stream,
) {
    let _ = write!(
        buf,
        "{time} gen={generation} worker={worker} pid={pid} {}: ",
        stream.name()
    );
}

impl Tag {
    /// Reads the tag at the start of `line`; `None` unless it is exactly one as [`write`]
    /// makes them.
    pub fn parse(line: &[u8]) -> Option<Tag> {
        let time: [u8; TIME_LEN] = line.get(..TIME_LEN)?.try_into().ok()?;
        if !is_time(&time) {
            return None;
        }
        let rest = line[TIME_LEN..].strip_prefix(b" gen=")?;
        let (generation, rest) = number(rest)?;
        let rest = rest.strip_prefix(b" worker=")?;
        let (worker, rest) = number(rest)?;
        let rest = rest.strip_prefix(b" pid=")?;
        let (pid, rest) = number(rest)?;
        let (stream, rest) = if let Some(rest) = rest.strip_prefix(b" stdout") {
            (Stream::Stdout, rest)
        } else {
            (Stream::Stderr, rest.strip_prefix(b" stderr")?)
        };
        rest.strip_prefix(b": ")?;
        Some(Tag {
            time,
            generation,
            worker: u32::try_from(worker).ok()?,
            pid: u32::try_from(pid).ok().filter(|&p| p <= i32::MAX as u32)?,
            stream,
        })
    }
}

/// Whether `t` is a time as handover writes it: `YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC.
pub fn is_time(t: &[u8; TIME_LEN]) -> bool {
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let shaped = t.iter().zip(shape).all(|(&c, &s)| {
        if s == b'd' {
            c.is_ascii_digit()
        } else {
            c == s
        }
    });
    let two = |i: usize| u32::from(t[i] - b'0') * 10 + u32::from(t[i + 1] - b'0');
    shaped
        && (1..=12).contains(&two(5))
        && (1..=31).contains(&two(8))
        && two(11) <= 23
        && two(14) <= 59
        && two(17) <= 60
}

/// A decimal number as handover writes one (no sign, no leading zero) and the bytes after it.
fn number(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && text[0] == b'0') {
        return None;
    }
    let mut value: u64 = 0;
    for &d in &text[..digits] {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((value, &text[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tags_parse_strictly() {
        let tag =
            Tag::parse(b"2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout: GET / 200\n")
                .unwrap();
        assert_eq!(&tag.time, b"2026-11-21T10:00:00.123Z");
        assert_eq!(
            (tag.generation, tag.worker, tag.pid, tag.stream),
            (3, 1, 1234, Stream::Stdout)
        );
        let tag = Tag::parse(
            b"1999-12-31T23:59:60.999Z gen=18446744073709551615 worker=0 pid=0 stderr: ",
        )
        .unwrap();
        assert_eq!(
            (tag.generation, tag.worker, tag.pid, tag.stream),
            (u64::MAX, 0, 0, Stream::Stderr)
        );
        for bad in [
            "",
            "2026-11-21T10:00:00.123Z",
            "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout:",
            "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout:x",
            "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdin: x",
            "2026-11-21T10:00:00.123Z gen=3 worker=1 stdout: x",
            "2026-11-21T10:00:00.123Z gen=3  worker=1 pid=1234 stdout: x",
            "2026-11-21T10:00:00.123Z gen= worker=1 pid=1234 stdout: x",
            "2026-11-21T10:00:00.123Z gen=03 worker=1 pid=1234 stdout: x",
            "2026-11-21T10:00:00.123Z gen=-3 worker=1 pid=1234 stdout: x",
            "2026-11-21T10:00:00.123Z gen=18446744073709551616 worker=1 pid=1 stdout: x",
            "2026-11-21T10:00:00.123Z gen=3 worker=4294967296 pid=1 stdout: x",
            "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=2147483648 stdout: x",
            "2026-11-21 10:00:00.123Z gen=3 worker=1 pid=1234 stdout: x",
            "2026-11-21T10:00:00.123+ gen=3 worker=1 pid=1234 stdout: x",
            "2026-13-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout: x",
            "2026-11-21T24:00:00.123Z gen=3 worker=1 pid=1234 stdout: x",
            "2026-11-21T10:00:00.1234Z gen=3 worker=1 pid=1234 stdout: x",
            " 2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout: x",
            "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 STDOUT: x",
        ] {
            assert_eq!(Tag::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(Tag::parse(b"\xff\xfe2026-11-21T10:00:00.123Z"), None);
    }

    #[test]
    fn the_longest_tag_fits_tag_max() {
        let mut buf = Vec::new();
        write(
            &mut buf,
            "2026-11-21T10:00:00.123Z",
            u64::MAX,
            u32::MAX,
            i32::MAX,
            Stream::Stderr,
        );
        assert_eq!(buf.len(), TAG_MAX);
        assert!(Tag::parse(&buf).is_some());
    }

    proptest! {
        /// Whatever the supervisor writes, `handover logs` reads back exactly.
        #[test]
        fn written_tags_parse_back(
            year in 1970u32..=9999, month in 1u32..=12, day in 1u32..=31,
            hour in 0u32..=23, minute in 0u32..=59, second in 0u32..=60, ms in 0u32..=999,
            generation: u64, worker: u32, pid in 0i32..=i32::MAX, stderr: bool,
            text in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let time = format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z"
            );
            let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
            let mut line = Vec::new();
            write(&mut line, &time, generation, worker, pid, stream);
            let tag_len = line.len();
            line.extend_from_slice(&text);
            let tag = Tag::parse(&line).expect("a written tag parses");
            prop_assert!(tag_len <= TAG_MAX);
            prop_assert_eq!(&tag.time[..], time.as_bytes());
            prop_assert_eq!(
                (tag.generation, tag.worker, tag.pid, tag.stream),
                (generation, worker, pid as u32, stream)
            );
        }
    }
}
