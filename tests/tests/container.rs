//! examples/container/ (issue 18), checked as far as this machine allows: no image is built
//! and no cluster is asked (that needs a registry, a container engine, a Kubernetes or Nomad
//! cluster; docs/containers.md says so). What is checked instead:
//!
//! - the Containerfile copies files that exist, builds packages and binaries the workspace
//!   has, and its entry point and ports match the configuration;
//! - the Kubernetes manifest is YAML (read by python3's yaml module), its ConfigMap holds the
//!   very configuration the image carries, which `handover check` accepts, and its probes,
//!   ports, mounts, user and grace period agree with it;
//! - the Nomad job is balanced HCL whose template is that configuration, reloading on SIGHUP;
//! - the image's entry command, run as it is in a fresh PID, mount and network namespace laid
//!   out as the image is (the binaries in /usr/local/bin, the configuration in /etc/handover,
//!   the image's user): handover is PID 1, /ready says 200, `handover reload` as
//!   `kubectl exec` runs it exits 0 and the new generation serves, SIGTERM exits 0.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover_tests::harness::{self, children_of, Lines, GUARD};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(name: &str) -> String {
    let path = repo().join("examples/container").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Containerfile's instructions, continuation lines joined, comments left out.
fn instructions() -> Vec<(String, String)> {
    let text = example("Containerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        joined.push(std::mem::take(&mut current));
    }
    joined
        .into_iter()
        .map(|line| {
            let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
            (word.to_string(), rest.trim().to_string())
        })
        .collect()
}

fn json_array(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON array ({e}): {text}"))
}

/// The image's entry command: ENTRYPOINT then CMD, both in exec form.
fn entry_command() -> Vec<String> {
    let find = |word: &str| {
        instructions()
            .into_iter()
            .rev()
            .find(|(w, _)| w == word)
            .map(|(_, rest)| json_array(&rest))
            .unwrap_or_default()
    };
    let mut command = find("ENTRYPOINT");
    command.extend(find("CMD"));
    command
}

/// The image's user and group (`USER uid:gid`).
fn image_user() -> (u32, u32) {
    let (_, user) = instructions()
        .into_iter()
        .rev()
        .find(|(w, _)| w == "USER")
        .expect("the image names its user");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    (uid.parse().unwrap(), gid.parse().unwrap())
}

/// `handover check` of a configuration text.
fn check_config(label: &str, text: &str) -> String {
    let dir = harness::TempDir::new(label);
    let path = dir.path().join("handover.toml");
    std::fs::write(&path, text).unwrap();
    let (status, out, err) =
        harness::run_handover(&["check", "--config", path.to_str().unwrap()], &[]);
    assert!(
        status.success(),
        "{label}: handover check refuses it: {out}{err}"
    );
    out
}

/// The port of a `listen = "0.0.0.0:PORT"` line under `[table]` of the configuration.
fn config_port(table: &str) -> u16 {
    let text = example("handover.toml");
    let mut in_table = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line.trim_matches(['[', ']']) == table;
        }
        if let Some(value) = line.strip_prefix("listen = ").filter(|_| in_table) {
            let address: std::net::SocketAddr = value.trim_matches('"').parse().unwrap();
            return address.port();
        }
    }
    panic!("no listen in [{table}] of examples/container/handover.toml")
}

/// A duration of the configuration or a manifest ("20s", "30s") in seconds.
fn seconds(text: &str) -> u64 {
    text.trim_matches('"')
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not whole seconds: {text}"))
}

fn stop_timeout() -> u64 {
    let text = example("handover.toml");
    let line = text
        .lines()
        .find(|l| l.starts_with("stop_timeout"))
        .expect("stop_timeout is set");
    seconds(line.split_once('=').unwrap().1.trim())
}

