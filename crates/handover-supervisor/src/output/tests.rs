use super::*;

/// Feeds `input` in pieces of `step` bytes and collects what comes out.
fn split(input: &[u8], max: usize, step: usize) -> Vec<(Vec<u8>, bool)> {
    let mut lines = Lines::default();
    let mut out = Vec::new();
    for chunk in input.chunks(step.max(1)) {
        lines.push(chunk, max, |line, continues| {
            out.push((line.to_vec(), continues))
        });
    }
    lines.flush(|line, continues| out.push((line.to_vec(), continues)));
    out
}

fn pieces(items: &[(&str, bool)]) -> Vec<(Vec<u8>, bool)> {
    items
        .iter()
        .map(|(text, continues)| (text.as_bytes().to_vec(), *continues))
        .collect()
}

#[test]
fn lines_are_split_at_newlines_and_flushed_at_the_end() {
    assert_eq!(
        split(b"a\nbc\n\nlast", 100, 1000),
        pieces(&[("a", false), ("bc", false), ("", false), ("last", false)])
    );
}

#[test]
fn long_lines_come_in_pieces_marked_as_continuing() {
    assert_eq!(
        split(b"abcdefgh\nxy\n", 3, 1000),
        pieces(&[("abc", true), ("def", true), ("gh", false), ("xy", false)])
    );
    // A line of exactly the maximum is one piece, not a piece and an empty rest.
    assert_eq!(
        split(b"abc\nabcdef\n", 3, 1000),
        pieces(&[("abc", false), ("abc", true), ("def", false)])
    );
}

#[test]
fn the_result_does_not_depend_on_how_reads_cut_the_stream() {
    let mut input = Vec::new();
    for i in 0..300u32 {
        input.extend(std::iter::repeat_n(
            b'a' + (i % 26) as u8,
            (i * 7 % 23) as usize,
        ));
        input.push(b'\n');
    }
    input.extend_from_slice(b"tail without newline");
    for max in [1, 2, 3, 5, 8, 13, 64] {
        let whole = split(&input, max, input.len());
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(split(&input, max, step), whole, "max {max} step {step}");
        }
        // Joining the pieces gives the input back.
        let mut joined = Vec::new();
        for (line, continues) in &whole {
            assert!(line.len() <= max);
            joined.extend_from_slice(line);
            if !continues {
                joined.push(b'\n');
            }
        }
        joined.pop();
        assert_eq!(joined, input, "max {max}");
    }
}

#[test]
fn memory_stays_bounded_by_the_maximum_line() {
    let mut lines = Lines::default();
    let mut count = 0;
    let chunk = vec![b'x'; 8192];
    for _ in 0..1280 {
        lines.push(&chunk, 16 * 1024, |line, continues| {
            assert_eq!(line.len(), 16 * 1024);
            assert!(continues);
            count += 1;
        });
        assert!(lines.partial.capacity() <= 16 * 1024 + 8192);
    }
    // 10 MiB without a newline: 640 pieces, the last still held (no byte after it yet).
    assert_eq!(count, 639);
}

fn escaped(text: &[u8]) -> String {
    let mut buf = Vec::new();
    escape(&mut buf, text);
    String::from_utf8(buf).expect("escaped text is UTF-8")
}

#[test]
fn escaping_keeps_text_and_hides_control_bytes() {
    assert_eq!(escaped(b"plain text\twith tab"), "plain text\twith tab");
    assert_eq!(escaped("héllo ✓".as_bytes()), "héllo ✓");
    assert_eq!(
        escaped(b"a\0b\rc\x1b[31md\x7f"),
        "a\\x00b\\x0dc\\x1b[31md\\x7f"
    );
    assert_eq!(escaped(b"bad \xff\xfe utf8"), "bad \\xff\\xfe utf8");
    // A C1 control (U+009B, a terminal's CSI) is escaped byte by byte.
    assert_eq!(escaped("x\u{9b}y".as_bytes()), "x\\xc2\\x9by");
    // A truncated multi-byte character.
    assert_eq!(escaped(&"✓".as_bytes()[..2]), "\\xe2\\x9c");
}

#[test]
fn journal_entries_carry_the_worker_identity() {
    let origin = Origin {
        generation: 2,
        index: 0,
        pid: 42,
        program: b"/srv/bin/my\napp",
    };
    let mut buf = Vec::new();
    journal_entry(&mut buf, &origin, Stream::Stderr, b"hello\x1b", true);
    let len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
    assert_eq!(len, buf.len() - 4);
    let entry = String::from_utf8(buf[4..].to_vec()).unwrap();
    assert_eq!(
        entry,
        "PRIORITY=6\nSYSLOG_IDENTIFIER=my\\x0aapp\nSYSLOG_PID=42\nHANDOVER_GENERATION=2\n\
         HANDOVER_WORKER=0\nHANDOVER_PID=42\nHANDOVER_STREAM=stderr\n\
         MESSAGE=hello\\x1b [continues]\n"
    );
}

