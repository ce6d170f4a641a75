//! A worker's OS side: its notify socket, its output pipes and their watchers, its pidfd.
//! Set up before the spawn, read while it runs, dropped when it is gone.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use handover_sys::cgroup::Controller;
use handover_sys::notify::{NotifySocket, Received};
use handover_sys::process::Pidfd;
use handover_sys::spawn::SpawnRequest;
use tokio::sync::mpsc;

use super::Event;
use crate::core::model::WorkerId;
use crate::core::{Input, Sender};
use crate::output::{Lines, Origin, Output, Stream};
use crate::plan::GenerationSpec;
use crate::worker::{remember, worker_env};

/// A worker's pipe is read at most this much at a time before other events get their turn.
pub(super) const READ_BUDGET: usize = 64 * 1024;

/// The listening socket handover made for one worker's health checks (127.0.0.1, a port
/// of the kernel's choosing), passed to that worker only.
#[derive(Debug, Clone)]
pub(super) struct PrivateSocket {
    pub fd: Arc<std::os::fd::OwnedFd>,
    pub addr: std::net::SocketAddr,
}

impl PrivateSocket {
    fn bind() -> io::Result<PrivateSocket> {
        // std's sockets are CLOEXEC; the worker gets its own copy at its fd.
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        Ok(PrivateSocket {
            fd: Arc::new(listener.into()),
            addr,
        })
    }
}

/// One worker's descriptors and buffers.
#[derive(Debug)]
pub(super) struct WorkerIo {
    pub generation: u64,
    pub index: u32,
    pub spec: Arc<GenerationSpec>,
    /// Set once the spawning thread reports the process.
    pub pidfd: Option<Pidfd>,
    notify: Arc<NotifySocket>,
    stderr: Option<Arc<std::fs::File>>,
    /// None when `[logs] stdout` is `/dev/null` (then it is `/dev/null` itself).
    stdout: Option<Arc<std::fs::File>>,
    stderr_lines: Lines,
    stdout_lines: Lines,
    /// Its last stderr lines, to explain its death.
    pub stderr_tail: VecDeque<String>,
    /// Tasks watching its fds; aborted when it is dropped.
    watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Its health check socket, with `[health] check = "http"` or `"connect"`.
    private: Option<PrivateSocket>,
    /// Its cgroup, with `[handover] cgroups`.
    pub cgroup: Option<handover_sys::cgroup::WorkerCgroup>,
    /// It started at `start_nice` or `start_cpu_weight` and has not had its priority back
    /// yet.
    pub niced: bool,
    /// It started at a nice value above handover's.
    pub nice_lowered: bool,
}

impl Drop for WorkerIo {
    fn drop(&mut self) {
        for task in &self.watchers {
            task.abort();
        }
    }
}

