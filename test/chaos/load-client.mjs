// Client load loop run inside the chaos client container (plain JS: the container has node, no build).
// Opens TCP connections to the target, each from one of the given source addresses, speaks HTTP/1.1
// to the demo backend behind Ballast and records what happened to every connection. Bounded both
// ways: stops opening connections after `connections` or `durationMs`, and exits at
// durationMs + timeoutMs + 2 s whatever happens.
//
//   node load-client.mjs '<json options>'   →  one JSON document on stdout (see `report` below)
//
// Options: target "ip:port"; sources [ip…] (round robin; each source is one "client"); concurrency;
// connections (max count); durationMs; timeoutMs (per request, default 2000); requests per
// connection (keep-alive, default 1) with gapMs between them; holdMs (the backend delays each
// answer, for long-lived connections); firstHoldMs (the first request's hold, default holdMs: 0 makes
// the first answer name the node and backend at once); startAt (epoch ms to start at, so the caller
// can line up its fault with the load). Each record carries its local port, so the caller can find the
// connection in the router's conntrack table (which node it was pinned to, even when it failed).
import net from "node:net";

const opts = JSON.parse(process.argv[2] ?? "{}");
const [host, portText] = String(opts.target).split(":");
const port = Number(portText);
const sources = opts.sources?.length ? opts.sources : [undefined];
const concurrency = opts.concurrency ?? 8;
const maxConnections = opts.connections ?? 1_000_000;
const durationMs = opts.durationMs ?? 5_000;
const timeoutMs = opts.timeoutMs ?? 2_000;
const requests = Math.max(1, opts.requests ?? 1);
const gapMs = opts.gapMs ?? 0;
const holdMs = opts.holdMs ?? 0;
const firstHoldMs = opts.firstHoldMs ?? holdMs;
const pathFor = (n) => {
  const hold = n === 0 ? firstHoldMs : holdMs;
  return hold > 0 ? `/?delay=${hold}` : "/";
};

/** One connection's fate; times in ms since `t0`. */
function runConnection(index, source, t0) {
  return new Promise((resolve) => {
    const rec = { i: index, src: source ?? null, port: 0, start: Date.now() - t0, connectMs: -1, end: -1, ok: false, err: null, backends: [], nodes: [], answered: 0 };
    const socket = net.connect({ host, port, localAddress: source });
    // The port is bound once the connect is under way; a connection that never completes keeps it too.
    setTimeout(() => {
      rec.port ||= socket.localPort ?? 0;
    }, 20);
    let buffer = "";
    let timer = null;
    let finished = false;
    const finish = (err) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      rec.end = Date.now() - t0;
      rec.ok = err === null;
      rec.err = err;
      rec.port = socket.localPort ?? rec.port;
      socket.destroy();
      resolve(rec);
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => finish(rec.connectMs < 0 ? "connect-timeout" : "timeout"), timeoutMs + Math.max(holdMs, firstHoldMs));
    };
    const send = () => {
      arm();
      socket.write(`GET ${pathFor(rec.answered)} HTTP/1.1\r\nHost: chaos\r\nConnection: ${rec.answered + 1 < requests ? "keep-alive" : "close"}\r\n\r\n`);
    };
    arm();
    socket.setNoDelay(true);
    socket.on("connect", () => {
      rec.connectMs = Date.now() - t0 - rec.start;
      rec.port = socket.localPort;
      send();
    });
    socket.on("data", (chunk) => {
      buffer += chunk.toString("latin1");
      // One answer = status line, headers with a content-length (the demo backend sends one), JSON body.
      for (;;) {
        const headEnd = buffer.indexOf("\r\n\r\n");
        if (headEnd < 0) return;
        const lengthMatch = /\r\ncontent-length:\s*(\d+)/i.exec(buffer.slice(0, headEnd));
        const length = lengthMatch ? Number(lengthMatch[1]) : 0;
        if (buffer.length < headEnd + 4 + length) return;
        const status = Number(buffer.slice(9, 12));
        let answer = {};
        try {
          answer = JSON.parse(buffer.slice(headEnd + 4, headEnd + 4 + length));
        } catch {
          // a body that is not the demo backend's: count the status only
        }
        buffer = buffer.slice(headEnd + 4 + length);
        rec.answered++;
        rec.backends.push(answer.backend ?? null);
        rec.nodes.push(answer.peer ? answer.peer.replace(/:\d+$/, "") : null);
        if (status !== 200) return finish(`http-${status}`);
        if (rec.answered >= requests) return finish(null);
        if (gapMs > 0) {
          clearTimeout(timer);
          timer = setTimeout(send, gapMs);
        } else send();
      }
    });
    socket.on("error", (err) => finish(err.code ?? err.message));
    socket.on("close", () => finish(rec.answered >= requests ? null : rec.connectMs < 0 ? "closed-before-connect" : "closed"));
  });
}

async function main() {
  const startAt = opts.startAt ?? Date.now();
  if (startAt > Date.now()) await new Promise((r) => setTimeout(r, startAt - Date.now()));
  const t0 = Date.now();
  const deadline = t0 + durationMs;
  // The hard bound: whatever hangs, the process ends and reports what it has.
  const results = [];
  let next = 0;
  const hardStop = setTimeout(() => report(results, t0, true), durationMs + timeoutMs + Math.max(holdMs, firstHoldMs) * requests + gapMs * requests + 2_000);
  hardStop.unref();
  const worker = async () => {
    while (next < maxConnections && Date.now() < deadline) {
      const index = next++;
      results.push(await runConnection(index, sources[index % sources.length], t0));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  report(results, t0, false);
}

function report(results, t0, cutShort) {
  const failed = results.filter((r) => !r.ok);
  const errors = {};
  for (const r of failed) errors[r.err] = (errors[r.err] ?? 0) + 1;
  const doc = {
    t0,
    elapsedMs: Date.now() - t0,
    cutShort,
    total: results.length,
    ok: results.length - failed.length,
    failed: failed.length,
    errors,
    connections: results.sort((a, b) => a.i - b.i),
  };
  process.stdout.write(`${JSON.stringify(doc)}\n`, () => process.exit(0));
}

await main();
