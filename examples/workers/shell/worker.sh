#!/bin/sh
# A worker written as a shell script, for handover: it does its own preparation, says
# READY=1 with systemd-notify, and then becomes the server with exec.
#
#     worker.sh PROGRAM [ARGS...]
#
# PROGRAM is any server that takes its socket at fd 3 (or by name in LISTEN_FDNAMES) and
# drains politely on SIGTERM, but knows nothing of sd_notify. The script keeps the pid it was
# started with all the way into PROGRAM, so LISTEN_PID stays right and the stop signal
# reaches the server itself.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: worker.sh PROGRAM [ARGS...]" >&2
    exit 2
fi

# The script's own work comes here: render the configuration, run migrations, warm a cache.
# Whatever fails here exits non-zero before READY=1, so handover aborts the reload and the
# old generation keeps serving.
test -x "$1" || command -v "$1" >/dev/null || {
    echo "worker.sh: $1 is not a program" >&2
    exit 1
}

# READY=1 now, just before the server takes over: connections that arrive until it accepts
# wait in the kernel's queue of the socket handover holds, so none is lost. systemd-notify
# sends from a pid of its own, which handover's default notify_access = "all" accepts, then
# waits until the message was received. If it fails, the server still starts: READY=1 may
# have arrived all the same, and if not, handover's ready_timeout says so.
if [ -n "${NOTIFY_SOCKET:-}" ]; then
    systemd-notify --ready || echo "worker.sh: systemd-notify --ready failed" >&2
fi
# The server is not meant to talk to handover.
unset NOTIFY_SOCKET
exec "$@"
