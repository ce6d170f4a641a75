//! Workers' output under `[logs]`: files with rotation and gzip, `keep`, reopening on SIGUSR1
//! and copytruncate, a full disk (scenario 40), lines without end (41), hostile bytes (42),
//! `/dev/null`, `handover logs` and the `logs` part of `handover status --json`.
//!
//! What is checked is what a user would check: the lines in the files, the file names, the
//! warnings in handover's log, the counts `status` reports. Load is bounded by line counts;
//! deadlines only guard against hangs, and no assertion depends on how fast anything is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use handover_tests::harness::{
    self, alive, binary, collect_output, run_handover, Handover, Lines, Options, TempDir, GUARD,
};
use serde_json::Value;

/// The guard for waits that include compressing hundreds of rotated files, or writing tens of
/// megabytes, in a debug build. Only a guard against hangs.
const SETTLE: Duration = Duration::from_secs(180);

/// The marker that ends every piece of a split line but the last.
const CONTINUES: &str = " [continues]";

// ----------------------------------------------------------------------------------------
// What the test worker writes (the same formulas as in test-worker.rs)
// ----------------------------------------------------------------------------------------

/// The text of flood line `n` (without its newline) when lines are `line_bytes` long with the
/// newline: `line 00000001 abcdef...`.
fn flood_text(n: u64, line_bytes: usize) -> String {
    let mut text = format!("line {n:08} ");
    let mut letter = 0u8;
    while text.len() + 1 < line_bytes {
        text.push(char::from(b'a' + letter));
        letter = (letter + 1) % 26;
    }
    text
}

/// `len` bytes of the big-line pattern from `offset` on: ten-byte blocks, each its own
/// offset in nine digits and a `.`.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|k| {
            let i = offset + k;
            let pos = i % 10;
            if pos == 9 {
                b'.'
            } else {
                let block = (i - pos) % 1_000_000_000;
                b'0' + ((block / 10u64.pow(8 - pos as u32)) % 10) as u8
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ----------------------------------------------------------------------------------------
// Tags, rotated names, files
// ----------------------------------------------------------------------------------------

/// Whether `s` has the shape of `template`, where `d` stands for a digit.
fn shaped(s: &str, template: &str) -> bool {
    s.len() == template.len()
        && s.bytes().zip(template.bytes()).all(|(c, t)| match t {
            b'd' => c.is_ascii_digit(),
            _ => c == t,
        })
}

/// A tag's time: `2026-11-21T10:00:00.123Z`.
fn is_tag_time(s: &str) -> bool {
    shaped(s, "dddd-dd-ddTdd:dd:dd.dddZ")
}

/// The stamp of a rotated file: `2026-11-21T10-00-00.123Z`.
fn is_rotation_stamp(s: &str) -> bool {
    shaped(s, "dddd-dd-ddTdd-dd-dd.dddZ")
}

/// A tagged line, split into its parts.
#[derive(Debug, PartialEq)]
struct Tagged<'a> {
    time: &'a str,
    generation: u64,
    worker: u64,
    pid: i32,
    stream: &'a str,
    text: &'a str,
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `TIME gen=G worker=W pid=P STREAM: TEXT` (without the newline), strictly.
fn parse_tagged(line: &str) -> Option<Tagged<'_>> {
    let (time, rest) = line.split_at_checked(24)?;
    if !is_tag_time(time) {
        return None;
    }
    let rest = rest.strip_prefix(" gen=")?;
    let (generation, rest) = rest.split_once(" worker=")?;
    let (worker, rest) = rest.split_once(" pid=")?;
    let (pid, rest) = rest.split_once(' ')?;
    // The stream has no ": " in it, so the first one ends it whatever the text holds.
    let (stream, text) = rest.split_once(": ")?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    Some(Tagged {
        time,
        generation: digits(generation)?,
        worker: digits(worker)?,
        pid: i32::try_from(digits(pid)?).ok()?,
        stream,
        text,
    })
}

/// The complete lines of `bytes` (each without its newline); a last line still being
/// written is left out.
fn complete_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    bytes[..end]
        .split(|&b| b == b'\n')
        .take(bytes[..end].iter().filter(|&&b| b == b'\n').count())
        .collect()
}

/// Counts newlines.
fn newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// The text lines of a file that must be whole, tagged UTF-8 lines.
fn text_lines(bytes: &[u8], what: &str) -> Vec<String> {
    let text = std::str::from_utf8(bytes)
        .unwrap_or_else(|e| panic!("{what} is not UTF-8: {e}"))
        .to_string();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{what} ends inside a line"
    );
    text.lines().map(str::to_string).collect()
}

/// Tagged flood lines written by one worker on one stream.
struct Flood {
    worker: u64,
    pid: i32,
    stream: &'static str,
    line_bytes: usize,
}

impl Flood {
    /// The numbers of the complete lines in `bytes`, after checking that each is a whole,
    /// correctly tagged flood line; `Err` says what is wrong with the first bad one.
    fn numbers(&self, bytes: &[u8], what: &str) -> Result<Vec<u64>, String> {
        let mut numbers = Vec::new();
        for (i, raw) in complete_lines(bytes).into_iter().enumerate() {
            let line = std::str::from_utf8(raw)
                .map_err(|e| format!("{what} line {}: not UTF-8 ({e})", i + 1))?;
            let bad = |why: &str| format!("{what} line {}: {why}: {line:?}", i + 1);
            let tag = parse_tagged(line).ok_or_else(|| bad("not a tagged line"))?;
            if tag.generation != 1
                || tag.worker != self.worker
                || tag.pid != self.pid
                || tag.stream != self.stream
            {
                return Err(bad(&format!(
                    "not tagged gen=1 worker={} pid={} {}",
                    self.worker, self.pid, self.stream
                )));
            }
            let n = tag
                .text
                .strip_prefix("line ")
                .and_then(|t| t.get(..8))
                .and_then(digits)
                .ok_or_else(|| bad("not a flood line"))?;
            if tag.text != flood_text(n, self.line_bytes) {
                return Err(bad("not a whole flood line"));
            }
            numbers.push(n);
        }
        Ok(numbers)
    }

