//! Readiness checks handover makes itself (`ready = "http"` or `"connect"`): a connection to
//! the worker's generation on its own steered socket, sent there by the selector by its source
//! port, so it reaches the new generation before any user connection does.
//!
//! A check reaches the generation, not one particular worker: a generation's workers share
//! its socket. Each worker counts as ready once a check started after it did has passed.
//!
//! Health checks (`[health] check = "http"` or `"connect"`) go the same way to the one
//! worker that has the private socket handover made for it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::steering::Steering;

/// The most of an answer read to find its status line.
const STATUS_LINE_MAX: usize = 4096;
/// How often the `connect` check looks whether its connection was accepted.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// One readiness check; the caller bounds it in time (the probe timeout). `Ok` when it
/// passed.
pub(super) async fn check(
    steering: Arc<Steering>,
    member: Arc<OwnedFd>,
    http: Option<(String, u16)>,
) -> Result<(), String> {
    let stream = steering
        .connect_to(&member)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let stream =
        tokio::net::TcpStream::from_std(stream).map_err(|e| format!("cannot connect: {e}"))?;
    let http = http.map(|(path, status)| ("GET".to_owned(), path, status));
    exchange(stream, http, || {
        steering.queued(std::slice::from_ref(&member))
    })
    .await
}

/// One health check of the worker listening on `private`; the core bounds it in time.
pub(super) async fn health(
    private: super::io::PrivateSocket,
    http: Option<(String, String, u16)>,
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(private.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", private.addr))?;
    exchange(stream, http, || {
        handover_sys::steer::queue_len(private.fd.as_fd()).unwrap_or(u32::MAX)
    })
    .await
}

/// Over a connection being made to a listener: with `http` (method, path, status), asks and
/// reads the status line (at most [`STATUS_LINE_MAX`] bytes, whatever the answer's size);
/// without, waits until the listener's queue (`queued`) is empty, that is, the connection
/// was accepted.
async fn exchange(
    mut stream: tokio::net::TcpStream,
    http: Option<(String, String, u16)>,
    queued: impl Fn() -> u32,
) -> Result<(), String> {
    // Established (or refused) once writable.
    stream
        .writable()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if let Some(err) = stream.take_error().ok().flatten() {
        return Err(format!("cannot connect: {err}"));
    }
    let Some((method, path, expected)) = http else {
        // Accepted once nothing waits in the queue: only handover's own connections go
        // there (a generation's socket before its promotion, a worker's private socket).
        loop {
            if queued() == 0 {
                return Ok(());
            }
            tokio::time::sleep(ACCEPT_POLL).await;
        }
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: handover\r\nConnection: close\r\n\r\n"
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
        if answer.is_empty() {
            return "the connection closed without an answer".to_string();
        }
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

    /// A loopback server that answers every connection with `head`, then streams `x` without
    /// end (until the client goes), and counts what it sent.
    async fn endless(
        head: &'static [u8],
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 512];
            let _ = conn.read(&mut request).await;
            let filler = [b'x'; 4096];
            let mut out = head.to_vec();
            // Bounded: 64 MiB at most, far past what a check may read.
            for _ in 0..(64 << 20) / filler.len() {
                if conn.write_all(&out).await.is_err() {
                    return;
                }
                counter.fetch_add(out.len(), std::sync::atomic::Ordering::Relaxed);
                out = filler.to_vec();
            }
        });
        (addr, sent)
    }

    async fn check_at(addr: std::net::SocketAddr) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let http = Some(("GET".to_owned(), "/ok".to_owned(), 200));
        // A guard against a hang only: a check that reads its bound ends at once.
        tokio::time::timeout(Duration::from_secs(30), exchange(stream, http, || 0))
            .await
            .expect("the check ended")
    }

    #[tokio::test]
    async fn an_endless_answer_is_read_only_up_to_its_bound() {
        // A status line, then a body without end: passes on the status line.
        let (addr, _) = endless(b"HTTP/1.1 200 OK\r\n").await;
        assert_eq!(check_at(addr).await, Ok(()));
        // No line end ever: given up after at most STATUS_LINE_MAX bytes (and a chunk).
        let (addr, sent) = endless(b"HTTP/1.1 200").await;
        let result = check_at(addr).await;
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.starts_with("not an HTTP answer: \"HTTP/1.1 200xxx")),
            "{result:?}"
        );
        // The server could send more than was read (socket buffers), but it was stopped:
        // far below the 64 MiB it would send to a reader without a bound.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 16 << 20, "{sent} bytes were sent");
    }
}
