//! `[logs]`: sinks, sizes and rotation settings.

use crate::config::tests::{assert_err, ok, MIN};

use super::*;

#[test]
fn logs_default_to_inherit_with_rotation_settings() {
    let logs = ok(MIN).logs;
    assert_eq!(logs, LogsConfig::default());
    assert_eq!(logs.stdout, LogSink::Inherit);
    assert_eq!(logs.max_line, 16 * 1024);
    assert_eq!(logs.max_size, 10 * 1024 * 1024);
    assert_eq!((logs.keep, logs.compress, logs.tag), (10, true, true));
    assert_eq!(logs.buffer, 1024 * 1024);
}

#[test]
fn logs_sinks_and_sizes_are_parsed() {
    let logs = ok(&format!(
        "{MIN}[logs]\nstdout = \"/var/log/app.log\"\nstderr = \"-\"\ntag = false\n\
         max_line = \"1KiB\"\nmax_size = 0\nkeep = 0\ncompress = false\nbuffer = \"64K\"\n"
    ))
    .logs;
    assert_eq!(logs.stdout, LogSink::File("/var/log/app.log".into()));
    assert_eq!(logs.stderr, LogSink::Own);
    assert_eq!(
        (logs.max_line, logs.max_size, logs.buffer),
        (1024, 0, 65536)
    );
    assert_eq!((logs.keep, logs.compress, logs.tag), (0, false, false));
    let logs = ok(&format!(
        "{MIN}[logs]\nstdout = \"/dev/null\"\nstderr = \"inherit\"\nmax_size = 4096\n"
    ))
    .logs;
    assert_eq!(
        (logs.stdout, logs.stderr),
        (LogSink::Null, LogSink::Inherit)
    );
    assert_eq!(logs.max_size, 4096);
}

#[test]
fn bad_logs_settings_are_located_and_explained() {
    let at = |body: &str| format!("{MIN}[logs]\n{body}\n");
    assert_err(
        &at("stdout = \"app.log\""),
        4,
        10,
        &["logs.stdout", "absolute path"],
    );
    assert_err(&at("stderr = \"\""), 4, 10, &["logs.stderr", "/dev/null"]);
    assert_err(&at("stdout = \"/var/log/\""), 4, 10, &["directory"]);
    assert_err(&at("stdout = 1"), 4, 10, &["expected a string"]);
    assert_err(
        &at("max_line = \"10\""),
        4,
        12,
        &["logs.max_line", "between 256B and 1MiB"],
    );
    assert_err(&at("max_line = \"2MiB\""), 4, 12, &["got 2097152 bytes"]);
    assert_err(
        &at("max_size = \"1KiB\""),
        4,
        12,
        &["0 or between 4KiB and 1TiB"],
    );
    assert_err(
        &at("max_size = \"10MB\""),
        4,
        12,
        &["unknown size unit \"MB\""],
    );
    assert_err(&at("max_size = -1"), 4, 12, &["negative"]);
    assert_err(
        &at("max_size = \"99999999999999999999T\""),
        4,
        12,
        &["too large"],
    );
    assert_err(&at("max_size = 1.5"), 4, 12, &["expected a size"]);
    assert_err(&at("buffer = \"1KiB\""), 4, 10, &["logs.buffer", "64KiB"]);
    assert_err(
        &at("keep = 10001"),
        4,
        8,
        &["logs.keep", "between 0 and 10000"],
    );
    assert_err(&at("tag = \"yes\""), 4, 7, &["logs.tag", "true or false"]);
    assert_err(&at("rotate = 3"), 4, 1, &["rotate"]);
    assert_err(
        &at("format = \"JSON\""),
        4,
        10,
        &["logs.format", "\"JSON\" is not a log format", "\"logfmt\""],
    );
    assert_err(
        &at("format = 1"),
        4,
        10,
        &["logs.format", "expected a string"],
    );
}

#[test]
fn log_formats_are_parsed() {
    assert_eq!(ok(MIN).logs.format, LogFormat::Text);
    for (name, format) in [
        ("text", LogFormat::Text),
        ("logfmt", LogFormat::Logfmt),
        ("json", LogFormat::Json),
    ] {
        let logs = ok(&format!("{MIN}[logs]\nformat = \"{name}\"\n")).logs;
        assert_eq!(logs.format, format, "{name}");
    }
}