    /// [`Flood::numbers`], panicking on a bad line: complete lines never change, so a bad one
    /// stays bad and waiting longer would not help.
    fn must(&self, bytes: &[u8], what: &str) -> Vec<u64> {
        self.numbers(bytes, what).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The rotated files of `base` in `dir` (`base.` and anything), in name order.
fn rotated_names(dir: &Path, base: &str) -> Vec<String> {
    let prefix = format!("{base}.");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// Whether `name` is `base.YYYY-MM-DDTHH-MM-SS.mmmZ.gz`.
fn is_compressed_rotation(name: &str, base: &str) -> bool {
    name.strip_prefix(base)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix(".gz"))
        .is_some_and(is_rotation_stamp)
}

/// `gzip -dc PATH`, or `None` while the file is not a whole gzip file.
fn gunzip(path: &Path) -> Option<Vec<u8>> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run gzip: {e}"));
    out.status.success().then_some(out.stdout)
}

/// The rotated files of `base`, decompressed, in name order, once none is waiting to be
/// compressed and every one is a whole gzip file; decompressed files are kept in `cache`.
fn decompressed_rotations(
    dir: &Path,
    base: &str,
    cache: &mut BTreeMap<String, Vec<u8>>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let names = rotated_names(dir, base);
    if let Some(pending) = names.iter().find(|n| !n.ends_with(".gz")) {
        return Err(format!("{pending} is not compressed yet"));
    }
    cache.retain(|name, _| names.contains(name));
    let mut files = Vec::new();
    for name in names {
        if !cache.contains_key(&name) {
            let bytes = gunzip(&dir.join(&name))
                .ok_or_else(|| format!("{name} is not a whole gzip file yet"))?;
            cache.insert(name.clone(), bytes);
        }
        files.push((name.clone(), cache[&name].clone()));
    }
    Ok(files)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ----------------------------------------------------------------------------------------
// Waiting, status, processes
// ----------------------------------------------------------------------------------------

/// Polls `check` until it returns `Ok`; panics after `limit` with the last `Err`.
fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) => assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last: {state}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_until`], but gives up at once, showing handover's log, when handover is gone.
fn wait_on<T>(
    h: &Handover,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    wait_until(what, limit, || {
        let result = check();
        if result.is_err() && !alive(h.pid()) {
            panic!(
                "handover exited while the test waited for {what}; its log:\n{}",
                tail(&h.log.text(), 30)
            );
        }
        result
    })
}

/// Waits until `count` lines of handover's output contain `needle`; returns the last.
fn wait_log_count(h: &Handover, needle: &str, count: usize) -> String {
    wait_on(h, &format!("{needle:?} in handover's log"), GUARD, || {
        let text = h.log.text();
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        match hits.get(count.wrapping_sub(1)) {
            Some(line) => Ok(line.to_string()),
            None => Err(format!(
                "{} of {count} so far; the log ends with:\n{}",
                hits.len(),
                tail(&text, 10)
            )),
        }
    })
}

/// Waits until a line of handover's output contains `needle`; returns it.
fn wait_log(h: &Handover, needle: &str) -> String {
    wait_log_count(h, needle, 1)
}

/// A file's content as it is now, for polling (it may not exist yet).
fn read_now(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `logs` entry of `path` in a status object.
fn log_entry<'a>(status: &'a Value, path: &str) -> Option<&'a Value> {
    status["logs"]
        .as_array()?
        .iter()
        .find(|l| l["path"].as_str() == Some(path))
}

/// The lines dropped so far for `path`, as `status --json` reports them.
fn dropped(h: &Handover, path: &str) -> Result<u64, String> {
    let status = h.status_json();
    log_entry(&status, path)
        .and_then(|l| l["dropped"].as_u64())
        .ok_or_else(|| format!("no logs entry with a dropped count for {path}: {status}"))
}

/// The pid of worker `index` of generation 1, once it has one.
fn worker_pid(h: &Handover, index: u64) -> i32 {
    wait_on(h, &format!("worker {index} to have a pid"), GUARD, || {
        let status = h.status_json();
        status["generations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["generation"].as_u64() == Some(1))
            .flat_map(|g| g["workers"].as_array().into_iter().flatten())
            .find(|w| w["index"].as_u64() == Some(index))
            .and_then(|w| w["pid"].as_i64())
            .map(|p| p as i32)
            .ok_or_else(|| status.to_string())
    })
}

/// handover's peak resident memory (`VmHWM`), in KiB.
fn vm_hwm_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// One HTTP request to 127.0.0.1:`port`; returns the whole response.
fn http_get(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.set_write_timeout(Some(GUARD)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

/// The sum of N over handover's `PATH: writing again; N lines were dropped` lines.
fn reported_drops(log: &str, path: &str) -> u64 {
    let prefix = format!("{path}: writing again; ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            let n = rest.strip_suffix(" lines were dropped")?;
            Some(digits(n).unwrap_or_else(|| panic!("a drop count that is not a number: {l}")))
        })
        .sum()
}

/// The end of a long text, for failure messages.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `handover logs` process that is killed when the test is done with it.
struct LogsChild {
    child: Child,
    out: Lines,
    err: Lines,
}

impl LogsChild {
    fn spawn(args: &[&str]) -> LogsChild {
        let mut child = Command::new(binary("handover"))
            .arg("logs")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handover logs");
        let (out, err) = (Lines::default(), Lines::default());
        collect_output(child.stdout.take().expect("stdout"), out.clone(), false);
        collect_output(child.stderr.take().expect("stderr"), err.clone(), false);
        LogsChild { child, out, err }
    }
}

impl Drop for LogsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `handover logs ARGS` to completion.
fn logs_cli(args: &[&str]) -> (ExitStatus, Vec<String>, String) {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let (status, out, err) = run_handover(&all, &[]);
    assert!(!err.contains("panicked"), "{err}");
    (status, out.lines().map(str::to_string).collect(), err)
}

// ----------------------------------------------------------------------------------------
// Rotation, gzip and keep
// ----------------------------------------------------------------------------------------

/// A flood of 200,000 lines through a 64 KiB `max_size`: once the writer has settled, every
/// rotated file is `out.log.YYYY-MM-DDTHH-MM-SS.mmmZ.gz` (none left uncompressed), holds no
/// more than 64 KiB (unless it is a single line), and the rotated files in name order, then
/// out.log, hold every line exactly once and in order, each tagged with the worker's pid.
#[test]
fn flood_rotates_into_gzip_files_without_losing_a_line() {
    const N: u64 = 200_000;
    const LINE: usize = 64;
    const MAX_SIZE: usize = 64 * 1024;
    let h = Handover::start(
        "logs-rotate",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--flood-stdout", "{N}", "--line-bytes", "{LINE}"]

[logs]
stdout = "{{dir}}/out.log"
max_size = "64KiB"
keep = 10000
buffer = "64MiB"
"#
        ),
        Options::default(),
    );
    // The worker's stderr goes to handover's log: it finished, so it never waited for a disk.
    wait_log(&h, "flood done");
    let pid = worker_pid(&h, 0);
    let dir = h.dir.path().to_path_buf();
    let path = format!("{}/out.log", dir.display());
    let mut cache = BTreeMap::new();
    let (rotated, current) = wait_on(&h, "the writer to settle", SETTLE, || {
        let rotated = decompressed_rotations(&dir, "out.log", &mut cache)?;
        let current = read_now(&dir.join("out.log"))?;
        let lines: usize =
            rotated.iter().map(|(_, b)| newlines(b)).sum::<usize>() + newlines(&current);
        if lines as u64 == N {
            Ok((rotated, current))
        } else {
            Err(format!(
                "{lines} of {N} lines in out.log and {} rotated files; dropped: {:?}",
                rotated.len(),
                dropped(&h, &path)
            ))
        }
    });
    assert!(
        rotated.len() as u64 >= (N * LINE as u64) / MAX_SIZE as u64,
        "far too few rotations: {}",
        rotated.len()
    );
    let flood = Flood {
        worker: 0,
        pid,
        stream: "stdout",
        line_bytes: LINE,
    };
    let mut all = Vec::new();
    for (name, bytes) in &rotated {
        assert!(
            is_compressed_rotation(name, "out.log"),
            "a rotated file named {name}"
        );
        let numbers = flood.must(bytes, name);
        assert!(
            bytes.len() <= MAX_SIZE || numbers.len() == 1,
            "{name} holds {} bytes, more than max_size",
            bytes.len()
        );
        all.extend(numbers);
    }
    all.extend(flood.must(&current, "out.log"));
    let expected: Vec<u64> = (1..=N).collect();
    assert!(
        all == expected,
        "the files do not hold lines 1..={N} exactly once in order: {} lines, first misplaced at {:?}",
        all.len(),
        all.iter().zip(&expected).position(|(a, b)| a != b)
    );
    assert!(current.ends_with(b"\n"), "out.log ends inside a line");
    let status = h.status_json();
    let entry =
        log_entry(&status, &path).unwrap_or_else(|| panic!("no logs entry for out.log: {status}"));
    assert_eq!(entry["dropped"].as_u64(), Some(0), "{entry}");
    assert_eq!(
        entry["rotations"].as_u64(),
        Some(rotated.len() as u64),
        "{entry}"
    );
}

/// `keep = 3` after some hundred rotations: exactly three rotated files remain, and they are
/// the newest: their lines run without a gap up to the first line of out.log, which ends
/// with the flood's last line.
#[test]
fn keep_leaves_the_newest_rotated_files() {
    const N: u64 = 20_000;
    const LINE: usize = 64;
    let h = Handover::start(
        "logs-keep",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--flood-stdout", "{N}", "--line-bytes", "{LINE}"]

[logs]
stdout = "{{dir}}/out.log"
max_size = "16KiB"
keep = 3
buffer = "64MiB"
"#
        ),
        Options::default(),
    );
    wait_log(&h, "flood done");
    let pid = worker_pid(&h, 0);
    let dir = h.dir.path().to_path_buf();
    let flood = Flood {
        worker: 0,
        pid,
        stream: "stdout",
        line_bytes: LINE,
    };
    let mut cache = BTreeMap::new();
    let mut previous: Option<(Vec<String>, usize)> = None;
    let (rotated, current) = wait_on(&h, "the writer to settle", SETTLE, || {
        let rotated = decompressed_rotations(&dir, "out.log", &mut cache)?;
        let current = read_now(&dir.join("out.log"))?;
        let last = flood.must(&current, "out.log").last().copied();
        if last != Some(N) {
            return Err(format!("out.log ends with line {last:?}"));
        }
        // Old files may still be on their way out: settled is when nothing changes.
        let snapshot = (
            rotated.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            current.len(),
        );
        if previous.as_ref() != Some(&snapshot) {
            previous = Some(snapshot);
            std::thread::sleep(Duration::from_millis(300));
            return Err("the files are still changing".into());
        }
        Ok((rotated, current))
    });
    let names: Vec<&String> = rotated.iter().map(|(n, _)| n).collect();
    assert_eq!(rotated.len(), 3, "rotated files left: {names:?}");
    let mut all = Vec::new();
    for (name, bytes) in &rotated {
        assert!(
            is_compressed_rotation(name, "out.log"),
            "a rotated file named {name}"
        );
        all.extend(flood.must(bytes, name));
    }
    all.extend(flood.must(&current, "out.log"));
    let first = all[0];
    assert!(first > 1, "the oldest rotated files were not deleted");
    let expected: Vec<u64> = (first..=N).collect();
    assert_eq!(
        all, expected,
        "the kept files are not the newest, or lines are missing"
    );
}

// ----------------------------------------------------------------------------------------
// logrotate: create mode (SIGUSR1) and copytruncate
// ----------------------------------------------------------------------------------------

/// logrotate's create mode during a paced flood, five times: out.log is renamed to out.log.R
/// and handover gets SIGUSR1; out.log is there again after each signal, and out.log.1 to
/// out.log.5 then out.log hold every line exactly once, in order (lines written between the
/// rename and the signal land in the renamed file).
#[test]
fn sigusr1_reopens_after_a_rename_without_losing_a_line() {
    const N: u64 = 30_000;
    const LINE: usize = 64;
    const ROUNDS: u32 = 5;
    let h = Handover::start(
        "logs-usr1",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--flood-stdout", "{N}", "--line-bytes", "{LINE}", "--flood-rate", "3000"]

[logs]
stdout = "{{dir}}/out.log"
max_size = 0
"#
        ),
        Options::default(),
    );
    let dir = h.dir.path().to_path_buf();
    let out = dir.join("out.log");
    for round in 1..=ROUNDS {
        wait_on(&h, "lines in out.log", GUARD, || {
            match std::fs::metadata(&out) {
                Ok(m) if m.len() > 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        let renamed = dir.join(format!("out.log.{round}"));
        std::fs::rename(&out, &renamed).expect("rename out.log");
        h.signal(libc::SIGUSR1);
        wait_on(&h, "out.log to be created again", GUARD, || {
            if out.exists() {
                Ok(())
            } else {
                Err("no out.log".into())
            }
        });
        // Let some lines land in the new file before the next rename.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        h.log.count("flood done"),
        0,
        "the flood ended before the last rename; the test needs a slower flood"
    );
    wait_log(&h, "flood done");
    let pid = worker_pid(&h, 0);
    let flood = Flood {
        worker: 0,
        pid,
        stream: "stdout",
        line_bytes: LINE,
    };
    let mut files: Vec<PathBuf> = (1..=ROUNDS)
        .map(|r| dir.join(format!("out.log.{r}")))
        .collect();
    files.push(out.clone());
    let all = wait_on(&h, "every line in the files", SETTLE, || {
        let mut all = Vec::new();
        for file in &files {
            all.extend(flood.must(&read_now(file)?, &file.display().to_string()));
        }
        if all.len() as u64 == N {
            Ok(all)
        } else {
            Err(format!("{} of {N} lines", all.len()))
        }
    });
    for file in &files[..files.len() - 1] {
        assert!(
            std::fs::metadata(file).unwrap().len() > 0,
            "{} is empty",
            file.display()
        );
    }
    let expected: Vec<u64> = (1..=N).collect();
    assert!(
        all == expected,
        "out.log.1..5 and out.log do not hold lines 1..={N} exactly once in order; first misplaced at {:?}",
        all.iter().zip(&expected).position(|(a, b)| a != b)
    );
    let status = h.status_json();
    let entry = log_entry(&status, &out.display().to_string())
        .unwrap_or_else(|| panic!("no logs entry for out.log: {status}"));
    assert_eq!(entry["dropped"].as_u64(), Some(0), "{entry}");
}

/// logrotate's copytruncate during a paced flood: out.log is copied, then truncated to 0.
/// Afterwards out.log holds no NUL byte (no hole where the old content was), only whole
/// tagged lines, all of them newer than the copy's, up to the flood's last line; its size is
/// what was written after the truncation, less than the old size plus that.
#[test]
fn copytruncate_leaves_no_hole() {
    const N: u64 = 20_000;
    const LINE: usize = 64;
    let h = Handover::start(
        "logs-copytruncate",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--flood-stdout", "{N}", "--line-bytes", "{LINE}", "--flood-rate", "3000"]

[logs]
stdout = "{{dir}}/out.log"
max_size = 0
"#
        ),
        Options::default(),
    );
    let dir = h.dir.path().to_path_buf();
    let out = dir.join("out.log");
    wait_on(&h, "64 KiB in out.log", GUARD, || {
        match std::fs::metadata(&out) {
            Ok(m) if m.len() >= 64 * 1024 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // What logrotate does: copy, then truncate in place.
    let copy = read(&out);
    std::fs::write(dir.join("out.log.1"), &copy).expect("write the copy");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&out)
        .expect("open out.log");
    let size_before = file.metadata().expect("metadata").len();
    file.set_len(0).expect("truncate out.log");
    drop(file);
    assert_eq!(
        h.log.count("flood done"),
        0,
        "the flood ended before the truncation; the test needs a slower flood"
    );
    wait_log(&h, "flood done");
    let pid = worker_pid(&h, 0);
    let flood = Flood {
        worker: 0,
        pid,
        stream: "stdout",
        line_bytes: LINE,
    };
    let after = wait_on(&h, "the flood's last line in out.log", SETTLE, || {
        let bytes = read_now(&out)?;
        if bytes.contains(&0) {
            // A hole: no use waiting, the assertions below say what is wrong.
            return Ok(bytes);
        }
        let last = flood.must(&bytes, "out.log").last().copied();
        if last == Some(N) {
            Ok(bytes)
        } else {
            Err(format!("out.log ends with line {last:?}"))
        }
    });
    assert_ne!(
        after.first(),
        Some(&0),
        "out.log starts with NUL bytes: handover wrote at its old offset, leaving a hole"
    );
    assert!(
        !after.contains(&0),
        "out.log holds NUL bytes: a hole at byte {:?}",
        after.iter().position(|&b| b == 0)
    );
    let copied = flood.must(&copy, "the copy");
    let last_copied = *copied.last().expect("lines in the copy");
    let numbers = flood.must(&after, "out.log");
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "out.log's lines are not in order"
    );
    assert!(
        numbers[0] > last_copied,
        "out.log holds line {} that the copy (up to {last_copied}) already has",
        numbers[0]
    );
    assert_eq!(*numbers.last().unwrap(), N);
    let written_after: u64 = complete_lines(&after)
        .iter()
        .map(|l| l.len() as u64 + 1)
        .sum();
    assert_eq!(
        after.len() as u64,
        written_after,
        "out.log holds more than its lines"
    );
    assert!(
        (after.len() as u64) < size_before + written_after,
        "out.log is {} bytes: the old {size_before} bytes plus what came after",
        after.len()
    );
}

// ----------------------------------------------------------------------------------------
// A full disk (scenario 40)
// ----------------------------------------------------------------------------------------

/// Why a tmpfs cannot be mounted in a mount namespace of its own here, or `None`.
fn mount_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let dir = TempDir::new("logs-mount-probe");
    let mut probe = Command::new("unshare");
    probe
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=64k tmpfs "$1""#)
        .arg("sh")
        .arg(dir.path());
    match probe.stdin(Stdio::null()).output() {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "cannot mount a tmpfs in a new mount namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Whether the test must be skipped (it says why); with `HANDOVER_REQUIRE_SYSTEMD` set, as
/// for the systemd tests, a missing capability fails instead.
fn skip_without_mounts() -> bool {
    let Some(reason) = mount_skip_reason() else {
        return false;
    };
    if std::env::var_os("HANDOVER_REQUIRE_SYSTEMD").is_some() {
        panic!("cannot mount a tmpfs, and HANDOVER_REQUIRE_SYSTEMD is set: {reason}");
    }
    eprintln!("skipped: {reason}");
    true
}

/// The log file sits on a 512 KiB tmpfs, mounted in handover's own mount namespace, of which
/// a filler takes all but 64 KiB. A flood fills it: handover warns `dropping workers' output:
/// No space left on device` once, the worker gets through the first 5,500 lines without
/// blocking and still answers HTTP, handover lives. Once the filler is deleted and the rest of
/// the flood written, handover says `writing again; N lines were dropped`, and the lines in the
/// file (all whole) plus N are exactly the 6,000 written, which is what `status` counts too.
#[test]
fn full_disk_drops_whole_lines_and_counts_them() {
    if skip_without_mounts() {
        return;
    }
    const K: u64 = 6_000;
    const PAUSE: u64 = 5_500;
    const LINE: usize = 64;
    let port = harness::free_port();
    // The tmpfs and its filler exist before handover opens the file.
    let mount = r#"mkdir -p "$1" && mount -t tmpfs -o size=512k tmpfs "$1" && head -c 458752 /dev/zero > "$1/filler" && shift && exec "$@""#;
    let h = Handover::start(
        "logs-full",
        &format!(
            r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{worker}}", "--ready-after", "0", "--serve", "--flood-stdout", "{K}", "--flood-rate", "5000", "--line-bytes", "{LINE}", "--flood-pause-at", "{PAUSE}", "{{dir}}/resume"]

[logs]
stdout = "{{dir}}/disk/out.log"
max_size = 0
buffer = "64KiB"
"#
        ),
        Options {
            wrapper: ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
                .into_iter()
                .map(str::to_string)
                .chain([mount.to_string(), "sh".into(), "{dir}/disk".into()])
                .collect(),
            ..Default::default()
        },
    );
    let hpid = h.pid();
    let dir = h.dir.path().to_path_buf();
    let path = format!("{}/disk/out.log", dir.display());
    // handover's view of the tmpfs, which is not mounted in the test's namespace.
    let inside = PathBuf::from(format!("/proc/{hpid}/root{}/disk", dir.display()));

