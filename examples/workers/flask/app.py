"""A Flask worker for handover on Werkzeug's own server: takes its socket by fd or by name,
says READY=1, drains politely.

    python app.py [--socket NAME]

Without --socket it serves on fd 3, the first socket handover (or systemd) passes; with it,
on the socket of that name in LISTEN_FDNAMES. Started without a socket at all, it binds
127.0.0.1:8080.

Werkzeug's server is a development server; it is here because many small apps run on it.
It answers every request with "Connection: close", so no keep-alive connection is ever left
to drain.
"""

import argparse
import os
import signal
import socket
import sys
import threading

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

# A client that connects and sends nothing is given up after this long, so that it cannot
# hold up the drain; keep it below handover's drain_timeout.
REQUEST_TIMEOUT = 5.0

app = Flask(__name__)
BODY = "hello from pid {} (worker {}, generation {})\n".format(
    os.getpid(),
    os.environ.get("HANDOVER_WORKER", "-"),
    os.environ.get("HANDOVER_GENERATION", "-"),
)


@app.get("/")
def hello():
    return BODY


def inherited_fd(name):
    """The fd of the socket handover passed under `name`, fd 3 without a name, None if none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None  # the variables are not meant for this process
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        return None
    if name is None:
        return 3
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for index, fd_name in enumerate(names[:count]):
        if fd_name == name:
            return 3 + index
    sys.exit(f"no inherited socket is named {name!r} (LISTEN_FDNAMES={':'.join(names)})")


def notify(state):
    """Sends an sd_notify message (READY=1, STOPPING=1) to $NOTIFY_SOCKET, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as error:
        # Not fatal: a worker that cannot notify still serves, and handover judges it.
        print(f"cannot notify {address!r}: {error}", file=sys.stderr, flush=True)


class Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT


def make_inherited_server(fd):
    # make_server wants a host and port even with fd=, and picks the address family from the
    # host: give it one of the socket's own family. The address itself is not used.
    family = socket.socket(fileno=fd)
    host = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}.get(family.family)
    family.detach()  # leaves the fd open
    if host is None:
        sys.exit(f"fd {fd} is not a TCP socket")
    server = make_server(host, 0, app, threaded=True, request_handler=Handler, fd=fd)
    # make_server works on a copy of the fd: close the original, so that closing the server
    # really stops this process listening.
    os.close(fd)
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", metavar="NAME", help="the inherited socket to serve on")
    args = parser.parse_args()
    fd = inherited_fd(args.socket)
    if fd is None:
        server = make_server("127.0.0.1", 8080, app, threaded=True, request_handler=Handler)
    else:
        server = make_inherited_server(fd)
    # The socket is shared with the other workers, and every one of them wakes up when a
    # connection arrives; only one gets it. In blocking mode the others would sleep in
    # accept() until the next connection, deaf to the request to stop. Non-blocking, they
    # find nothing and go back to waiting for the stop as well.
    server.socket.setblocking(False)
    # Werkzeug runs each connection in a daemon thread, which the drain would not wait for:
    # the process would exit with their requests unanswered.
    server.daemon_threads = False

    # The stop signal may be delivered to any thread, but Python runs its handlers in the main
    # thread only, which could sleep through it. Blocked in every thread (threads inherit the
    # mask), it waits for the main thread's sigwait().
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    notify("READY=1")
    signal.sigwait(stop_signals)

    notify("STOPPING=1")
    # The serving loop ends; Werkzeug then closes the listening socket and waits for the
    # threads of the connections it has accepted, whose requests are answered.
    server.shutdown()
    serving.join()


if __name__ == "__main__":
    main()
