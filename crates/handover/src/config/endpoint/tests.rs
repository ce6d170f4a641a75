//! `[endpoint]`: off by default, one listen address in the `[[socket]]` grammar.

use std::path::PathBuf;

use crate::config::tests::{assert_err, ok, MIN};
use crate::config::ListenAddress;

#[test]
fn the_endpoint_is_off_by_default() {
    assert_eq!(ok(MIN).endpoint.listen, None);
}

#[test]
fn the_endpoint_listens_on_tcp_or_unix() {
    let tcp = ok(&format!("{MIN}[endpoint]\nlisten = \"0.0.0.0:8081\"\n"));
    assert_eq!(
        tcp.endpoint.listen,
        Some(ListenAddress::Tcp("0.0.0.0:8081".parse().unwrap()))
    );
    let v6 = ok(&format!("endpoint.listen = \"[::1]:9000\"\n{MIN}"));
    assert_eq!(
        v6.endpoint.listen,
        Some(ListenAddress::Tcp("[::1]:9000".parse().unwrap()))
    );
    let unix = ok(&format!(
        "{MIN}[endpoint]\nlisten = \"/run/app/probe.sock\"\n"
    ));
    assert_eq!(
        unix.endpoint.listen,
        Some(ListenAddress::Unix(PathBuf::from("/run/app/probe.sock")))
    );
}

#[test]
fn bad_endpoints_are_located_and_explained() {
    assert_err(
        &format!("{MIN}[endpoint]\n"),
        3,
        1,
        &["endpoint.listen: missing", "leave out [endpoint]"],
    );
    assert_err(
        &format!("{MIN}[endpoint]\nlisten = \"localhost:8081\"\n"),
        4,
        10,
        &["endpoint.listen", "not a name"],
    );
    assert_err(
        &format!("{MIN}[endpoint]\nlisten = \"8081\"\n"),
        4,
        10,
        &["endpoint.listen", "\"0.0.0.0:8081\""],
    );
    assert_err(
        &format!("{MIN}[endpoint]\nlisten = 8081\n"),
        4,
        10,
        &["endpoint.listen", "expected a string"],
    );
    assert_err(
        &format!("{MIN}[endpoint]\nlisten = \"127.0.0.1:1\"\nport = 1\n"),
        5,
        1,
        &["endpoint.port", "unknown key"],
    );
    assert_err(
        &format!("{MIN}[[endpoint]]\nlisten = \"127.0.0.1:1\"\n"),
        3,
        1,
        &["single brackets"],
    );
}