    let warning = wait_log(&h, "dropping workers' output: No space left on device");
    assert!(
        warning.contains(&format!("{path}: dropping workers' output")),
        "{warning}"
    );
    wait_log(&h, &format!("flood paused after line {PAUSE}"));
    let wpid = worker_pid(&h, 0);
    let response = http_get(port);
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with(&format!("\r\n{wpid}\n")),
        "the worker did not answer while the disk was full: {response:?}"
    );
    assert!(alive(hpid), "handover died on a full disk");
    // Once per run of drops, not per line. (A run may also start earlier, when the writer
    // falls behind the flood for a moment; each run ends with its own count, checked below.)
    let runs = h.log.count("dropping workers' output");
    assert!(runs <= 2, "{runs} warnings: one per line?");

    // Space comes back; handover notices at its next attempt (within a second), and only
    // then does the flood go on: lines written while the buffer is still full are dropped.
    std::fs::remove_file(inside.join("filler")).expect("delete the filler");
    wait_log(&h, &format!("{path}: writing again; "));
    std::fs::write(dir.join("resume"), b"").expect("let the flood go on");
    wait_log(&h, "flood done");

    let flood = Flood {
        worker: 0,
        pid: wpid,
        stream: "stdout",
        line_bytes: LINE,
    };
    let file = inside.join("out.log");
    let (numbers, counted) = wait_on(&h, "every line written or counted", SETTLE, || {
        let numbers = flood.must(&read_now(&file)?, "out.log");
        let counted = dropped(&h, &path)?;
        if numbers.len() as u64 + counted == K {
            Ok((numbers, counted))
        } else {
            Err(format!(
                "{} lines in the file, {counted} dropped; handover's log:\n{}",
                numbers.len(),
                tail(&h.log.text(), 20)
            ))
        }
    });
    let bytes = read(&file);
    assert!(bytes.ends_with(b"\n"), "out.log ends inside a line");
    assert_eq!(
        complete_lines(&bytes).len(),
        numbers.len(),
        "out.log holds something else than whole flood lines"
    );
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "lines repeated or out of order"
    );
    assert!(counted > 0, "nothing was dropped: the disk never filled");
    assert_eq!(
        numbers.last().copied(),
        Some(K),
        "the lines after the space came back were lost"
    );
    assert_eq!(
        h.log.count(&format!("{path}: writing again; ")),
        h.log.count("dropping workers' output"),
        "every run of drops ends with its count"
    );
    let reported = reported_drops(&h.log.text(), &path);
    assert_eq!(
        reported,
        counted,
        "the drops logged as `writing again` are not the drops counted; log:\n{}",
        tail(&h.log.text(), 20)
    );
    assert!(alive(hpid));
}

