"""gunicorn settings for running under handover (or systemd socket activation).

    gunicorn --config gunicorn.conf.py app:app

gunicorn reads this file in its master process before it looks at its sockets, which lets it
take one socket by name, and say READY=1 only once a worker can answer.
"""

import os
import socket
import sys

# handover runs `count` copies of this gunicorn master; each forks `workers` processes that
# accept on the shared socket: count x workers processes in all. One worker per master
# leaves the number, the restarts and the reloads to handover.
workers = 1
# The sync worker answers every request with "Connection: close" and finishes the request it
# is busy with when told to stop: there is no keep-alive connection to drain.
worker_class = "sync"
# On SIGTERM the master stops listening and gives its workers this long; keep it below
# handover's drain_timeout and stop_timeout, so that gunicorn ends before handover kills it.
graceful_timeout = 20
accesslog = None


def _inherited_fd(name):
    """The fd handover passed under `name` (LISTEN_FDNAMES), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for index, fd_name in enumerate(names[:count]):
        if fd_name == name:
            return 3 + index
    sys.exit(f"no inherited socket is named {name!r} (LISTEN_FDNAMES={':'.join(names)})")


# Without SOCKET_NAME gunicorn takes every inherited socket itself, as systemd passes them
# (only if LISTEN_PID is its own pid: start gunicorn with exec, never under a shell that
# stays). With it, only the socket of that name: gunicorn would add all the others to an
# fd:// bind, so the activation variables are hidden from it.
_socket_name = os.environ.get("SOCKET_NAME")
if _socket_name:
    _fd = _inherited_fd(_socket_name)
    if _fd is not None:
        bind = [f"fd://{_fd}"]
        for _var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(_var, None)

# gunicorn's master says READY=1 as soon as it holds its sockets, before its first worker
# exists, let alone has imported the app: a broken release would count as ready. So the
# master never sees NOTIFY_SOCKET, and each worker says READY=1 once the app is loaded.
# (handover's default notify_access = "all" accepts it from a worker; under systemd,
# NotifyAccess=all.)
_notify_socket = os.environ.pop("NOTIFY_SOCKET", None)


def post_worker_init(worker):
    if not _notify_socket:
        return
    address = "\0" + _notify_socket[1:] if _notify_socket.startswith("@") else _notify_socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(b"READY=1")
    except OSError as error:
        worker.log.warning("cannot send READY=1 to %r: %s", _notify_socket, error)