impl WorkerIo {
    /// Creates the worker's notify socket (in `notify_dir`, owned by `owner`) and pipes, starts
    /// watching them, and builds the request for the spawning thread.
    pub(super) fn prepare(
        id: WorkerId,
        generation: u64,
        index: u32,
        spec: Arc<GenerationSpec>,
        plan: &super::Settings,
        events: &mpsc::UnboundedSender<Event>,
    ) -> io::Result<(WorkerIo, SpawnRequest)> {
        let path = plan.notify_dir.join(handover_sys::notify::socket_name(id));
        let _ = std::fs::remove_file(&path);
        let notify = Arc::new(NotifySocket::bind(&path, plan.notify_owner)?);
        let (stderr_read, stderr_write) = handover_sys::fd::pipe_cloexec()?;
        handover_sys::fd::set_nonblocking(stderr_read.as_fd())?;
        let stderr_read = Arc::new(std::fs::File::from(stderr_read));
        let mut watchers = vec![
            watch(notify.clone(), events.clone(), move || {
                Event::NotifyReadable(id)
            })?,
            watch(stderr_read.clone(), events.clone(), move || {
                Event::Readable(id, Stream::Stderr)
            })?,
        ];
        let (stdout_read, stdout_write) = if plan.output.stdout_is_null() {
            let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            (None, null.into())
        } else {
            let (read, write) = handover_sys::fd::pipe_cloexec()?;
            handover_sys::fd::set_nonblocking(read.as_fd())?;
            let read = Arc::new(std::fs::File::from(read));
            watchers.push(watch(read.clone(), events.clone(), move || {
                Event::Readable(id, Stream::Stdout)
            })?);
            (Some(read), write)
        };
        let private_name = spec.health.as_ref().and_then(|h| h.private_socket());
        let private = private_name.map(|_| PrivateSocket::bind()).transpose()?;
        let env = worker_env(&spec, generation, index, notify.path(), private_name);
        let mut sockets: Vec<_> = spec.sockets.iter().map(|s| s.fd.clone()).collect();
        sockets.extend(private.as_ref().map(|p| p.fd.clone()));
        // Last, so that nothing after it can fail and leave it behind.
        let cgroup = match &plan.cgroups {
            Some(root) => Some(
                root.create_worker(generation, index, id, &spec.limits)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("could not create its cgroup: {e}"))
                    })?,
            ),
            None => None,
        };
        let mut exec = spec.exec.clone();
        exec.cgroups = cgroup.as_ref().map(|c| c.dirs()).unwrap_or_default();
        if let Some(weight) = spec.limits.start_cpu_weight {
            // Without the cpu controller, the nice value that comes closest (giving it back
            // needs root, as for start_nice).
            let weighted = cgroup.as_ref().is_some_and(|c| c.has(Controller::Cpu));
            if !weighted && exec.start_nice == 0 && handover_sys::users::effective_uid() == 0 {
                exec.start_nice = handover_sys::cgroup::nice_for_weight(weight);
            }
        }
        let nice_lowered = exec.start_nice > 0;
        let niced = nice_lowered || spec.limits.start_cpu_weight.is_some();
        let request = SpawnRequest {
            exec,
            env,
            sockets,
            stdout: Some(stdout_write),
            stderr: Some(stderr_write),
        };
        let io = WorkerIo {
            generation,
            index,
            spec,
            pidfd: None,
            notify,
            stderr: Some(stderr_read),
            stdout: stdout_read,
            stderr_lines: Lines::default(),
            stdout_lines: Lines::default(),
            stderr_tail: VecDeque::new(),
            watchers,
            private,
            cgroup,
            niced,
            nice_lowered,
        };
        Ok((io, request))
    }

    /// Its health check socket, if it has one.
    pub(super) fn private_socket(&self) -> Option<PrivateSocket> {
        self.private.clone()
    }

    pub(super) fn pid(&self) -> Option<i32> {
        self.pidfd.as_ref().map(Pidfd::pid)
    }

    /// The next datagram on its notify socket, as an input, with the fds that came with it
    /// (to be dropped once the input is handled); `None` when there is none (or before the
    /// pid is known: a message cannot be attributed until then, so it waits).
    pub(super) fn next_notification(
        &self,
        id: WorkerId,
        my_pid: i32,
    ) -> Option<(Input, Vec<std::os::fd::OwnedFd>)> {
        let pid = self.pid()?;
        match self.notify.recv() {
            Ok(Received::Empty) => None,
            Ok(Received::Dropped {
                reason,
                sender,
                fds_closed,
            }) => Some((
                Input::NotifyDropped {
                    worker: id,
                    sender_pid: sender.map(|s| s.pid),
                    reason,
                    fds_closed,
                },
                Vec::new(),
            )),
            Ok(Received::Message {
                payload,
                sender,
                fds,
            }) => Some((
                Input::Notify {
                    worker: id,
                    sender_pid: sender.pid,
                    // Found now, while the sender still waits if it passed a barrier fd
                    // (closed only after this); one that has already exited cannot be
                    // placed, and is a stranger.
                    sender: if sender.pid == pid {
                        Sender::Worker
                    } else if handover_sys::process::descends_from(sender.pid, pid, my_pid)
                        || (self.cgroup.is_some()
                            && handover_sys::cgroup::in_cgroup_of(pid, sender.pid))
                    {
                        // With cgroups, as systemd's NotifyAccess=all: any process of the
                        // worker's cgroup, however it detached.
                        Sender::Descendant
                    } else {
                        Sender::Stranger
                    },
                    payload,
                },
                fds,
            )),
            Err(err) => {
                tracing::warn!(
                    generation = self.generation,
                    worker = self.index,
                    "reading notifications failed: {err}"
                );
                None
            }
        }
    }

    /// Reads what the worker wrote on one of its pipes, without blocking, and passes it on
    /// line by line; stderr lines are also kept to explain a death. Reads at most
    /// [`READ_BUDGET`] bytes; returns whether more may be waiting.
    pub(super) fn read_stream(&mut self, stream: Stream, output: &Output) -> bool {
        // Every line carries the worker's pid: until it is known, output waits in the pipe.
        let Some(pid) = self.pid() else {
            return false;
        };
        let max_line = output.max_line();
        let mut buf = [0u8; 8192];
        let mut read = 0;
        loop {
            let pipe_slot = match stream {
                Stream::Stderr => &mut self.stderr,
                Stream::Stdout => &mut self.stdout,
            };
            let Some(pipe) = pipe_slot.clone() else {
                return false;
            };
            if read >= READ_BUDGET {
                return true;
            }
            let n = match (&*pipe).read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            read += n;
            if n == 0 {
                *pipe_slot = None;
            }
            let program = self
                .spec
                .exec
                .argv
                .first()
                .map(|p| p.as_bytes())
                .unwrap_or_default();
            let origin = Origin {
                generation: self.generation,
                index: self.index,
                pid,
                program,
            };
            let (lines, mut tail) = match stream {
                Stream::Stderr => (&mut self.stderr_lines, Some(&mut self.stderr_tail)),
                Stream::Stdout => (&mut self.stdout_lines, None),
            };
            let mut emit = |line: &[u8], continues: bool| {
                output.line(stream, &origin, line, continues);
                if let Some(tail) = tail.as_deref_mut() {
                    remember(tail, line);
                }
            };
            if n == 0 {
                lines.flush(&mut emit);
                return false;
            }
            lines.push(&buf[..n], max_line, &mut emit);
        }
    }
}

/// Sends `event()` every time `fd` becomes readable; the driver does the reading.
fn watch<T: AsFd + Send + Sync + 'static>(
    fd: Arc<T>,
    events: mpsc::UnboundedSender<Event>,
    event: impl Fn() -> Event + Send + 'static,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let async_fd = handover_sys::watch::readable(fd)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = async_fd.readable().await else {
                return;
            };
            // A closed pipe stays readable forever: report it once and stop watching.
            let closed = guard.ready().is_read_closed();
            // Cleared before the driver reads: data arriving later raises a new edge.
            guard.clear_ready();
            if events.send(event()).is_err() || closed {
                return;
            }
        }
    }))
}
