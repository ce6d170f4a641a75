//! `[[socket]]`: names, addresses, unix-only and TCP-only keys.

use crate::config::tests::{assert_err, check_cases, ok, MIN};

use super::*;

#[test]
fn listen_addresses() {
    let listen = |value: &str| {
        let text = format!("[[socket]]\nname = \"s\"\nlisten = {value:?}\n{MIN}");
        ok(&text).sockets.remove(0).listen.unwrap()
    };
    assert_eq!(
        listen("127.0.0.1:8080"),
        ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(
        listen("[::1]:8080"),
        ListenAddress::Tcp("[::1]:8080".parse().unwrap())
    );
    assert_eq!(
        listen("0.0.0.0:80"),
        ListenAddress::Tcp("0.0.0.0:80".parse().unwrap())
    );
    assert_eq!(
        listen("[::]:0"),
        ListenAddress::Tcp("[::]:0".parse().unwrap())
    );
    assert_eq!(
        listen("/run/a.sock"),
        ListenAddress::Unix("/run/a.sock".into())
    );
    let longest = format!("/{}", "a".repeat(106));
    assert_eq!(
        listen(&longest),
        ListenAddress::Unix(longest.clone().into())
    );
    assert_eq!(listen("127.0.0.1:8080").to_string(), "127.0.0.1:8080");
    assert_eq!(listen("[::1]:8080").to_string(), "[::1]:8080");
    assert_eq!(listen("/run/a.sock").to_string(), "/run/a.sock");
}

#[test]
fn socket_errors() {
    check_cases(&[
        ("[[socket]]\nlisten = \"127.0.0.1:1\"\n", 1, 1, &["socket[0].name: missing"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[socket]]\nlisten = \"127.0.0.1:2\"\n", 5, 1, &["socket[1].name: missing"]),
        ("socket = [{ name = \"a\", listen = \"/a\" }, { listen = \"/b\" }]\n", 1, 42, &["socket[1].name: missing"]),
        ("[[socket]]\nname = \"\"\n", 2, 8, &["socket[0].name: must not be empty"]),
        ("[[socket]]\nname = \"a:b\"\n", 2, 8, &["socket[0].name: must not contain ':'"]),
        ("[[socket]]\nname = \"caf\u{e9}\"\n", 2, 8, &["socket[0].name: contains '\u{e9}'", "printable ASCII"]),
        ("[[socket]]\nname = \"a\\tb\"\n", 2, 8, &["socket[0].name: contains '\\t'"]),
        ("[[socket]]\nname = 1\n", 2, 8, &["socket[0].name: expected a string, got an integer"]),
        (
            "[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:1\"\n\n[[socket]]\nname = \"api\"\nlisten = \"127.0.0.1:2\"\n\n[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:3\"\n",
            10,
            8,
            &["socket[2].name: duplicate socket name \"http\" (lines 2 and 10)", "unique"],
        ),
        ("[[socket]]\nname = \"a\"\n", 1, 1, &["socket[0].listen: missing", "from_systemd = true"]),
        ("[[socket]]\nname = \"a\"\nfrom_systemd = false\n", 1, 1, &["socket[0].listen: missing"]),
        ("[[socket]]\nname = \"a\"\nfrom_systemd = \"yes\"\n", 3, 16, &["socket[0].from_systemd: expected true or false, got a string"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"localhost:80\"\n", 3, 10, &["socket[0].listen:", "IP address", "127.0.0.1:80"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"example.com:80\"\n", 3, 10, &["socket[0].listen:", "\"example.com\" must be an IP address", "DNS"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"8080\"\n", 3, 10, &["socket[0].listen: \"8080\" has no address", "0.0.0.0:8080"]),
        ("[[socket]]\nname = \"a\"\nlisten = \":8080\"\n", 3, 10, &["socket[0].listen: \":8080\" has no address", "0.0.0.0:8080"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1\"\n", 3, 10, &["socket[0].listen: \"127.0.0.1\" has no port"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"::1\"\n", 3, 10, &["socket[0].listen: \"::1\" has no port", "[::1]:PORT"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"::1:8080\"\n", 3, 10, &["socket[0].listen:", "brackets", "[::1]:8080"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"[nope]:80\"\n", 3, 10, &["socket[0].listen:", "\"nope\" is not an IPv6 address"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:65536\"\n", 3, 10, &["socket[0].listen:", "\"65536\" is not a port"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"run/app.sock\"\n", 3, 10, &["socket[0].listen:", "neither an address nor a path"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"@abstract\"\n", 3, 10, &["socket[0].listen: abstract unix sockets are not supported"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"\"\n", 3, 10, &["socket[0].listen: must not be empty"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/run/\"\n", 3, 10, &["socket[0].listen:", "ends with '/'"]),
        ("[[socket]]\nname = \"a\"\nlisten = 8080\n", 3, 10, &["socket[0].listen: expected a string, got an integer"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbacklog = 0\n", 4, 11, &["socket[0].backlog: must be between 1 and 65535, got 0"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbacklog = 65536\n", 4, 11, &["socket[0].backlog: must be between 1 and 65535, got 65536"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nreuse_port = 1\n", 4, 14, &["socket[0].reuse_port: expected true or false, got an integer"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/run/a.sock\"\nreuse_port = true\n", 4, 14, &["socket[0].reuse_port: only applies to TCP sockets"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nmode = \"0660\"\n", 4, 8, &["socket[0].mode: only applies to unix sockets", "TCP"]),
        ("[[socket]]\nname = \"a\"\nfrom_systemd = true\nmode = \"0660\"\n", 4, 8, &["socket[0].mode: only applies to unix sockets", "no listen path"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"0968\"\n", 4, 8, &["socket[0].mode: \"0968\" is not an octal mode"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"\"\n", 4, 8, &["socket[0].mode: \"\" is not an octal mode"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"17777\"\n", 4, 8, &["socket[0].mode: \"17777\" is too large"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"7777777777777777777777\"\n", 4, 8, &["socket[0].mode:", "too large"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = 660\n", 4, 8, &["socket[0].mode: write the mode as a string of octal digits"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = 0o660\n", 4, 8, &["socket[0].mode: write the mode as a string"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nowner = \"www\"\n", 4, 9, &["socket[0].owner: only applies to unix sockets"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nowner = \"a:b:c\"\n", 4, 9, &["socket[0].owner: \"a:b:c\" is not \"user\", \"user:group\""]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nowner = \"a:\"\n", 4, 9, &["socket[0].owner: \"a:\" is not"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nowner = \"\"\n", 4, 9, &["socket[0].owner: \"\" is not"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nport = 80\n", 4, 1, &["socket[0].port: unknown key", "`listen`"]),
        ("[socket]\nname = \"a\"\nlisten = \"/a\"\n", 1, 1, &["socket:", "[[socket]]"]),
        ("[worker]\ncommand = [\"app\"]\n\n  [socket]\nname = \"a\"\n", 4, 3, &["socket:", "[[socket]]"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\n[socket.x]\n", 4, 9, &["socket[0].x: unknown key"]),
        ("socket = 5\n", 1, 10, &["socket:", "[[socket]]"]),
        ("socket = [{ name = \"a\", listen = \"/a\" }, 5]\n", 1, 42, &["socket[1]: expected a table, got an integer"]),
    ]);
}

#[test]
fn unix_path_limit() {
    let path = format!("/{}", "a".repeat(107));
    let text = format!("[[socket]]\nname = \"a\"\nlisten = \"{path}\"\n{MIN}");
    assert_err(
        &text,
        3,
        10,
        &["socket[0].listen: unix socket path is 108 bytes, the limit is 107"],
    );
    let text = format!("{MIN}[control]\nsocket = \"{path}\"\n");
    assert_err(
        &text,
        4,
        10,
        &["control.socket: unix socket path is 108 bytes, the limit is 107"],
    );
    let name = "n".repeat(256);
    let text = format!("[[socket]]\nname = \"{name}\"\nlisten = \"/a\"\n{MIN}");
    assert_err(
        &text,
        2,
        8,
        &["socket[0].name: is 256 bytes long, the limit is 255"],
    );
    let name = "n".repeat(255);
    ok(&format!(
        "[[socket]]\nname = \"{name}\"\nlisten = \"/a\"\n{MIN}"
    ));
}