#[test]
fn containerfile_copies_what_exists_and_starts_handover_as_configured() {
    let instructions = instructions();
    assert!(
        instructions.iter().filter(|(w, _)| w == "FROM").count() >= 2,
        "a build stage and a small runtime stage"
    );
    let mut destinations = Vec::new();
    for (word, rest) in &instructions {
        if word != "COPY" {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (source, destination) = match parts.as_slice() {
            [flag, source, destination] if flag.starts_with("--from=") => {
                // A binary of the build stage: one this workspace builds.
                let name = Path::new(source).file_name().unwrap().to_str().unwrap();
                assert!(source.contains("target/release/"), "{rest}");
                assert!(
                    harness::binary(name).exists(),
                    "the workspace builds no {name}"
                );
                (None, *destination)
            }
            [source, destination] => (Some(*source), *destination),
            _ => panic!("unexpected COPY: {rest}"),
        };
        if let Some(source) = source.filter(|s| *s != ".") {
            assert!(
                repo().join(source).exists(),
                "COPY of {source}, which does not exist"
            );
        }
        destinations.push(destination.to_string());
    }
    let (_, build) = instructions
        .iter()
        .find(|(w, rest)| w == "RUN" && rest.contains("cargo build"))
        .expect("the image builds handover");
    for package in build
        .split(" -p ")
        .skip(1)
        .map(|p| p.split_whitespace().next().unwrap())
    {
        let manifests = std::fs::read_dir(repo().join("crates"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("Cargo.toml")).ok());
        assert!(
            manifests
                .into_iter()
                .any(|m| m.contains(&format!("name = \"{package}\""))),
            "cargo build -p {package}: no such package in crates/"
        );
    }
    let entry = entry_command();
    assert_eq!(
        entry,
        [
            "/usr/local/bin/handover",
            "start",
            "--config",
            "/etc/handover/handover.toml"
        ]
    );
    assert!(
        destinations.contains(&entry[0]),
        "{entry:?} is not what the image copies: {destinations:?}"
    );
    assert!(
        destinations.contains(&entry[3]),
        "the configuration is not in the image"
    );
    let config = example("handover.toml");
    assert!(config.contains("command = [\"/usr/local/bin/handover-example-http\"]"));
    assert!(destinations
        .iter()
        .any(|d| d == "/usr/local/bin/handover-example-http"));
    check_config("container-config", &config);
    let (_, exposed) = instructions
        .iter()
        .find(|(w, _)| w == "EXPOSE")
        .expect("EXPOSE");
    let exposed: Vec<u16> = exposed
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, [config_port("socket"), config_port("endpoint")]);
}

/// The manifest as JSON, through python3's yaml module.
fn kubernetes_documents() -> Vec<Value> {
    let path = repo().join("examples/container/k8s.yaml");
    let script =
        "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 to read the manifest: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'yaml'"),
        "python3 has no yaml module: install python3-yaml (Debian) or PyYAML"
    );
    assert!(out.status.success(), "k8s.yaml is not valid YAML: {err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kubernetes_manifest_agrees_with_the_image_and_its_configuration() {
    let documents = kubernetes_documents();
    let kind = |k: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in k8s.yaml"))
            .clone()
    };
    let config_map = kind("ConfigMap");
    let text = config_map["data"]["handover.toml"]
        .as_str()
        .expect("handover.toml in the ConfigMap");
    assert_eq!(
        text,
        example("handover.toml"),
        "the ConfigMap and the image carry different configurations"
    );
    check_config("k8s-config", text);

    let deployment = kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let entry = entry_command();
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    assert_eq!(
        args,
        entry[2..],
        "the container's args are not the image's CMD"
    );
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(port("http"), u64::from(config_port("socket")));
    assert_eq!(port("probe"), u64::from(config_port("endpoint")));
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            (get["path"].as_str(), get["port"].as_str()),
            (Some(path), Some("probe")),
            "{probe}"
        );
    }
    assert!(
        container["lifecycle"]["preStop"].is_null(),
        "no preStop hook is needed"
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    assert!(
        grace > stop_timeout(),
        "the grace period ({grace}s) must outlast stop_timeout"
    );
    let (uid, gid) = image_user();
    let security = &container["securityContext"];
    assert_eq!(
        (
            security["runAsUser"].as_u64(),
            security["runAsGroup"].as_u64()
        ),
        (Some(u64::from(uid)), Some(u64::from(gid)))
    );
    let config_dir = Path::new(&entry[3])
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mounted = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .map(|m| m["name"].clone())
    };
    let config_volume = mounted(&config_dir)
        .expect("the ConfigMap is mounted where the image reads its configuration");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == config_volume)
        .unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    assert!(
        mounted("/run/handover").is_some(),
        "the runtime directory is writable"
    );
    let service = kind("Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    // The reload the header tells users to run is a command handover has.
    let manifest = example("k8s.yaml");
    assert!(manifest.contains("kubectl exec deploy/handover-example -- handover reload --config /etc/handover/handover.toml"));
}

