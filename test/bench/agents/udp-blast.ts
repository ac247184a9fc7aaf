// UDP load: `sockets` client sockets (one flow each), each keeping up to `window` datagrams in flight
// to an echo service, for `durationMs`. Datagrams not echoed within `lossAfterMs` count as lost.
import dgram from "node:dgram";
import { parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const port = Number(args.port);
const durationMs = Number(args.durationMs ?? 5000);
const nSockets = Number(args.sockets ?? 4);
const window = Number(args.window ?? 32);
const size = Number(args.size ?? 64);
const lossAfterMs = Number(args.lossAfterMs ?? 250);

interface Flow {
  sock: dgram.Socket;
  inflight: number;
  sent: number;
  received: number;
  lastRx: number;
}

const payload = Buffer.alloc(size, 0x61);
const flows: Flow[] = [];
let running = true;
let bound = 0;
const t0 = Date.now();

function pump(f: Flow): void {
  while (running && f.inflight < window) {
    f.inflight++;
    f.sent++;
    f.sock.send(payload, port, "127.0.0.1");
  }
}

for (let i = 0; i < nSockets; i++) {
  const sock = dgram.createSocket({ type: "udp4", recvBufferSize: 8 << 20, sendBufferSize: 8 << 20 });
  const f: Flow = { sock, inflight: 0, sent: 0, received: 0, lastRx: Date.now() };
  flows.push(f);
  sock.on("message", () => {
    f.received++;
    f.lastRx = Date.now();
    if (f.inflight > 0) f.inflight--;
    pump(f);
  });
  sock.on("error", () => {});
  sock.bind(0, "127.0.0.1", () => {
    if (++bound === nSockets) for (const fl of flows) pump(fl);
  });
}

// A flow that has heard nothing for lossAfterMs has lost what it had in flight: refill its window.
const watchdog = setInterval(() => {
  const now = Date.now();
  for (const f of flows) {
    if (now - f.lastRx > lossAfterMs && f.inflight > 0) {
      f.inflight = 0;
      f.lastRx = now;
      pump(f);
    }
  }
}, 20);

setTimeout(() => {
  running = false;
  const activeMs = Date.now() - t0;
  // Let late echoes arrive before counting.
  setTimeout(() => {
    clearInterval(watchdog);
    const sent = flows.reduce((a, f) => a + f.sent, 0);
    const received = flows.reduce((a, f) => a + f.received, 0);
    report({ sent, received, durationMs: activeMs, rate: (received / activeMs) * 1000, loss: sent > 0 ? (sent - received) / sent : 0 });
    for (const f of flows) f.sock.close();
  }, lossAfterMs * 2);
}, durationMs);
