"""A uvicorn (ASGI) worker for handover: takes its socket by fd or by name, says READY=1, drains
politely.

    python app.py [--socket NAME]

Without --socket it serves on fd 3, the first socket handover (or systemd) passes; with it,
on the socket of that name in LISTEN_FDNAMES. Started without a socket at all, it binds
127.0.0.1:8080.

uvicorn's own shutdown closes keep-alive connections the moment it is told to stop, also
those whose request is on its way, and does not say "Connection: close" to the requests it
finishes. Three small changes make it polite: an ASGI middleware that adds the header while
draining, an h11 protocol that keeps an idle connection a moment longer, and a server that
lets the connections asyncio has just accepted be set up before it stops listening.
"""

import argparse
import asyncio
import os
import signal
import socket
import sys

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

# After the stop signal, an idle connection is kept this long for a request that is still to
# come; only connections idle for this long are closed.
IDLE_GRACE = 1.0
# Requests still running get this long to finish; keep it below handover's drain_timeout.
IN_FLIGHT_LIMIT = 20


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


draining = False
BODY = "hello from pid {} (worker {}, generation {})\n".format(
    os.getpid(),
    os.environ.get("HANDOVER_WORKER", "-"),
    os.environ.get("HANDOVER_GENERATION", "-"),
).encode()


async def app(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def close_while_draining(inner):
    """ASGI middleware: every response started after the stop signal says
    "Connection: close", and uvicorn closes the connection once it is sent."""

    async def middleware(scope, receive, send):
        async def send_with_close(message):
            if message["type"] == "http.response.start" and draining:
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": headers + [(b"connection", b"close")]}
            await send(message)

        await inner(scope, receive, send_with_close if scope["type"] == "http" else send)

    return middleware


class PoliteH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but an idle connection is closed only after IDLE_GRACE."""

    def shutdown(self):
        if self.cycle is None or self.cycle.response_complete:
            # Idle, or accepted with its request not read yet: a request may be on its way.
            self.loop.call_later(IDLE_GRACE, self._close_if_still_idle)
        else:
            super().shutdown()

    def _close_if_still_idle(self):
        if not self.transport.is_closing():
            super().shutdown()


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            notify("READY=1")

    async def shutdown(self, sockets=None):
        global draining
        draining = True
        notify("STOPPING=1")
        # asyncio accepts several connections per wake-up and sets each up a moment later;
        # closing the server before that would drop them. Stop accepting first, then let
        # the connections already accepted be set up, then close.
        loop = asyncio.get_running_loop()
        for server in self.servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        await super().shutdown(sockets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", metavar="NAME", help="the inherited socket to serve on")
    args = parser.parse_args()
    fd = inherited_fd(args.socket)
    config = uvicorn.Config(
        close_while_draining(app),
        host="127.0.0.1",
        port=8080,  # only when no socket is inherited
        http=PoliteH11Protocol,
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=IN_FLIGHT_LIMIT,
    )
    server = Server(config)
    # uvicorn re-raises the stop signal once it has shut down, with the handler that was there
    # before it started. Catching it here makes the worker exit 0 after a clean drain.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if fd is None:
        server.run()
    else:
        # Handing uvicorn the socket itself (rather than `fd=`, which makes it work on a copy)
        # means that its stop closes the inherited fd, so this process really stops listening.
        server.run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    main()