/// `stdout = "/dev/full"`: every write fails with ENOSPC, yet the worker finishes its flood,
/// handover warns and lives, and `status --json` counts every line as dropped.
#[test]
fn dev_full_drops_everything_and_counts_it() {
    const N: u64 = 20_000;
    let h = Handover::start(
        "logs-devfull",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--flood-stdout", "{N}"]

[logs]
stdout = "/dev/full"
"#
        ),
        Options::default(),
    );
    wait_log(&h, "flood done");
    wait_log(
        &h,
        "/dev/full: dropping workers' output: No space left on device",
    );
    assert!(alive(h.pid()), "handover died writing to /dev/full");
    // While handover runs, up to two buffers of lines are held for the next attempt (the
    // device might take writes again); the rest are dropped and counted already.
    let counted = wait_on(&h, "lines counted as dropped", SETTLE, || {
        let counted = dropped(&h, "/dev/full")?;
        if counted > 0 {
            Ok(counted)
        } else {
            Err(format!("{counted} of {N} dropped"))
        }
    });
    assert!(counted <= N, "{counted} dropped of {N} written");
    assert!(alive(h.pid()));
    // At exit the held lines cannot be written either: every line is accounted for.
    let mut h = h;
    let status = h.stop();
    assert!(status.success(), "handover exited with {status}");
    wait_log(&h, &format!("/dev/full: {N} lines were dropped"));
}

