//! Readiness checks handover makes itself (`ready = "http"` or `"connect"`): a connection to
//! the worker's generation on its own steered socket, sent there by the selector by its source
//! port, so it reaches the new generation before any user connection does.
//!
//! A check reaches the generation, not one particular worker: a generation's workers share
//! its socket. Each worker counts as ready once a check started after it did has passed.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::steering::Steering;

/// The most of an answer read to find its status line.
const STATUS_LINE_MAX: usize = 4096;
/// How often the `connect` check looks whether its connection was accepted.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// One check; the caller bounds it in time (the probe timeout). `Ok` when it passed.
pub(super) async fn check(
    steering: Arc<Steering>,
    member: Arc<OwnedFd>,
    http: Option<(String, u16)>,
) -> Result<(), String> {
    let stream = steering
        .connect_to(&member)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut stream =
        tokio::net::TcpStream::from_std(stream).map_err(|e| format!("cannot connect: {e}"))?;
    // Established (or refused) once writable.
    stream
        .writable()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if let Some(err) = stream.take_error().ok().flatten() {
        return Err(format!("cannot connect: {err}"));
    }
    let Some((path, expected)) = http else {
        // Accepted once nothing waits in the generation's queue: before its promotion, only
        // handover's own connections go there.
        loop {
            if steering.queued(std::slice::from_ref(&member)) == 0 {
                return Ok(());
            }
            tokio::time::sleep(ACCEPT_POLL).await;
        }
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: handover\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !answer.contains(&b'\n') && answer.len() < STATUS_LINE_MAX {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let status = status_of(&answer).ok_or_else(|| {
        let shown: String = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into();
        format!("not an HTTP answer: {shown:?}")
    })?;
    if status == expected {
        Ok(())
    } else {
        Err(format!("answered {status}, expected {expected}"))
    }
}

/// The status code of an HTTP/1 answer's first line.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_strictly() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\nx: y\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        for bad in [
            &b""[..],
            b"SSH-2.0-OpenSSH",
            b"HTTP/2 200",
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 abc OK",
            b"\xff\xfe",
        ] {
            assert_eq!(status_of(bad), None, "{bad:?}");
        }
    }
}
