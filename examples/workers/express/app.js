// An Express worker for handover: takes its socket by fd or by name, says READY=1, drains
// politely.
//
//     node app.js [--socket NAME]
//
// Without --socket it serves on fd 3, the first socket handover (or systemd) passes; with it,
// on the socket of that name in LISTEN_FDNAMES. Started without a socket at all, it listens
// on 127.0.0.1:8080.
//
// Node's server.close() (since Node 19) closes idle keep-alive connections at once, also
// those a request is on its way on, and never says "Connection: close" to the requests it
// finishes. This app stops listening without that, answers with "Connection: close" while
// draining, and closes only connections that stayed idle for a moment.
'use strict';

const { execFile } = require('node:child_process');
const net = require('node:net');
const express = require('express');

// After the stop signal, an idle connection is kept this long for a request that is still to
// come; only connections idle for this long are closed.
const IDLE_GRACE_MS = 1000;
// Requests still running after that get this long; keep it below handover's drain_timeout.
const IN_FLIGHT_LIMIT_MS = 20000;

// The fd of the socket passed under `name`, fd 3 without a name, null if none.
function inheritedFd(name) {
  if (process.env.LISTEN_PID !== String(process.pid)) {
    return null; // the variables are not meant for this process
  }
  const count = parseInt(process.env.LISTEN_FDS || '0', 10);
  if (!(count >= 1)) {
    return null;
  }
  if (name === undefined) {
    return 3;
  }
  const names = (process.env.LISTEN_FDNAMES || '').split(':').slice(0, count);
  const index = names.indexOf(name);
  if (index < 0) {
    console.error(`no inherited socket is named ${JSON.stringify(name)} (LISTEN_FDNAMES=${names.join(':')})`);
    process.exit(1);
  }
  return 3 + index;
}

// Node cannot send a datagram to a unix socket by itself, so READY=1 goes through systemd's
// own tool. It sends from its own pid: handover's default notify_access = "all" accepts that.
function notifyReady() {
  if (!process.env.NOTIFY_SOCKET) {
    return;
  }
  execFile('systemd-notify', ['--ready'], (error) => {
    if (error) {
      console.error(`systemd-notify --ready failed: ${error.message}`);
    }
  });
}

let draining = false;
const body = `hello from pid ${process.pid} (worker ${process.env.HANDOVER_WORKER || '-'}, generation ${process.env.HANDOVER_GENERATION || '-'})\n`;

const app = express();
app.use((req, res, next) => {
  // Decided when the answer starts, so that a request that was already running when the stop
  // signal came is told to close too; Node then closes the connection once it is sent.
  const writeHead = res.writeHead;
  res.writeHead = function writeHeadWhileDraining(...args) {
    if (draining) {
      this.setHeader('Connection', 'close');
    }
    return writeHead.apply(this, args);
  };
  next();
});
app.get('/', (req, res) => {
  res.type('text/plain').send(body);
});

const argv = process.argv.slice(2);
const socketName = argv[0] === '--socket' ? argv[1] : undefined;
const fd = inheritedFd(socketName);
const server = app.listen(fd === null ? { host: '127.0.0.1', port: 8080 } : { fd }, (error) => {
  if (error) {
    console.error(`cannot listen: ${error.message}`);
    process.exit(1);
  }
  notifyReady();
});

function drain() {
  if (draining) {
    return;
  }
  draining = true;
  // net.Server's close, not http.Server's: stop listening now, but keep the connections.
  // The callback runs once the last connection is gone.
  net.Server.prototype.close.call(server, () => process.exit(0));
  setTimeout(() => server.closeIdleConnections(), IDLE_GRACE_MS);
  setTimeout(() => process.exit(0), IDLE_GRACE_MS + IN_FLIGHT_LIMIT_MS).unref();
}
process.on('SIGTERM', drain);
process.on('SIGINT', drain);
