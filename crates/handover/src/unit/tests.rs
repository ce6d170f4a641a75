use super::*;

fn config(text: &str) -> Config {
    Config::parse(Path::new("/etc/handover/web.toml"), text).expect("valid configuration")
}

fn units_for(text: &str) -> Result<Vec<UnitFile>, UnitError> {
    let config = config(text);
    generate(&Target {
        config: &config,
        config_path: Path::new("/etc/handover/web.toml"),
        binary: Path::new("/usr/bin/handover"),
        name: "handover-web",
    })
}

/// The settings of a unit file, comments and section headers left out.
fn settings(unit: &UnitFile) -> Vec<&str> {
    unit.text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect()
}

const WEB: &str = r#"
[[socket]]
name = "http"
listen = "0.0.0.0:8080"

[[socket]]
name = "admin"
listen = "/run/web/admin.sock"
mode = "0660"
owner = "root:adm"
backlog = 128

[worker]
command = ["/usr/bin/web"]
stop_timeout = "20s"

[reload]
timeout = "2m"
drain_timeout = "30s"
"#;

#[test]
fn each_socket_gets_a_socket_unit_that_passes_it_by_name() {
    let units = units_for(WEB).unwrap();
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "handover-web-http.socket",
            "handover-web-admin.socket",
            "handover-web.service"
        ]
    );
    assert_eq!(
        settings(&units[0]),
        [
            "Description=Socket \"http\" of handover-web.service",
            "ListenStream=0.0.0.0:8080",
            "FileDescriptorName=http",
            "Service=handover-web.service",
            "Backlog=4096",
            "WantedBy=sockets.target",
        ]
    );
    assert_eq!(
        settings(&units[1]),
        [
            "Description=Socket \"admin\" of handover-web.service",
            "ListenStream=/run/web/admin.sock",
            "FileDescriptorName=admin",
            "Service=handover-web.service",
            "Backlog=128",
            "SocketMode=0660",
            "SocketUser=root",
            "SocketGroup=adm",
            "WantedBy=sockets.target",
        ]
    );
}

#[test]
fn the_service_runs_handover_as_a_notify_service() {
    let units = units_for(WEB).unwrap();
    assert_eq!(
        settings(&units[2]),
        [
            "Description=handover supervisor (handover-web)",
            "After=network.target",
            "Requires=handover-web-http.socket handover-web-admin.socket",
            "After=handover-web-http.socket handover-web-admin.socket",
            "Type=notify",
            "NotifyAccess=main",
            "ExecStart=/usr/bin/handover start --config /etc/handover/web.toml",
            "ExecReload=/usr/bin/handover reload --service-name=%N",
            "ExecStop=/usr/bin/handover stop --service-name=%N",
            "KillMode=mixed",
            // drain_timeout 30s + 15s; reload timeout 2m + 30s.
            "TimeoutStopSec=45s",
            "TimeoutStartSec=150s",
            "RuntimeDirectory=handover/%N",
            "RuntimeDirectoryMode=0700",
            "FileDescriptorStoreMax=16",
            "Restart=on-failure",
            "RestartSec=200ms",
            "Delegate=yes",
            "WantedBy=multi-user.target",
            "Also=handover-web-http.socket handover-web-admin.socket",
        ]
    );
}

#[test]
fn deadlines_follow_the_configuration() {
    let units = units_for(
        r#"
[worker]
command = ["/usr/bin/web"]
stop_timeout = "90s"
ready_timeout = "10m"

[reload]
timeout = "1m"
drain_timeout = "2.5s"
"#,
    )
    .unwrap();
    let service = settings(units.last().unwrap()).join("\n");
    assert!(service.contains("TimeoutStopSec=105s\n"), "{service}");
    assert!(service.contains("TimeoutStartSec=630s\n"), "{service}");
    // No socket: nothing to require, nothing to enable along.
    assert_eq!(units.len(), 1);
    assert!(!service.contains("Requires="), "{service}");
    assert!(!service.contains("Also="), "{service}");
    assert_eq!(seconds(Duration::from_millis(2500)), "3s");
}

#[test]
fn a_configured_control_socket_is_named_by_reload_and_stop() {
    let units = units_for(
        r#"
[worker]
command = ["/usr/bin/web"]

[control]
socket = "/srv/web app/control.sock"
"#,
    )
    .unwrap();
    let service = &units[0].text;
    assert!(
        service.contains(
            "ExecReload=/usr/bin/handover reload --socket \"/srv/web app/control.sock\"\n"
        ),
        "{service}"
    );
    assert!(
        service
            .contains("ExecStop=/usr/bin/handover stop --socket \"/srv/web app/control.sock\"\n"),
        "{service}"
    );
}

