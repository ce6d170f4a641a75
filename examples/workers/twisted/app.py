"""A Twisted Web worker for handover: takes its socket by fd or by name, says READY=1, drains
politely.

    python app.py [--socket NAME]

Without --socket it adopts fd 3, the first socket handover (or systemd) passes, with
reactor.adoptStreamPort; with it, it listens on Twisted's `systemd:` endpoint, which finds the
socket of that name in LISTEN_FDNAMES. Started without a socket at all, it binds
127.0.0.1:8080.

Twisted's own stop (reactor.stop on SIGTERM) drops every open connection, requests in flight
included. This app stops listening instead, answers what comes with "Connection: close",
and stops the reactor once its connections are gone.
"""

import argparse
import os
import signal
import socket
import sys


def inherited_sockets():
    """{name: fd} of the sockets handover (or systemd) passed to this very process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    return {names[i] if i < len(names) else "unknown": 3 + i for i in range(count)}


# Twisted's systemd support reads LISTEN_PID and LISTEN_FDS when twisted.internet.endpoints
# is imported, and removes them from the environment: look at them first.
INHERITED = inherited_sockets()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import succeed  # noqa: E402
from twisted.internet.endpoints import serverFromString  # noqa: E402
from twisted.logger import globalLogBeginner, textFileLogObserver  # noqa: E402
from twisted.web import http, resource, server  # noqa: E402

# After the stop signal, an idle connection is kept this long for a request that is still to
# come; only connections idle for this long are closed.
IDLE_GRACE = 1.0
# Requests still running after that get this long; keep it below handover's drain_timeout.
IN_FLIGHT_LIMIT = 20.0

BODY = "hello from pid {} (worker {}, generation {})\n".format(
    os.getpid(),
    os.environ.get("HANDOVER_WORKER", "-"),
    os.environ.get("HANDOVER_GENERATION", "-"),
).encode()

draining = False
channels = set()


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


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return BODY


class PoliteRequest(server.Request):
    def write(self, data):
        if not self.startedWriting and draining:
            # Also for a request that arrived before the stop signal: its answer says
            # "Connection: close", and the channel closes once it is sent.
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])
            self.channel.persistent = False
        super().write(data)


class PoliteChannel(http.HTTPChannel):
    """An HTTP connection that the drain can see."""

    def connectionMade(self):
        super().connectionMade()
        channels.add(self)

    def connectionLost(self, reason):
        channels.discard(self)
        super().connectionLost(reason)

    def checkPersistence(self, request, version):
        if draining:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)


def set_nonblocking(fd):
    """Twisted adopts a socket as it is, and a blocking one would stall its reactor in
    accept(): the other workers take most connections the reactor is woken for."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    family = sock.family
    sock.detach()  # leaves the fd open
    return family


def listen(site, name):
    """Listens on the inherited socket `name` (fd 3 without a name), or binds one."""
    if name is not None:
        if name not in INHERITED:
            sys.exit(f"no inherited socket is named {name!r} (have {sorted(INHERITED)})")
        set_nonblocking(INHERITED[name])
        # The `systemd:` endpoint looks the name up in LISTEN_FDNAMES (INET6 for IPv6).
        return serverFromString(reactor, f"systemd:domain=INET:name={name}").listen(site)
    if INHERITED:
        port = reactor.adoptStreamPort(3, set_nonblocking(3), site)
        # adoptStreamPort takes a copy of the fd; close ours, so that stopping the port
        # really stops this process listening.
        os.close(3)
        return succeed(port)
    return serverFromString(reactor, "tcp:8080:interface=127.0.0.1").listen(site)


def drain(port):
    global draining
    if draining:
        return
    draining = True
    notify("STOPPING=1")
    port.stopListening()
    began = reactor.seconds()

    def check():
        now = reactor.seconds()
        if not channels or now - began > IDLE_GRACE + IN_FLIGHT_LIMIT:
            reactor.stop()
            return
        if now - began >= IDLE_GRACE:
            # Idle for the whole grace: no request will come any more.
            for channel in list(channels):
                if not channel.requests:
                    channel.transport.loseConnection()
        reactor.callLater(0.02, check)

    check()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", metavar="NAME", help="the inherited socket to serve on")
    args = parser.parse_args()

    # Twisted's errors go to stderr, which handover passes on to its log.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    site = server.Site(Hello())
    site.protocol = PoliteChannel
    site.requestFactory = PoliteRequest
    site.log = lambda request: None  # no access log

    def listening(port):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: reactor.callFromThread(drain, port))
        notify("READY=1")

    def failed(failure):
        print(f"cannot listen: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        exit_code.append(1)
        reactor.stop()

    exit_code = []

    listen(site, args.socket).addCallbacks(listening, failed)
    # Twisted's own handlers would stop the reactor at once on SIGTERM.
    reactor.run(installSignalHandlers=False)
    sys.exit(max(exit_code, default=0))


if __name__ == "__main__":
    main()