/// A small reader of the HCL the Nomad job uses: blocks, `key = value` lines and heredocs.
/// Returns (block path, key, value) for every assignment; panics on unbalanced blocks.
fn hcl_assignments(text: &str) -> Vec<(String, String, String)> {
    let mut path: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "}" {
            assert!(path.pop().is_some(), "an unbalanced closing brace");
            continue;
        }
        if let Some(head) = line.strip_suffix('{') {
            path.push(head.trim().to_string());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not HCL: {line:?}"));
        let value = value.trim();
        let value = if let Some(tag) = value.strip_prefix("<<") {
            let mut body = String::new();
            for body_line in lines.by_ref() {
                if body_line.trim() == tag {
                    break;
                }
                body.push_str(body_line);
                body.push('\n');
            }
            body
        } else {
            assert!(
                value.starts_with('"') == value.ends_with('"')
                    && value.starts_with('[') == value.ends_with(']'),
                "an unclosed value: {line:?}"
            );
            value.to_string()
        };
        found.push((path.join(" / "), key.trim().to_string(), value));
    }
    assert!(path.is_empty(), "unclosed blocks: {path:?}");
    found
}

#[test]
fn nomad_job_reloads_on_sighup_and_checks_the_endpoint() {
    let assignments = hcl_assignments(&example("nomad.hcl"));
    let get = |block: &str, key: &str| {
        assignments
            .iter()
            .find(|(b, k, _)| b.ends_with(block) && k == key)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} in {block}"))
    };
    let template = "task \"handover\" / template";
    let data = get(template, "data");
    assert_eq!(
        data,
        example("handover.toml"),
        "the template and the image carry different configurations"
    );
    check_config("nomad-config", &data);
    assert_eq!(get(template, "change_mode"), "\"signal\"");
    assert_eq!(get(template, "change_signal"), "\"SIGHUP\"");
    let destination = get(template, "destination");
    let args = json_array(&get("task \"handover\" / config", "args"));
    assert_eq!(args[0], "--config");
    assert_eq!(
        format!("\"{}\"", args[1].trim_start_matches('/')),
        destination,
        "handover reads the rendered file"
    );
    assert_eq!(get("check", "path"), "\"/ready\"");
    assert_eq!(get("check", "port"), "\"probe\"");
    let probe_to = get("network / port \"probe\"", "to");
    assert_eq!(probe_to, config_port("endpoint").to_string());
    assert_eq!(
        get("network / port \"http\"", "to"),
        config_port("socket").to_string()
    );
    assert_eq!(get("task \"handover\"", "kill_signal"), "\"SIGTERM\"");
    assert!(seconds(&get("task \"handover\"", "kill_timeout")) > stop_timeout());
}