// ----------------------------------------------------------------------------------------
// Lines without end (scenario 41)
// ----------------------------------------------------------------------------------------

/// The pieces of one split line: each tagged by `pid` on stdout; all but the last end with
/// the marker and carry exactly `max_line` bytes. Returns the pieces' texts without the
/// marker, and whether the last piece had the marker too.
fn pieces(bytes: &[u8], pid: i32, max_line: usize) -> (Vec<String>, bool) {
    let lines = text_lines(bytes, "out.log");
    let mut texts = Vec::new();
    let mut last_continues = false;
    for (i, line) in lines.iter().enumerate() {
        let tag = parse_tagged(line).unwrap_or_else(|| panic!("piece {i} is not tagged"));
        assert_eq!(
            (tag.generation, tag.worker, tag.pid, tag.stream),
            (1, 0, pid, "stdout"),
            "piece {i}"
        );
        let (text, continues) = match tag.text.strip_suffix(CONTINUES) {
            Some(text) => (text, true),
            None => (tag.text, false),
        };
        if i + 1 < lines.len() {
            assert!(continues, "piece {i} of {} lacks the marker", lines.len());
        }
        if continues {
            assert_eq!(text.len(), max_line, "piece {i} is not max_line bytes");
        }
        last_continues = continues;
        texts.push(text.to_string());
    }
    (texts, last_continues)
}

/// One 10 MiB line with `max_line = "24KiB"`: ceil(10 MiB / 24 KiB) = 427 pieces, every one
/// but the last ending with ` [continues]`, which together are exactly the line; handover's
/// peak memory grows by far less than the line.
#[test]
fn ten_mib_line_is_split_into_pieces() {
    const BIG: usize = 10 * 1024 * 1024;
    const MAX_LINE: usize = 24 * 1024;
    let h = Handover::start(
        "logs-bigline",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--output-after-file", "{{dir}}/go", "--big-line", "{BIG}", "--byte-rate", "8388608"]

[logs]
stdout = "{{dir}}/out.log"
max_line = "24KiB"
max_size = 0
"#
        ),
        Options::default(),
    );
    wait_log(&h, "all 1 workers ready");
    let pid = worker_pid(&h, 0);
    let hwm_before = vm_hwm_kib(h.pid());
    let dir = h.dir.path().to_path_buf();
    std::fs::write(dir.join("go"), b"").expect("start the output");
    wait_log(&h, "big line done");
    let expected_pieces = BIG.div_ceil(MAX_LINE);
    let out = dir.join("out.log");
    let bytes = wait_on(&h, "every piece in out.log", SETTLE, || {
        let bytes = read_now(&out)?;
        match newlines(&bytes) {
            n if n >= expected_pieces && bytes.ends_with(b"\n") => Ok(bytes),
            n => Err(format!("{n} of {expected_pieces} pieces")),
        }
    });
    let hwm_after = vm_hwm_kib(h.pid());
    let (texts, last_continues) = pieces(&bytes, pid, MAX_LINE);
    assert_eq!(texts.len(), expected_pieces);
    assert!(!last_continues, "the last piece ends the line: no marker");
    let joined = texts.concat();
    assert!(
        joined.as_bytes() == pattern(0, BIG).as_slice(),
        "the pieces do not make up the line ({} bytes joined)",
        joined.len()
    );
    assert!(
        hwm_after < hwm_before + 8 * 1024,
        "handover's peak memory grew from {hwm_before} KiB to {hwm_after} KiB for one line"
    );
}

/// Output that never ends a line: pieces appear in the file while the worker is still
/// writing, each `max_line` bytes with the marker, together the stream so far; handover's
/// peak memory grows by far less than the 16 MiB written.
#[test]
fn endless_line_is_written_while_it_grows() {
    const BYTES: usize = 16 * 1024 * 1024;
    const MAX_LINE: usize = 4096;
    let h = Handover::start(
        "logs-endless",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--output-after-file", "{{dir}}/go", "--endless-no-newline", "{BYTES}", "--byte-rate", "4194304"]

[logs]
stdout = "{{dir}}/out.log"
max_line = "4KiB"
max_size = 0
"#
        ),
        Options::default(),
    );
    wait_log(&h, "all 1 workers ready");
    let pid = worker_pid(&h, 0);
    let hwm_before = vm_hwm_kib(h.pid());
    let dir = h.dir.path().to_path_buf();
    let out = dir.join("out.log");
    std::fs::write(dir.join("go"), b"").expect("start the output");
    wait_on(&h, "pieces while the worker writes", GUARD, || {
        let n = std::fs::read(&out).map(|b| newlines(&b)).unwrap_or(0);
        if n >= 16 {
            Ok(())
        } else {
            Err(format!("{n} pieces"))
        }
    });
    // Read after the file: the worker had not finished when the pieces were there.
    assert_eq!(
        h.log.count("endless done"),
        0,
        "the worker finished before any piece was written"
    );
    wait_log(&h, "endless done");
    let bytes = wait_on(&h, "the pieces of everything written", SETTLE, || {
        let bytes = read_now(&out)?;
        let n = newlines(&bytes);
        if n >= BYTES / MAX_LINE - 1 {
            Ok(bytes)
        } else {
            Err(format!("{n} pieces"))
        }
    });
    let hwm_after = vm_hwm_kib(h.pid());
    let (texts, last_continues) = pieces(&bytes, pid, MAX_LINE);
    assert!(
        last_continues,
        "no newline was ever written: every piece continues"
    );
    let joined = texts.concat();
    assert!(joined.len() >= BYTES - MAX_LINE && joined.len() <= BYTES);
    assert!(
        joined.as_bytes() == pattern(0, joined.len()).as_slice(),
        "the pieces are not the stream"
    );
    assert!(alive(pid), "the worker is alive, its line unfinished");
    assert!(
        hwm_after < hwm_before + 8 * 1024,
        "handover's peak memory grew from {hwm_before} KiB to {hwm_after} KiB"
    );
}

// ----------------------------------------------------------------------------------------
// Hostile bytes (scenario 42)
// ----------------------------------------------------------------------------------------

/// Lines a worker may write, and their text in a tagged line.
const HOSTILE: [(&[u8], &str); 10] = [
    (b"\xff\xfe\n", r"\xff\xfe"),
    (b"nul\x00byte\n", r"nul\x00byte"),
    (b"cr\rreturn\n", r"cr\x0dreturn"),
    (b"\x1b[31mred\x1b[0m\n", r"\x1b[31mred\x1b[0m"),
    (b"h\xc3\xa9llo \xe2\x9c\x93\n", "héllo ✓"),
    (
        b"tab\tstays, del\x7f bell\x07\n",
        "tab\tstays, del\\x7f bell\\x07",
    ),
    (
        b"cut \xe2\x9c and overlong \xc0\xaf\n",
        r"cut \xe2\x9c and overlong \xc0\xaf",
    ),
    // Lines dressed up as another worker's, or as handover's own.
    (
        b"2026-11-21T10:00:00.123Z gen=1 worker=1 pid=1 stderr: forged\n",
        "2026-11-21T10:00:00.123Z gen=1 worker=1 pid=1 stderr: forged",
    ),
    (
        b"x\r2026-11-21T10:00:00.123Z gen=9 worker=0 pid=1 stdout: forged over\n",
        r"x\x0d2026-11-21T10:00:00.123Z gen=9 worker=0 pid=1 stdout: forged over",
    ),
    (
        b"2026-11-21T10:00:00.123Z  WARN /var/log/app.log: writing again; 0 lines were dropped\n",
        "2026-11-21T10:00:00.123Z  WARN /var/log/app.log: writing again; 0 lines were dropped",
    ),
];