#[test]
fn files_get_tagged_or_raw_lines() {
    let dir = file::tests::TestDir::new("output-routes");
    for tag in [true, false] {
        let path = dir.path().join(format!("tag-{tag}.log"));
        let config = OutputConfig {
            stdout: Sink::File(path.clone()),
            stderr: Sink::Null,
            tag,
            ..OutputConfig::default()
        };
        let output = Output::open(&config).unwrap();
        assert!(!output.stdout_is_null());
        let origin = Origin {
            generation: 1,
            index: 0,
            pid: 7,
            program: b"app",
        };
        output.line(Stream::Stdout, &origin, b"one \xff", false);
        output.line(Stream::Stdout, &origin, b"two", true);
        output.line(Stream::Stderr, &origin, b"never", false);
        output.finish(Duration::from_secs(10));
        let text = std::fs::read(&path).unwrap();
        if tag {
            let text = String::from_utf8(text).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert!(
                lines[0].ends_with(" gen=1 worker=0 pid=7 stdout: one \\xff"),
                "{text}"
            );
            assert!(lines[1].ends_with(" stdout: two [continues]"), "{text}");
        } else {
            assert_eq!(text, b"one \xff\ntwo [continues]\n");
        }
        let status = output.status();
        assert_eq!(status[0].path, path.display().to_string());
        assert_eq!(status[0].dropped, 0);
    }
}

#[test]
fn files_stay_tagged_whatever_the_format_of_the_streams() {
    let dir = file::tests::TestDir::new("output-format-files");
    let path = dir.path().join("out.log");
    let config = OutputConfig {
        stdout: Sink::File(path.clone()),
        stderr: Sink::Null,
        format: handover_proto::logline::Format::Json,
        ..OutputConfig::default()
    };
    let output = Output::open(&config).unwrap();
    let origin = Origin {
        generation: 2,
        index: 1,
        pid: 9,
        program: b"app",
    };
    output.line(Stream::Stdout, &origin, b"hello", false);
    output.finish(Duration::from_secs(10));
    let text = std::fs::read_to_string(&path).unwrap();
    let tag = handover_proto::logtag::Tag::parse(text.as_bytes()).expect("a tagged line");
    assert_eq!((tag.generation, tag.worker, tag.pid), (2, 1, 9), "{text}");
    assert!(text.ends_with(" stdout: hello\n"), "{text}");
}

#[test]
fn both_streams_share_one_writer_per_file() {
    let dir = file::tests::TestDir::new("output-shared");
    let path = dir.path().join("both.log");
    let config = OutputConfig {
        stdout: Sink::File(path.clone()),
        stderr: Sink::File(path.clone()),
        ..OutputConfig::default()
    };
    let output = Output::open(&config).unwrap();
    assert_eq!(output.status().len(), 1);
    let origin = Origin {
        generation: 1,
        index: 0,
        pid: 7,
        program: b"app",
    };
    for i in 0..100 {
        let stream = if i % 2 == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        output.line(stream, &origin, format!("{i}").as_bytes(), false);
    }
    output.finish(Duration::from_secs(10));
    let text = std::fs::read_to_string(&path).unwrap();
    let numbers: Vec<u32> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(numbers, (0..100).collect::<Vec<_>>());
}

#[test]
fn an_unopenable_file_names_the_key_and_path() {
    let config = OutputConfig {
        stderr: Sink::File("/nonexistent-dir/x.log".into()),
        ..OutputConfig::default()
    };
    let err = Output::open(&config).unwrap_err().to_string();
    assert!(
        err.starts_with("logs.stderr: cannot open /nonexistent-dir/x.log: "),
        "{err}"
    );
}

#[test]
fn a_full_device_drops_lines_and_counts_them_exactly() {
    let config = OutputConfig {
        stdout: Sink::File("/dev/full".into()),
        stderr: Sink::Null,
        buffer: 64 * 1024,
        ..OutputConfig::default()
    };
    let output = Output::open(&config).unwrap();
    let origin = Origin {
        generation: 1,
        index: 0,
        pid: 7,
        program: b"app",
    };
    let line = [b'x'; 100];
    for _ in 0..10_000 {
        output.line(Stream::Stdout, &origin, &line, false);
    }
    output.finish(Duration::from_secs(10));
    // Nothing can be written to /dev/full: every line is dropped, and counted, while
    // waiting (the buffer was full) or at the end (what was still buffered).
    assert_eq!(output.status()[0].dropped, 10_000);
}