#[test]
fn paths_are_quoted_for_systemd() {
    let config = config("[worker]\ncommand = [\"/usr/bin/web\"]\n");
    let units = generate(&Target {
        config: &config,
        config_path: Path::new("/srv/my app/100%/web.toml"),
        binary: Path::new("/opt/handover $HOME/bin/handover"),
        name: "handover-web",
    })
    .unwrap();
    assert!(
        units[0].text.contains(
            "ExecStart=\"/opt/handover $$HOME/bin/handover\" start --config \
             \"/srv/my app/100%%/web.toml\"\n"
        ),
        "{}",
        units[0].text
    );
    assert_eq!(exec_word("/usr/bin/handover"), "/usr/bin/handover");
    assert_eq!(exec_word("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(exec_word("x;y"), "\"x;y\"");
    assert_eq!(exec_word(""), "\"\"");
    let control = Path::new("/srv/x\ny.toml");
    let err = generate(&Target {
        config: &config,
        config_path: control,
        binary: Path::new("/usr/bin/handover"),
        name: "handover-web",
    })
    .unwrap_err();
    assert!(err.to_string().contains("control character"), "{err}");
}

#[test]
fn socket_names_and_paths_with_specifier_characters_are_escaped() {
    let units = units_for(
        r#"
[[socket]]
name = "web 100%"
listen = "/run/web/100%.sock"

[worker]
command = ["/usr/bin/web"]
"#,
    )
    .unwrap();
    assert_eq!(units[0].name, "handover-web-web\\x20100\\x25.socket");
    let socket = settings(&units[0]);
    assert!(
        socket.contains(&"ListenStream=/run/web/100%%.sock"),
        "{socket:?}"
    );
    assert!(
        socket.contains(&"FileDescriptorName=web 100%%"),
        "{socket:?}"
    );
    assert!(
        units[1]
            .text
            .contains("Requires=handover-web-web\\x20100\\x25.socket\n"),
        "{}",
        units[1].text
    );
}

#[test]
fn sockets_a_unit_cannot_listen_on_are_refused_by_name() {
    let err = units_for(
        "[[socket]]\nname = \"http\"\nfrom_systemd = true\n\n[worker]\ncommand = [\"/w\"]\n",
    )
    .unwrap_err();
    assert_eq!(
        err,
        UnitError::NoAddress {
            name: "http".into()
        }
    );
    assert!(err.to_string().contains("add listen = "), "{err}");
    let err = units_for(
        "[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\n\n[worker]\ncommand = [\"/w\"]\n",
    )
    .unwrap_err();
    assert_eq!(
        err,
        UnitError::PortZero {
            name: "http".into()
        }
    );
    let err = units_for(
        "[[socket]]\nname = \" http\"\nlisten = \"127.0.0.1:80\"\n\n[worker]\ncommand = [\"/w\"]\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("leading and trailing spaces"),
        "{err}"
    );
}

#[test]
fn from_systemd_sockets_with_an_address_get_units() {
    let units = units_for(
        "[[socket]]\nname = \"http\"\nfrom_systemd = true\nlisten = \"[::]:80\"\n\n\
         [worker]\ncommand = [\"/w\"]\n",
    )
    .unwrap();
    assert!(settings(&units[0]).contains(&"ListenStream=[::]:80"));
    let reuse = units_for(
        "[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:8080\"\nreuse_port = true\n\n\
         [worker]\ncommand = [\"/w\"]\n",
    )
    .unwrap();
    assert!(settings(&reuse[0]).contains(&"ReusePort=yes"));
}

#[test]
fn names_default_to_the_configuration_files_name() {
    assert_eq!(
        default_name(Path::new("/etc/handover/web.toml")),
        "handover-web"
    );
    assert_eq!(
        default_name(Path::new("/etc/handover/my app.toml")),
        "handover-my\\x20app"
    );
    assert_eq!(
        default_name(Path::new("/etc/handover/.toml")),
        "handover-\\x2etoml"
    );
    assert!(check_unit_prefix("web-blue").is_ok());
    assert!(check_unit_prefix("handover-my\\x20app").is_ok());
    for bad in ["", "web@", "web.service", "my app", "wéb"] {
        assert!(check_unit_prefix(bad).is_err(), "{bad:?}");
    }
    let long = "x".repeat(250);
    let config = config("[worker]\ncommand = [\"/w\"]\n");
    let err = generate(&Target {
        config: &config,
        config_path: Path::new("/etc/handover/web.toml"),
        binary: Path::new("/usr/bin/handover"),
        name: &long,
    })
    .unwrap_err();
    assert!(matches!(err, UnitError::NameTooLong(_)), "{err}");
}

/// docs/systemd.md shows a configuration and what `handover unit` prints for it: that is
/// what it prints, to the byte.
#[test]
fn the_units_shown_in_docs_systemd_md_are_what_unit_prints() {
    const CONFIG: &str = "/etc/handover/myapp.toml";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/systemd.md");
    let docs = std::fs::read_to_string(&path).expect("read docs/systemd.md");
    let block_after = |first_line: &str| -> String {
        let start = docs
            .find(first_line)
            .unwrap_or_else(|| panic!("docs/systemd.md has no {first_line:?}"))
            + first_line.len();
        let end = start + docs[start..].find("```").expect("the block ends");
        docs[start..end].to_string()
    };
    let toml = format!("# {CONFIG}{}", block_after(&format!("```toml\n# {CONFIG}")));
    let shown = block_after(&format!("$ handover unit --config {CONFIG}\n"));
    let config = Config::parse(Path::new(CONFIG), &toml).expect("the docs' configuration");
    let name = default_name(Path::new(CONFIG));
    let units = generate(&Target {
        config: &config,
        config_path: Path::new(CONFIG),
        binary: Path::new("/usr/bin/handover"),
        name: &name,
    })
    .unwrap();
    let printed: Vec<&str> = units.iter().map(|u| u.text.as_str()).collect();
    assert_eq!(shown, printed.join("\n"), "docs/systemd.md is out of date");
}