/// The worker arguments that write every hostile line to `stream` (stdout or stderr).
fn hostile_args(stream: &str) -> String {
    HOSTILE
        .iter()
        .map(|(raw, _)| format!(r#""--write-{stream}-hex", "{}""#, hex(raw)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tagged file gets each byte that is not printable UTF-8 as `\xNN`, keeps UTF-8 and tabs,
/// and is valid UTF-8 with no control character but newline and tab; every line starts with
/// the real tag, so forged tags only ever follow it.
#[test]
fn tagged_file_escapes_hostile_bytes() {
    let h = Handover::start(
        "logs-hostile",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", {}]

[logs]
stdout = "{{dir}}/out.log"
"#,
            hostile_args("stdout")
        ),
        Options::default(),
    );
    wait_log(&h, "hex done");
    let pid = worker_pid(&h, 0);
    let out = h.dir.path().join("out.log");
    let bytes = wait_on(&h, "every line in out.log", GUARD, || {
        let bytes = read_now(&out)?;
        match newlines(&bytes) {
            n if n >= HOSTILE.len() => Ok(bytes),
            n => Err(format!("{n} lines")),
        }
    });
    let text = String::from_utf8(bytes).expect("a tagged file is valid UTF-8");
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| c.is_ascii_control() && c != '\n' && c != '\t')
        .collect();
    assert!(bad.is_empty(), "control characters in the file: {bad:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), HOSTILE.len(), "{text}");
    for (line, (_, expected)) in lines.iter().zip(HOSTILE) {
        let tag = parse_tagged(line).unwrap_or_else(|| panic!("not tagged: {line:?}"));
        assert_eq!(
            (tag.generation, tag.worker, tag.pid, tag.stream),
            (1, 0, pid, "stdout"),
            "{line:?}"
        );
        assert_eq!(tag.text, expected, "{line:?}");
    }
}

/// `tag = false`: the file holds exactly the bytes the worker wrote.
#[test]
fn untagged_file_holds_the_raw_bytes() {
    let h = Handover::start(
        "logs-raw",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", {}]

[logs]
stdout = "{{dir}}/out.log"
tag = false
"#,
            hostile_args("stdout")
        ),
        Options::default(),
    );
    wait_log(&h, "hex done");
    let expected: Vec<u8> = HOSTILE
        .iter()
        .flat_map(|(raw, _)| raw.iter().copied())
        .collect();
    let out = h.dir.path().join("out.log");
    wait_on(&h, "the raw bytes in out.log", GUARD, || {
        let bytes = read_now(&out)?;
        if bytes.len() >= expected.len() {
            Ok(())
        } else {
            Err(format!("{} of {} bytes", bytes.len(), expected.len()))
        }
    });
    let bytes = read(&out);
    assert!(
        bytes == expected,
        "out.log differs from what the worker wrote:\n{:?}\n{:?}",
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&expected)
    );
}

/// `stderr = "-"`: the lines reach handover's own stderr tagged and escaped, so none of them
/// can pass for handover's own lines or for another worker's.
#[test]
fn stderr_to_handovers_stderr_is_tagged_and_escaped() {
    let h = Handover::start(
        "logs-dash",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", {}]

[logs]
stderr = "-"
"#,
            hostile_args("stderr")
        ),
        Options::default(),
    );
    // The harness reads handover's output as UTF-8 lines: raw bytes would end the reading
    // and this wait would time out.
    wait_log(&h, "hex done");
    let pid = worker_pid(&h, 0);
    let text = h.log.text();
    for (_, expected) in HOSTILE {
        let wanted = format!(" gen=1 worker=0 pid={pid} stderr: {expected}");
        assert!(
            text.lines()
                .any(|l| l.ends_with(&wanted) && parse_tagged(l).is_some_and(|t| t.pid == pid)),
            "no line ending with {wanted:?} in:\n{text}"
        );
    }
    for line in text.lines().filter(|l| l.contains("forged")) {
        let tag = parse_tagged(line).unwrap_or_else(|| panic!("a line not tagged: {line:?}"));
        assert_eq!(
            (tag.worker, tag.pid, tag.stream),
            (0, pid, "stderr"),
            "{line}"
        );
    }
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| c.is_ascii_control() && c != '\n' && c != '\t')
        .collect();
    assert!(
        bad.is_empty(),
        "control characters on handover's stderr: {bad:?}"
    );
}

// ----------------------------------------------------------------------------------------
// /dev/null, a file that cannot be opened, status
// ----------------------------------------------------------------------------------------

/// `stdout = "/dev/null"`: the worker's stdout is /dev/null itself, its flood finishes, and
/// none of it is written anywhere.
#[test]
fn dev_null_discards_without_blocking() {
    let h = Handover::start(
        "logs-devnull",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0", "--flood-stdout", "100000"]

[logs]
stdout = "/dev/null"
"#,
        Options::default(),
    );
    wait_log(&h, "flood done");
    let pid = worker_pid(&h, 0);
    let target = std::fs::read_link(format!("/proc/{pid}/fd/1")).expect("the worker's fd 1");
    assert_eq!(target, Path::new("/dev/null"));
    assert!(
        !h.log.text().contains("line 00000001"),
        "flood lines reached handover's output"
    );
    let mut stack = vec![h.dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = read(&path);
                assert!(
                    !bytes.windows(13).any(|w| w == b"line 00000001"),
                    "flood lines in {}",
                    path.display()
                );
            }
        }
    }
    assert!(alive(h.pid()));
}

/// A file that cannot be opened at start is an error, exit 3, naming the key and the path.
#[test]
fn unopenable_file_stops_the_start() {
    let mut h = Handover::start(
        "logs-unopenable",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0"]

[logs]
stderr = "{dir}/no-such-dir/err.log"
"#,
        Options::default(),
    );
    let status = h.wait();
    assert_eq!(status.code(), Some(3), "{}", h.log.text());
    let text = h.log.text();
    let path = format!("{}/no-such-dir/err.log", h.dir.path().display());
    assert!(
        text.contains("stderr") && text.contains(&path),
        "the error names neither key nor path:\n{text}"
    );
}

