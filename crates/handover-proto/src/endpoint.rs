//! The probe endpoint's HTTP (`[endpoint]`): the request head an orchestrator's probe sends
//! (`GET /ready`, `GET /live`), parsed strictly from arbitrary bytes, and the short answers.
//!
//! Only what a probe needs is accepted: `GET` or `HEAD`, HTTP/1.0 or 1.1, no body, a head of
//! at most [`MAX_HEAD`] bytes. Anything else is a [`BadRequest`] whose reason the answer
//! states; nothing here panics on any input.

/// The longest request head taken, request line and headers together; a longer one is a
/// bad request. Probes send about a hundred bytes.
pub const MAX_HEAD: usize = 4096;

/// What a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/ready`: does the serving generation serve?
    Ready,
    /// `/live`: does handover's event loop answer?
    Live,
}

/// A parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Which probe.
    pub probe: Probe,
    /// `HEAD`: answer without a body.
    pub head: bool,
}

/// A request that gets no probe's answer, with the status it gets instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// Malformed or unsupported (400).
    #[error("{0}")]
    Malformed(String),
    /// A method other than `GET` or `HEAD` (405).
    #[error("method {0:?} is not allowed; use GET or HEAD")]
    Method(String),
    /// A path other than `/ready` and `/live` (404).
    #[error("no such path: {0:?}; the endpoint answers /ready and /live")]
    NotFound(String),
}

impl BadRequest {
    /// The HTTP status code it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            BadRequest::Malformed(_) => 400,
            BadRequest::Method(_) => 405,
            BadRequest::NotFound(_) => 404,
        }
    }
}

/// Where the head of a request ends in `bytes` (the index just past its empty line), if it
/// has arrived whole. Lines end with CRLF or, leniently, a bare LF.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &bytes[line_start..i];
        if line.is_empty() || line == b"\r" {
            return Some(i + 1);
        }
        line_start = i + 1;
    }
    None
}

/// Parses a request head (everything up to and including its empty line).
pub fn parse(head: &[u8]) -> Result<ProbeRequest, BadRequest> {
    let bad = |why: &str| Err(BadRequest::Malformed(why.to_string()));
    if head.len() > MAX_HEAD {
        return bad(&format!("the request head is longer than {MAX_HEAD} bytes"));
    }
    let Ok(text) = std::str::from_utf8(head) else {
        return bad("the request head is not UTF-8");
    };
    let Some(lines) = text.strip_suffix('\n') else {
        return bad("the request head does not end with an empty line");
    };
    let mut lines = lines.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad("the request line is not METHOD PATH HTTP/1.1");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return bad("the request line is not METHOD PATH HTTP/1.1");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return bad("only HTTP/1.0 and HTTP/1.1 are spoken here");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return bad("the path must start with '/'");
    }
    let mut seen_end = false;
    for line in lines {
        if seen_end {
            return bad("bytes after the end of the request head");
        }
        if line.is_empty() {
            seen_end = true;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            return bad("folded header lines are not accepted");
        }
        let Some((name, value)) = line.split_once(':') else {
            return bad("a header line has no ':'");
        };
        if name.is_empty() || !name.bytes().all(is_token) {
            return bad("a header name is not a token");
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return bad("a header value holds a control character");
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return bad("a probe request has no body");
        }
    }
    if !seen_end {
        return bad("the request head does not end with an empty line");
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let probe = match path {
        "/ready" => Probe::Ready,
        "/live" => Probe::Live,
        _ => return Err(BadRequest::NotFound(path.to_string())),
    };
    match method {
        "GET" => Ok(ProbeRequest { probe, head: false }),
        "HEAD" => Ok(ProbeRequest { probe, head: true }),
        other => Err(BadRequest::Method(other.to_string())),
    }
}

