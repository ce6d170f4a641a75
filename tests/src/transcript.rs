//! Comparing a transcript in the docs (what `journalctl -u UNIT -o cat` printed) with the
//! journal the real systemd tier produced, so the docs keep showing real output.
//!
//! The comparison is strict about the text of every line and about order, and tolerant of
//! exactly what differs from run to run:
//!
//! - **Numbers that vary**: pids (`pid 4301`), durations (`8.8ms`, `2s`) and ports (`:80`,
//!   `]:8080`) are masked on both sides ([`mask`]); every other character must match.
//! - **Concurrency**: the journal interleaves what runs at once. systemd's lines must come in
//!   the transcript's order, and so must handover's lines about no worker in particular (the
//!   *main* lines); how the two interleave varies (systemd logs "Starting" once it has
//!   forked the service, which may have logged by then). handover's lines about one worker
//!   (entries with `HANDOVER_PID`) must lie between the same two main lines, but may swap
//!   places with lines about another worker. A worker's own lines (entries under another
//!   identifier; the transcript tells workers apart by the pid in their text) keep their own
//!   order, and may interleave with anything else, since handover writes them from another
//!   thread.
//!
//! No line may be missing and none may be extra.

use std::collections::BTreeMap;

/// One journal entry, as `journalctl -o json` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `MESSAGE`.
    pub message: String,
    /// `SYSLOG_IDENTIFIER` (`systemd`, `handover`, a worker's program name).
    pub identifier: String,
    /// `HANDOVER_PID`: the worker an entry of handover's is about, or the worker that wrote
    /// the line.
    pub worker_pid: Option<String>,
    /// `SYSLOG_PID`.
    pub syslog_pid: Option<String>,
}