/// Why the image's entry command cannot be run in namespaces here, or `None`.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (namespaces and mounts need CAP_SYS_ADMIN)".into());
    }
    for tool in ["unshare", "nsenter", "setpriv", "curl", "ip"] {
        let found = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .chain(["/usr/sbin".into(), "/sbin".into()])
                    .any(|d| d.join(tool).exists())
            })
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Lays out the image in a private mount namespace (binaries in a tmpfs on /usr/local/bin,
/// the configuration in /etc/handover on an overlay of /etc, a tmpfs on /run with the
/// image's runtime directory), brings up the loopback of the new network namespace, and
/// runs the rest of the arguments as the image's user.
const IMAGE_LAYOUT: &str = r#"set -e
ip link set lo up
mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin
cp "$HANDOVER_BIN" /usr/local/bin/handover
cp "$HTTP_BIN" /usr/local/bin/handover-example-http
mount -t tmpfs tmpfs "$SCRATCH"
mkdir "$SCRATCH/upper" "$SCRATCH/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$SCRATCH/upper,workdir=$SCRATCH/work" /etc
mkdir -p /etc/handover
cp "$CONFIG" /etc/handover/handover.toml
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/handover
chown "$IMAGE_UID:$IMAGE_GID" /run/handover
chmod 0700 /run/handover
exec setpriv --reuid "$IMAGE_UID" --regid "$IMAGE_GID" --clear-groups "$@"
"#;

#[test]
fn the_images_entry_command_runs_as_pid_1_reloads_and_stops() {
    if let Some(reason) = skip_reason() {
        if std::env::var_os("HANDOVER_REQUIRE_SYSTEMD").is_some() {
            panic!("cannot run the image's entry command, and HANDOVER_REQUIRE_SYSTEMD is set: {reason}");
        }
        eprintln!("skipped: cannot run the image's entry command here: {reason}");
        return;
    }
    let dir = harness::TempDir::new("container-entry");
    std::fs::create_dir(dir.path().join("scratch")).unwrap();
    let (uid, gid) = image_user();
    let entry = entry_command();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--net",
        "--kill-child",
        "sh",
        "-c",
        IMAGE_LAYOUT,
        "sh",
    ])
    .args(&entry)
    .env("HANDOVER_BIN", harness::binary("handover"))
    .env("HTTP_BIN", harness::binary("handover-example-http"))
    .env("CONFIG", repo().join("examples/container/handover.toml"))
    .env("SCRATCH", dir.path().join("scratch"))
    .env("IMAGE_UID", uid.to_string())
    .env("IMAGE_GID", gid.to_string())
    .env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env_remove("NOTIFY_SOCKET")
    .env_remove("LISTEN_FDS")
    .env_remove("JOURNAL_STREAM")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run unshare");
    // Killed (and with it, by --kill-child, all of the namespace) if the test fails.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = Lines::default();
    let collectors = [
        harness::collect_output(child.stdout.take().unwrap(), log.clone(), false),
        harness::collect_output(child.stderr.take().unwrap(), log.clone(), false),
    ];
    let mut child = Guard(child);
    let deadline = Instant::now() + GUARD;
    let pid1 = loop {
        if let Some(&pid) = children_of(child.0.id() as i32).first() {
            // The layout script execs setpriv, which execs handover: wait for that.
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if exe.ends_with("handover") {
                break pid;
            }
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the entry command ended ({status}): {}", log.text());
        }
        assert!(
            Instant::now() < deadline,
            "handover did not start: {}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let inside = |args: &[&str], namespaces: &[&str]| {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(pid1.to_string())
            .args(namespaces)
            .args(args)
            .stdin(Stdio::null());
        harness::output_guarded(cmd)
    };
    let endpoint = format!("http://127.0.0.1:{}", config_port("endpoint"));
    let service = format!("http://127.0.0.1:{}/", config_port("socket"));
    let curl = |url: &str| inside(&["curl", "-s", "-w", "\n%{http_code}", url], &["--net"]);
    let ready = {
        let deadline = Instant::now() + GUARD;
        loop {
            let (_, out, _) = curl(&format!("{endpoint}/ready"));
            if out.ends_with("\n200") {
                break out;
            }
            assert!(
                Instant::now() < deadline,
                "/ready never said 200: {out}\n{}",
                log.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(
        ready.starts_with("ready: generation 1, 2/2 workers ready"),
        "{ready}"
    );
    let (_, body, _) = curl(&service);
    assert!(
        body.contains("generation 1") && body.ends_with("\n200"),
        "{body}"
    );
    let ps = inside(&["cat", "/proc/1/cmdline"], &["--pid", "--mount"]).1;
    assert_eq!(
        ps.split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        entry,
        "PID 1 inside is not the entry command"
    );

    // `kubectl exec POD -- handover reload --config ...`: the container's namespaces, its user.
    let (uid_s, gid_s) = (uid.to_string(), gid.to_string());
    let (status, out, err) = inside(
        &[
            "setpriv",
            "--reuid",
            &uid_s,
            "--regid",
            &gid_s,
            "--clear-groups",
            "/usr/local/bin/handover",
            "reload",
            "--config",
            "/etc/handover/handover.toml",
        ],
        &["--pid", "--mount", "--net"],
    );
    assert!(
        status.success(),
        "the in-pod reload failed: {out}{err}\n{}",
        log.text()
    );
    assert!(out.contains("generation 2 serves"), "{out}");
    let (_, body, _) = curl(&service);
    assert!(
        body.contains("generation 2") && body.ends_with("\n200"),
        "{body}"
    );
    let (_, ready, _) = curl(&format!("{endpoint}/ready"));
    assert!(
        ready.starts_with("ready: generation 2") && ready.ends_with("\n200"),
        "{ready}"
    );

    // The runtime's stop.
    harness::kill(pid1, libc::SIGTERM);
    let deadline = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "handover did not stop: {}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    for collector in collectors {
        let _ = collector.join();
    }
    let text = log.text();
    assert_eq!(status.code(), Some(0), "{text}");
    for line in text.lines() {
        let record: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{text}"));
        assert!(record["msg"].is_string(), "{line}");
    }
    assert!(text.contains("\"msg\":\"stopped\""), "{text}");
}