/// `status --json` lists each file with its path, `dropped` 0 after a run that lost nothing,
/// and `rotations` 0 when nothing rotated; `status` shows the files too.
#[test]
fn status_lists_the_files() {
    let h = Handover::start(
        "logs-status",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0", "--flood-stdout", "100", "--flood-stderr", "10"]

[logs]
stdout = "{dir}/out.log"
stderr = "{dir}/err.log"
"#,
        Options::default(),
    );
    let dir = h.dir.path().to_path_buf();
    wait_on(&h, "the flood in the files", GUARD, || {
        let out = std::fs::read(dir.join("out.log")).unwrap_or_default();
        let err = std::fs::read(dir.join("err.log")).unwrap_or_default();
        let done = String::from_utf8_lossy(&err).contains("flood done");
        if newlines(&out) == 100 && done {
            Ok(())
        } else {
            Err(format!("{} stdout lines, done: {done}", newlines(&out)))
        }
    });
    let status = h.status_json();
    let logs = status["logs"]
        .as_array()
        .unwrap_or_else(|| panic!("no logs array: {status}"));
    assert_eq!(logs.len(), 2, "{status}");
    for name in ["out.log", "err.log"] {
        let path = format!("{}/{name}", dir.display());
        let entry = log_entry(&status, &path).unwrap_or_else(|| panic!("no {path}: {status}"));
        assert_eq!(entry["dropped"].as_u64(), Some(0), "{entry}");
        assert_eq!(entry["rotations"].as_u64(), Some(0), "{entry}");
    }
    let (st, out, err) = h.ctl(&["status"]);
    assert!(st.success(), "{err}");
    for name in ["out.log", "err.log"] {
        assert!(
            out.contains(&format!("{}/{name}", dir.display())),
            "status does not show {name}:\n{out}"
        );
    }
}

// ----------------------------------------------------------------------------------------
// handover logs
// ----------------------------------------------------------------------------------------