/// A header name's characters (RFC 9110's `tchar`).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A whole answer: the status line, a plain-text body of `body` and a newline (left out for
/// `HEAD`, its length kept), and `Connection: close`, since each probe is one connection.
pub fn response(status: u16, body: &str, head: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    // One line of printable text, whatever the reason says.
    let body: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len() + 1
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head {
        out.push_str(&body);
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn get(probe: Probe) -> Result<ProbeRequest, BadRequest> {
        Ok(ProbeRequest { probe, head: false })
    }

    #[test]
    fn probes_as_orchestrators_send_them_parse() {
        // Kubernetes' kubelet.
        let kubelet =
            b"GET /ready HTTP/1.1\r\nHost: 10.0.0.5:8081\r\nUser-Agent: kube-probe/1.32\r\n\
                        Accept: */*\r\nConnection: close\r\n\r\n";
        assert_eq!(parse(kubelet), get(Probe::Ready));
        assert_eq!(head_end(kubelet), Some(kubelet.len()));
        // curl, HTTP/1.0, a query string, HEAD, bare newlines.
        assert_eq!(
            parse(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"),
            get(Probe::Live)
        );
        assert_eq!(
            parse(b"GET /live?verbose=1 HTTP/1.0\r\n\r\n"),
            get(Probe::Live)
        );
        assert_eq!(
            parse(b"HEAD /ready HTTP/1.1\r\n\r\n"),
            Ok(ProbeRequest {
                probe: Probe::Ready,
                head: true
            })
        );
        assert_eq!(
            parse(b"GET /ready HTTP/1.1\nHost: x\n\n"),
            get(Probe::Ready)
        );
        assert_eq!(
            parse(b"GET /ready HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            get(Probe::Ready)
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let status = |head: &[u8]| parse(head).map_err(|e| (e.status(), e.to_string()));
        for (head, code, part) in [
            (&b""[..], 400, "empty line"),
            (b"\r\n\r\n", 400, "METHOD PATH"),
            (b"GET /ready\r\n\r\n", 400, "METHOD PATH"),
            (b"GET  /ready HTTP/1.1\r\n\r\n", 400, "METHOD PATH"),
            (b"get /ready HTTP/1.1\r\n\r\n", 400, "METHOD PATH"),
            (b"GET /ready HTTP/2\r\n\r\n", 400, "HTTP/1.0"),
            (b"GET ready HTTP/1.1\r\n\r\n", 400, "start with '/'"),
            (b"GET /ready HTTP/1.1\r\nHost x\r\n\r\n", 400, "no ':'"),
            (b"GET /ready HTTP/1.1\r\n folded\r\n\r\n", 400, "folded"),
            (b"GET /ready HTTP/1.1\r\nA b: c\r\n\r\n", 400, "token"),
            (b"GET /ready HTTP/1.1\r\nA: \x01\r\n\r\n", 400, "control"),
            (b"GET /ready HTTP/1.1\r\nHost: x\r\n", 400, "empty line"),
            (
                b"GET /ready HTTP/1.1\r\n\r\nGET /live HTTP/1.1\r\n\r\n",
                400,
                "after the end",
            ),
            (
                b"GET /ready HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                400,
                "no body",
            ),
            (
                b"GET /ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
                "no body",
            ),
            (b"GET /r\xffeady HTTP/1.1\r\n\r\n", 400, "UTF-8"),
            (b"POST /ready HTTP/1.1\r\n\r\n", 405, "\"POST\""),
            (b"GET / HTTP/1.1\r\n\r\n", 404, "\"/\""),
            (b"GET /ready/ HTTP/1.1\r\n\r\n", 404, "/ready and /live"),
        ] {
            let (got_code, message) = status(head).expect_err(&format!("{head:?}"));
            assert_eq!(got_code, code, "{head:?}: {message}");
            assert!(message.contains(part), "{head:?}: {message}");
        }
        let long = format!("GET /ready HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let err = parse(long.as_bytes()).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("longer than 4096 bytes"), "{err}");
    }

    #[test]
    fn heads_end_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET /ready HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET /ready HTTP/1.1\r\n\r\nrest"), Some(23));
        assert_eq!(head_end(b"\n"), Some(1));
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn responses_are_complete_and_close() {
        let ok = String::from_utf8(response(200, "ready: generation 2", false)).unwrap();
        assert_eq!(
            ok,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\nready: generation 2\n"
        );
        let head = String::from_utf8(response(503, "not ready", true)).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Content-Length: 10\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let refused = String::from_utf8(response(405, "no\r\nX-Forged: 1", false)).unwrap();
        assert!(refused.contains("Allow: GET, HEAD\r\n"), "{refused}");
        assert!(refused.ends_with("\r\n\r\nno  X-Forged: 1\n"), "{refused}");
    }

    proptest! {
        /// Any bytes: no panic, and a request either parses or gets a 4xx.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = head_end(&bytes);
            match parse(&bytes) {
                Ok(_) => prop_assert!(bytes.starts_with(b"GET /") || bytes.starts_with(b"HEAD /")),
                Err(err) => prop_assert!(matches!(err.status(), 400 | 404 | 405)),
            }
        }

        /// Any header values of printable text leave a GET /live a GET /live.
        #[test]
        fn printable_headers_do_not_change_the_probe(
            headers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,40}"), 0..8)
        ) {
            let mut head = String::from("GET /live HTTP/1.1\r\n");
            for (name, value) in &headers {
                if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding") {
                    continue;
                }
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            prop_assert_eq!(parse(head.as_bytes()), get(Probe::Live));
        }
    }
}
