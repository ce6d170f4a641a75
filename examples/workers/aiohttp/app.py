"""An aiohttp worker for handover: takes its socket by fd or by name, says READY=1, drains politely.

    python app.py [--socket NAME]

Without --socket it serves on fd 3, the first socket handover (or systemd) passes; with it,
on the socket of that name in LISTEN_FDNAMES. Started without a socket at all, it binds
127.0.0.1:8080, so that it also runs on a laptop.
"""

import argparse
import asyncio
import os
import signal
import socket
import sys

from aiohttp import web

# After the stop signal, a connection is kept this long for a request that is still to come
# (one the client already sent, or the next one on a keep-alive connection); each is answered
# with "Connection: close". Only connections idle for this long are then closed.
IDLE_GRACE = 1.0
# Requests still running after the grace get this long to finish; keep it below handover's
# drain_timeout and stop_timeout.
IN_FLIGHT_LIMIT = 20.0


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


def listening_socket(name):
    fd = inherited_fd(name)
    if fd is None:
        return socket.create_server(("127.0.0.1", 8080))
    # socket.socket(fileno=...) takes over the fd itself (no copy), so closing the socket
    # closes the inherited fd and this process really stops listening.
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


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
)


async def hello(request):
    return web.Response(text=BODY)


@web.middleware
async def close_while_draining(request, handler):
    response = await handler(request)
    if draining:
        # Every response sent after the stop signal says "Connection: close", and aiohttp
        # closes the connection once it is written: the client knows not to reuse it.
        response.force_close()
    return response


async def serve(sock):
    global draining
    app = web.Application(middlewares=[close_while_draining])
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(runner.server, sock=sock)

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notify("READY=1")
    await stop.wait()

    # Stop listening at once. asyncio accepts several connections per wake-up and sets each
    # up a moment later; closing the server before that would drop them, so stop accepting
    # first and let the connections already accepted be set up.
    draining = True
    loop.remove_reader(sock.fileno())
    for _ in range(3):
        await asyncio.sleep(0)
    server.close()
    notify("STOPPING=1")

    # Connections close themselves after their next response; wait for that, a while.
    deadline = loop.time() + IDLE_GRACE
    while runner.server.connections and loop.time() < deadline:
        await asyncio.sleep(0.02)
    # What is left has been idle for the whole grace, or is still busy with a request:
    # aiohttp closes the idle ones and waits for the busy ones.
    await runner.server.shutdown(IN_FLIGHT_LIMIT)
    await runner.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", metavar="NAME", help="the inherited socket to serve on")
    args = parser.parse_args()
    asyncio.run(serve(listening_socket(args.socket)))


if __name__ == "__main__":
    main()