impl Entry {
    /// Parses the output of `journalctl -o json` (one object a line). Entries whose
    /// `MESSAGE` is not text (an array of bytes) keep an empty message.
    pub fn parse_json_lines(text: &str) -> Result<Vec<Entry>, String> {
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("not a journal entry ({e}): {line}"))?;
                let field = |name: &str| value[name].as_str().map(str::to_string);
                Ok(Entry {
                    message: field("MESSAGE").unwrap_or_default(),
                    identifier: field("SYSLOG_IDENTIFIER").unwrap_or_default(),
                    worker_pid: field("HANDOVER_PID"),
                    syslog_pid: field("SYSLOG_PID"),
                })
            })
            .collect()
    }

    fn kind(&self) -> Kind {
        match (self.identifier.as_str(), &self.worker_pid) {
            ("systemd", _) => Kind::System,
            ("handover", None) => Kind::Main,
            ("handover", Some(_)) => Kind::About,
            _ => Kind::Worker,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    System,
    Main,
    About,
    Worker,
}

/// The lines of the transcript that follows the line `$ COMMAND` in `markdown`: up to the
/// next `$ ` prompt or the end of the code block.
pub fn from_markdown(markdown: &str, command: &str) -> Option<Vec<String>> {
    let prompt = format!("$ {command}");
    let mut lines = markdown.lines();
    lines.by_ref().find(|line| line.trim_end() == prompt)?;
    Some(
        lines
            .take_while(|line| !line.starts_with("$ ") && !line.starts_with("```"))
            .map(str::to_string)
            .collect(),
    )
}

/// `line` with its pids, durations and ports replaced by `<PID>`, `<DURATION>` and
/// `<PORT>`.
pub fn mask(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let digits_from = |at: usize| {
        chars[at..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    while i < chars.len() {
        let at_word_start = i == 0 || !chars[i - 1].is_alphanumeric();
        if at_word_start && chars[i..].starts_with(&['p', 'i', 'd', ' ']) {
            let n = digits_from(i + 4);
            if n > 0 {
                out.push_str("pid <PID>");
                i += 4 + n;
                continue;
            }
        }
        if chars[i] == ':' && i + 1 < chars.len() {
            let n = digits_from(i + 1);
            let ends = chars.get(i + 1 + n).is_none_or(|c| !c.is_alphanumeric());
            if n > 0 && ends {
                out.push_str(":<PORT>");
                i += 1 + n;
                continue;
            }
        }
        if at_word_start && chars[i].is_ascii_digit() {
            if let Some(len) = duration_at(&chars[i..]) {
                out.push_str("<DURATION>");
                i += len;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The length of a duration (`12`, `8.83`, then a unit, then no letter) at the start of
/// `chars`.
fn duration_at(chars: &[char]) -> Option<usize> {
    let mut n = chars.iter().take_while(|c| c.is_ascii_digit()).count();
    if chars.get(n) == Some(&'.') {
        let fraction = chars[n + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if fraction == 0 {
            return None;
        }
        n += 1 + fraction;
    }
    for unit in ["ns", "µs", "us", "ms", "s", "min", "m", "h"] {
        let unit: Vec<char> = unit.chars().collect();
        if chars[n..].starts_with(&unit) {
            let end = n + unit.len();
            if chars.get(end).is_none_or(|c| !c.is_alphanumeric()) {
                return Some(end);
            }
        }
    }
    None
}

/// The first `pid N` in a line, which tells one worker's lines from another's.
fn pid_in(line: &str) -> Option<String> {
    let at = line.find("pid ")?;
    let digits: String = line[at + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// Compares a transcript with the journal's entries by the rules of this module; `Err`
/// says what differs.
pub fn compare(transcript: &[String], journal: &[Entry]) -> Result<(), String> {
    // What kind of line each masked text is, learnt from the journal.
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    for entry in journal {
        let text = mask(&entry.message);
        if let Some(&other) = kinds.get(&text) {
            if other != entry.kind() {
                return Err(format!(
                    "{text:?} is written both as a line about a worker and as another kind"
                ));
            }
        }
        kinds.insert(text, entry.kind());
    }
    let mut doc = Lanes::default();
    for (number, line) in transcript.iter().enumerate() {
        let text = mask(line);
        let Some(&kind) = kinds.get(&text) else {
            return Err(format!(
                "line {} of the transcript is not in the journal: {line:?}\n{}",
                number + 1,
                listing(journal)
            ));
        };
        let worker = pid_in(line).unwrap_or_default();
        doc.push(kind, text, worker);
    }
    let mut real = Lanes::default();
    for entry in journal {
        let worker = entry.syslog_pid.clone().unwrap_or_default();
        real.push(entry.kind(), mask(&entry.message), worker);
    }
    if doc.system != real.system {
        return Err(format!(
            "the lines of systemd differ, in text or order:\n--- transcript\n{}\n--- \
             journal\n{}",
            doc.system.join("\n"),
            real.system.join("\n")
        ));
    }
    if doc.main != real.main {
        return Err(format!(
            "the lines of handover differ, in text or order:\n--- transcript\n{}\n--- \
             journal\n{}",
            doc.main.join("\n"),
            real.main.join("\n")
        ));
    }
    let (mut doc_about, mut real_about) = (doc.about.clone(), real.about.clone());
    for (at, (want, got)) in doc_about.iter_mut().zip(real_about.iter_mut()).enumerate() {
        want.sort();
        got.sort();
        if want != got {
            let after = match at {
                0 => "the start".to_string(),
                n => format!("{:?}", doc.main[n - 1]),
            };
            return Err(format!(
                "the lines about workers after {after} differ:\n--- transcript\n{}\n--- \
                 journal\n{}",
                want.join("\n"),
                got.join("\n")
            ));
        }
    }
    let mut want: Vec<Vec<String>> = doc.workers.into_values().collect();
    let mut got: Vec<Vec<String>> = real.workers.into_values().collect();
    want.sort();
    got.sort();
    if want != got {
        return Err(format!(
            "the workers' own lines differ:\n--- transcript\n{want:#?}\n--- journal\n{got:#?}"
        ));
    }
    Ok(())
}

/// A transcript or a journal, split as the comparison needs it.
#[derive(Default)]
struct Lanes {
    /// systemd's lines, in order.
    system: Vec<String>,
    /// The main lines, in order.
    main: Vec<String>,
    /// The lines about workers between main lines: `about[n]` follows `main[n - 1]`.
    about: Vec<Vec<String>>,
    /// Each worker's own lines, in order, by its pid.
    workers: BTreeMap<String, Vec<String>>,
}

impl Lanes {
    fn push(&mut self, kind: Kind, text: String, worker: String) {
        if self.about.is_empty() {
            self.about.push(Vec::new());
        }
        match kind {
            Kind::System => self.system.push(text),
            Kind::Main => {
                self.main.push(text);
                self.about.push(Vec::new());
            }
            Kind::About => self.about.last_mut().expect("pushed above").push(text),
            Kind::Worker => self.workers.entry(worker).or_default().push(text),
        }
    }
}

/// The journal's messages, for error messages.
fn listing(journal: &[Entry]) -> String {
    let lines: Vec<String> = journal
        .iter()
        .map(|e| format!("  {}: {}", e.identifier, e.message))
        .collect();
    format!("--- journal\n{}", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identifier: &str, worker: Option<&str>, message: &str) -> Entry {
        Entry {
            message: message.to_string(),
            identifier: identifier.to_string(),
            worker_pid: worker.map(str::to_string),
            syslog_pid: match identifier {
                "systemd" => Some("1".into()),
                "handover" => Some("40".into()),
                _ => worker.map(str::to_string),
            },
        }
    }

    fn journal() -> Vec<Entry> {
        vec![
            entry("systemd", None, "Starting web..."),
            entry("handover", None, "starting 2 workers"),
            entry("handover", Some("48"), "worker started"),
            entry("handover", Some("49"), "worker started"),
            entry("w", Some("48"), "w: pid 48 serving on [::]:80"),
            entry("handover", Some("48"), "worker ready"),
            entry("handover", Some("49"), "worker ready"),
            entry("handover", None, "all 2 workers ready in 8.8ms"),
            entry("systemd", None, "Started web."),
            entry("w", Some("49"), "w: pid 49 serving on [::]:80"),
            entry("w", Some("49"), "w: pid 49 drained"),
        ]
    }

    fn transcript(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    const DOC: &str = "Starting web...
starting 2 workers
worker started
w: pid 4301 serving on [::]:8080
worker ready
worker started
w: pid 4302 serving on [::]:8080
w: pid 4302 drained
worker ready
all 2 workers ready in 12ms
Started web.";

    #[test]
    fn masks_pids_durations_and_ports_only() {
        assert_eq!(
            mask("w: pid 4301 serving on [::]:80 and 127.0.0.1:8080"),
            "w: pid <PID> serving on [::]:<PORT> and 127.0.0.1:<PORT>"
        );
        assert_eq!(
            mask("reload done in 8.833314ms: generation 2 serves"),
            "reload done in <DURATION>: generation 2 serves"
        );
        assert_eq!(
            mask("ready within 2s, 1/2 ready"),
            "ready within <DURATION>, 1/2 ready"
        );
        for kept in [
            "spawning generation 2 (2 workers)",
            "fd 3 (http)",
            "rapid 12",
            "10sx",
            "x2s",
            "ip 10",
        ] {
            assert_eq!(mask(kept), kept);
        }
    }

    #[test]
    fn accepts_another_interleaving_of_the_same_run() {
        compare(&transcript(DOC), &journal()).unwrap();
        // systemd's "Starting" may come after the service's first lines.
        let late = DOC.replace(
            "Starting web...\nstarting 2 workers",
            "starting 2 workers\nStarting web...",
        );
        compare(&transcript(&late), &journal()).unwrap();
    }

    #[test]
    fn refuses_a_changed_missing_or_extra_line() {
        let changed = DOC.replace("all 2 workers ready", "all workers ready");
        assert!(compare(&transcript(&changed), &journal()).is_err());
        let missing = DOC.replace("worker ready\n", "");
        assert!(compare(&transcript(&missing), &journal()).is_err());
        let extra = format!("{DOC}\nStarted web.");
        assert!(compare(&transcript(&extra), &journal()).is_err());
        let worker_missing = DOC.replace("w: pid 4302 drained\n", "");
        assert!(compare(&transcript(&worker_missing), &journal()).is_err());
    }

    #[test]
    fn refuses_a_changed_order() {
        // systemd's lines swapped.
        let swapped = DOC
            .replace("Starting web...", "STARTED")
            .replace("Started web.", "Starting web...")
            .replace("STARTED", "Started web.");
        assert!(compare(&transcript(&swapped), &journal()).is_err());
        // handover's main lines swapped.
        let swapped = DOC
            .replace("starting 2 workers", "ALL")
            .replace("all 2 workers ready in 12ms", "starting 2 workers")
            .replace("ALL", "all 2 workers ready in 12ms");
        assert!(compare(&transcript(&swapped), &journal()).is_err());
        // A line about a worker moved past a main line.
        let moved = DOC
            .replace(
                "worker ready\nall 2 workers ready in 12ms",
                "all 2 workers ready in 12ms",
            )
            .replace("Started web.", "worker ready\nStarted web.");
        assert!(compare(&transcript(&moved), &journal()).is_err());
        // A worker's own lines out of their order.
        let reversed = DOC.replace(
            "w: pid 4302 serving on [::]:8080\nw: pid 4302 drained",
            "w: pid 4302 drained\nw: pid 4302 serving on [::]:8080",
        );
        assert!(compare(&transcript(&reversed), &journal()).is_err());
    }

    #[test]
    fn finds_the_transcript_after_its_prompt() {
        let markdown = "text\n\n```console\n$ journalctl -o cat\none\ntwo\n$ next\nthree\n```\n";
        assert_eq!(
            from_markdown(markdown, "journalctl -o cat"),
            Some(vec!["one".to_string(), "two".to_string()])
        );
        let markdown = "```console\n$ journalctl -o cat\none\n```\nafter\n";
        assert_eq!(
            from_markdown(markdown, "journalctl -o cat"),
            Some(vec!["one".to_string()])
        );
        assert_eq!(from_markdown(markdown, "other"), None);
    }

    #[test]
    fn reads_journalctl_json() {
        let json = r#"{"MESSAGE":"worker ready","SYSLOG_IDENTIFIER":"handover","HANDOVER_PID":"48","SYSLOG_PID":"40"}
{"MESSAGE":[104,105],"SYSLOG_IDENTIFIER":"w"}
"#;
        let entries = Entry::parse_json_lines(json).unwrap();
        assert_eq!(entries[0], entry("handover", Some("48"), "worker ready"));
        assert_eq!(entries[1].message, "");
        assert!(Entry::parse_json_lines("not json").is_err());
    }
}