/// Two workers write 30 lines on each stream into one file: `handover logs -n 5` prints the
/// file's last 5 lines, oldest first; the default is 20; `--worker` and `--stream` keep the
/// lines of that worker index or stream, also together; lines come as they are in the file.
#[test]
fn logs_prints_the_last_lines_filtered() {
    let h = Handover::start(
        "logs-cli",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0", "--flood-stdout", "30", "--flood-stderr", "30", "--line-bytes", "40"]
count = 2

[logs]
stdout = "{dir}/app.log"
stderr = "{dir}/app.log"
"#,
        Options::default(),
    );
    let file = h.dir.path().join("app.log");
    let mut previous = 0;
    let lines = wait_on(&h, "both workers' output in app.log", GUARD, || {
        let bytes = read_now(&file)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let numbered = text.matches(": line 000000").count();
        let done = text.matches("flood done").count();
        let ready = text.matches("sent READY=1").count();
        if numbered == 120 && done == 2 && ready == 2 && bytes.len() == previous {
            Ok(text_lines(&bytes, "app.log"))
        } else {
            previous = bytes.len();
            Err(format!("{numbered} lines, {done} done, {ready} ready"))
        }
    });
    let config = h.config.display().to_string();
    let tags: Vec<Tagged> = lines
        .iter()
        .map(|l| parse_tagged(l).unwrap_or_else(|| panic!("not tagged: {l}")))
        .collect();
    let keep = |f: &dyn Fn(&Tagged) -> bool| -> Vec<String> {
        lines
            .iter()
            .zip(&tags)
            .filter(|(_, t)| f(t))
            .map(|(l, _)| l.clone())
            .collect()
    };
    let last = |v: &[String], n: usize| v[v.len().saturating_sub(n)..].to_vec();

    let (st, out, err) = logs_cli(&["-c", &config, "-n", "5"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, last(&lines, 5), "-n 5");

    let (st, out, err) = logs_cli(&["--config", &config]);
    assert!(st.success(), "{err}");
    assert_eq!(out, last(&lines, 20), "the default is 20 lines");

    let worker1 = keep(&|t| t.worker == 1);
    assert!(worker1.len() >= 61, "{worker1:?}");
    let (st, out, err) = logs_cli(&["--config", &config, "--worker", "1", "-n", "1000"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, worker1, "--worker 1");
    let (st, out, err) = logs_cli(&["--config", &config, "--worker", "1", "-n", "3"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, last(&worker1, 3), "--worker 1 -n 3");

    let stderr = keep(&|t| t.stream == "stderr");
    let (st, out, err) = logs_cli(&["--config", &config, "--stream", "stderr", "-n", "1000"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, stderr, "--stream stderr");

    let both = keep(&|t| t.worker == 0 && t.stream == "stdout");
    assert_eq!(both.len(), 30);
    let (st, out, err) = logs_cli(&[
        "--config", &config, "--worker", "0", "--stream", "stdout", "-n", "1000",
    ]);
    assert!(st.success(), "{err}");
    assert_eq!(out, both, "--worker 0 --stream stdout");
}

/// stdout and stderr in two files: `handover logs` merges them by the time in their tags.
#[test]
fn logs_merges_two_files_by_time() {
    let h = Handover::start(
        "logs-merge",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0", "--flood-stdout", "20", "--flood-stderr", "20", "--flood-rate", "200"]

[logs]
stdout = "{dir}/out.log"
stderr = "{dir}/err.log"
"#,
        Options::default(),
    );
    let dir = h.dir.path().to_path_buf();
    let (out_lines, err_lines) = wait_on(&h, "the output in both files", GUARD, || {
        let out = read_now(&dir.join("out.log"))?;
        let err = read_now(&dir.join("err.log"))?;
        let text = String::from_utf8_lossy(&err).into_owned();
        if newlines(&out) == 20 && text.contains("flood done") && text.contains("sent READY=1") {
            Ok((text_lines(&out, "out.log"), text_lines(&err, "err.log")))
        } else {
            Err(format!("{} stdout lines", newlines(&out)))
        }
    });
    let (st, out, err) = logs_cli(&["--config", &h.config.display().to_string(), "-n", "1000"]);
    assert!(st.success(), "{err}");
    let printed: BTreeSet<&String> = out.iter().collect();
    let expected: BTreeSet<&String> = out_lines.iter().chain(&err_lines).collect();
    assert_eq!(printed, expected, "not every line of both files");
    assert_eq!(out.len(), out_lines.len() + err_lines.len());
    let times: Vec<&str> = out
        .iter()
        .map(|l| parse_tagged(l).expect("tagged").time)
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "not merged by time:\n{}",
        out.join("\n")
    );
}

/// `handover logs --follow` prints lines written after it started, through rotations: a
/// third worker started by `handover scale 3` writes 60 lines into a file rotating every
/// 4 KiB, and every one of them is printed exactly once, in order.
#[test]
fn logs_follow_prints_new_lines_across_rotation() {
    const LINE: usize = 100;
    let h = Handover::start(
        "logs-follow",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--flood-stdout", "60", "--line-bytes", "{LINE}"]
count = 2

[logs]
stdout = "{{dir}}/app.log"
max_size = "4KiB"
keep = 1000
"#
        ),
        Options::default(),
    );
    wait_log(&h, "all 2 workers ready");
    wait_log_count(&h, "flood done", 2);
    let dir = h.dir.path().to_path_buf();
    let file = dir.join("app.log");
    wait_on(
        &h,
        "lines in the current file",
        GUARD,
        || match std::fs::metadata(&file) {
            Ok(m) if m.len() > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let config = h.config.display().to_string();
    let follow = LogsChild::spawn(&["--config", &config, "--follow"]);
    // It printed the end of the current file: from here on it follows.
    wait_on(&h, "the first lines from --follow", GUARD, || {
        if follow.out.count("") > 0 {
            Ok(())
        } else {
            Err(format!("stderr: {}", follow.err.text()))
        }
    });
    // Stamps, not names: a rotated file being compressed changes its name, not its stamp.
    let stamps = |dir: &Path| -> BTreeSet<String> {
        rotated_names(dir, "app.log")
            .into_iter()
            .map(|n| n.strip_suffix(".gz").map(str::to_string).unwrap_or(n))
            .collect()
    };
    let rotated_before = stamps(&dir);
    let (st, out, err) = h.ctl(&["scale", "3"]);
    assert!(st.success(), "scale 3: {out}{err}");
    let pid = worker_pid(&h, 2);
    let needle = format!(" worker=2 pid={pid} stdout: line ");
    follow.out.wait_for_count(&needle, 60);
    let rotated_after = stamps(&dir);
    assert!(
        rotated_after.difference(&rotated_before).next().is_some(),
        "the file did not rotate while followed: {rotated_before:?} {rotated_after:?}"
    );
    let flood = Flood {
        worker: 2,
        pid,
        stream: "stdout",
        line_bytes: LINE,
    };
    let text = follow.out.text();
    let mine: String = text
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| format!("{l}\n"))
        .collect();
    let numbers = flood.must(mine.as_bytes(), "--follow's output");
    assert_eq!(numbers, (1..=60).collect::<Vec<u64>>(), "{text}");
    for line in text.lines() {
        assert!(
            parse_tagged(line).is_some(),
            "printed as in the file: {line:?}"
        );
    }
}

/// Where `handover logs` refuses: `--worker` or `--stream` without tags (exit 2, saying
/// why); no stream going to a file (exit 2, saying where the output goes); an invalid
/// configuration (exit 3). Without filters, an untagged file is printed as it is.
#[test]
fn logs_refuses_what_it_cannot_do() {
    let dir = TempDir::new("logs-refuse");
    let write = |name: &str, logs: &str| -> String {
        let path = dir.path().join(name);
        let text = harness::expand(
            &format!("[worker]\ncommand = [\"{{worker}}\"]\n\n{logs}"),
            dir.path(),
        );
        std::fs::write(&path, text).expect("write config");
        path.display().to_string()
    };
    let raw = dir.path().join("raw.log");
    std::fs::write(&raw, b"one\ntwo\n").unwrap();
    let untagged = write(
        "untagged.toml",
        &format!("[logs]\nstdout = \"{}\"\ntag = false\n", raw.display()),
    );
    for filter in [["--worker", "0"], ["--stream", "stdout"]] {
        let (st, _, err) = logs_cli(&["--config", &untagged, filter[0], filter[1]]);
        assert_eq!(st.code(), Some(2), "{filter:?} without tags: {err}");
        assert!(err.contains("tag"), "the refusal does not say why: {err}");
    }
    let (st, out, err) = logs_cli(&["--config", &untagged]);
    assert!(st.success(), "{err}");
    assert_eq!(out, vec!["one", "two"]);

    for (name, logs) in [
        ("default.toml", ""),
        (
            "elsewhere.toml",
            "[logs]\nstdout = \"/dev/null\"\nstderr = \"-\"\n",
        ),
    ] {
        let config = write(name, logs);
        let (st, _, err) = logs_cli(&["--config", &config]);
        assert_eq!(st.code(), Some(2), "{name}: {err}");
        assert!(
            !err.trim().is_empty(),
            "{name}: no word on where the output goes"
        );
    }

    let invalid = write("invalid.toml", "[logs]\nstdout = \"relative.log\"\n");
    let (st, _, err) = logs_cli(&["--config", &invalid]);
    assert_eq!(st.code(), Some(3), "{err}");
}

// ----------------------------------------------------------------------------------------
// This suite's own readers
// ----------------------------------------------------------------------------------------

/// The parsers above read what the spec describes, and the worker's formulas are the ones
/// its own unit tests pin down.
#[test]
fn readers_of_this_suite() {
    let line = "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout: GET / 200: ok";
    assert_eq!(
        parse_tagged(line),
        Some(Tagged {
            time: "2026-11-21T10:00:00.123Z",
            generation: 3,
            worker: 1,
            pid: 1234,
            stream: "stdout",
            text: "GET / 200: ok",
        })
    );
    for bad in [
        "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdin: x",
        "2026-11-21 10:00:00.123Z gen=3 worker=1 pid=1234 stdout: x",
        "2026-11-21T10:00:00.123Z gen=+3 worker=1 pid=1234 stdout: x",
        "x\r2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout: x",
        "2026-11-21T10:00:00.123Z gen=3 worker=1 pid=1234 stdout:",
    ] {
        assert_eq!(parse_tagged(bad), None, "{bad:?}");
    }
    assert!(is_compressed_rotation(
        "out.log.2026-11-21T10-00-00.123Z.gz",
        "out.log"
    ));
    assert!(!is_compressed_rotation(
        "out.log.2026-11-21T10-00-00.123Z",
        "out.log"
    ));
    assert!(!is_compressed_rotation(
        "out.log.2026-11-21T10:00:00.123Z.gz",
        "out.log"
    ));
    assert_eq!(complete_lines(b"a\nb\nc"), vec![&b"a"[..], &b"b"[..]]);
    assert_eq!(complete_lines(b"a\n\n"), vec![&b"a"[..], &b""[..]]);
    assert!(complete_lines(b"abc").is_empty());
    assert_eq!(flood_text(7, 20), "line 00000007 abcde");
    assert_eq!(
        flood_text(30, 45),
        "line 00000030 abcdefghijklmnopqrstuvwxyzabcd"
    );
    assert_eq!(pattern(0, 25), b"000000000.000000010.00000");
    assert_eq!(pattern(1_234_567_895, 12), b"7890.2345679");
    let flood = Flood {
        worker: 0,
        pid: 9,
        stream: "stdout",
        line_bytes: 20,
    };
    let good = b"2026-11-21T10:00:00.123Z gen=1 worker=0 pid=9 stdout: line 00000007 abcde\n";
    assert_eq!(flood.numbers(good, "x"), Ok(vec![7]));
    let cut = b"2026-11-21T10:00:00.123Z gen=1 worker=0 pid=9 stdout: line 00000007 abc\n";
    assert!(flood.numbers(cut, "x").is_err());
    let log = "... /a.log: writing again; 12 lines were dropped\n... /a.log: writing again; 3 lines were dropped\n... /b.log: writing again; 5 lines were dropped";
    assert_eq!(reported_drops(log, "/a.log"), 15);
}

/// A second `handover start` on the same control socket and log file is refused before it
/// touches the log: a rotated file waiting for compression (as a killed run leaves one) is
/// not compressed or removed by the instance that is about to be told "already running".
#[test]
fn a_refused_second_instance_leaves_the_log_files_alone() {
    let shared = TempDir::new("logs-second");
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let template = format!(
        r#"
[worker]
command = ["{{worker}}", "--ready-after", "0"]

[logs]
stdout = "{shared}/out.log"

[control]
socket = "{shared}/control.sock"
"#,
        shared = shared.path().display()
    );
    let first = Handover::start("logs-second-a", &template, Options::default());
    wait_log(&first, "all 1 workers ready");
    let rotated = shared.path().join("out.log.2026-01-01T00-00-00.000Z");
    let tmp = shared
        .path()
        .join("out.log.2026-01-01T00-00-00.000Z.gz.tmp");
    std::fs::write(&rotated, b"rotated, not compressed yet\n").expect("write");
    std::fs::write(&tmp, b"a compression in progress").expect("write");

    let mut second = Handover::start("logs-second-b", &template, Options::default());
    assert_eq!(second.wait().code(), Some(5), "{}", second.log.text());
    assert!(second.log.text().contains("already running"));
    assert_eq!(
        std::fs::read(&rotated).expect("the rotated file is still there"),
        b"rotated, not compressed yet\n"
    );
    assert_eq!(
        std::fs::read(&tmp).ok().as_deref(),
        Some(&b"a compression in progress"[..]),
        "the running instance's temporary file was removed or overwritten"
    );
    assert!(
        !shared
            .path()
            .join("out.log.2026-01-01T00-00-00.000Z.gz")
            .exists(),
        "the refused instance compressed a file"
    );
    assert!(alive(first.pid()));
}
