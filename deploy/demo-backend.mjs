// A demo backend for the compose cluster and the chaos suite: HTTP that answers who it is and who
// called, plus optional TCP and UDP echo. Plain JS with no dependencies, so it runs in the node image
// (and any node) without a build: `node deploy/demo-backend.mjs`.
//
//   NAME            name in every answer (default: hostname)
//   PORT            HTTP port (default 8080)
//   TCP_ECHO_PORT   TCP echo port (off when unset)
//   UDP_ECHO_PORT   UDP echo port, replies "<NAME> <datagram>" (off when unset)
//
// HTTP: any path answers 200 with one JSON line {backend, peer, client, path}; `peer` is the TCP peer
// (a Ballast node, as Ballast is a full proxy) and `client` the original client when the connection
// starts with a PROXY protocol v1 or v2 header, else the peer. `?delay=MS` (≤ 120000) delays the
// answer, to hold a connection open. POST /_ctl/down makes every answer 503 (a failing health check)
// and POST /_ctl/up undoes it; /_ctl/* always answers 200.
import dgram from "node:dgram";
import http from "node:http";
import net from "node:net";
import os from "node:os";

const NAME = process.env.NAME || os.hostname();
const PORT = Number(process.env.PORT || 8080);
const MAX_DELAY_MS = 120_000;
const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

let healthy = true;
let served = 0;

/** Strips a PROXY header from the first chunk; returns {client, rest} or null when there is none. */
function parseProxyHeader(chunk) {
  if (chunk.subarray(0, 6).toString("latin1") === "PROXY ") {
    const end = chunk.indexOf("\r\n");
    if (end < 0) return null;
    const [, family, src, , sport] = chunk.subarray(0, end).toString("latin1").split(" ");
    const client = family === "UNKNOWN" ? null : family === "TCP6" ? `[${src}]:${sport}` : `${src}:${sport}`;
    return { client, rest: chunk.subarray(end + 2) };
  }
  if (chunk.length >= 16 && chunk.subarray(0, 12).equals(PROXY_V2_SIGNATURE)) {
    const family = chunk[13] >> 4;
    const length = chunk.readUInt16BE(14);
    const body = chunk.subarray(16, 16 + length);
    let client = null;
    if (family === 1 && body.length >= 12) client = `${[...body.subarray(0, 4)].join(".")}:${body.readUInt16BE(8)}`;
    if (family === 2 && body.length >= 36) {
      const groups = [];
      for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16));
      client = `[${groups.join(":")}]:${body.readUInt16BE(32)}`;
    }
    return { client, rest: chunk.subarray(16 + length) };
  }
  return null;
}

// A length, not chunks: simple clients (the chaos load loop, nc) read one JSON line per answer.
function reply(res, status, body) {
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }).end(body);
}

const httpServer = http.createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://backend");
  if (url.pathname === "/_ctl/down" || url.pathname === "/_ctl/up") {
    healthy = url.pathname === "/_ctl/up";
    reply(res, 200, `${JSON.stringify({ backend: NAME, healthy })}\n`);
    return;
  }
  const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  const body = `${JSON.stringify({ backend: NAME, peer, client: req.socket.proxiedClient ?? peer, path: url.pathname, served: ++served })}\n`;
  const delay = Math.min(Math.max(Number(url.searchParams.get("delay")) || 0, 0), MAX_DELAY_MS);
  const answer = () => reply(res, healthy ? 200 : 503, body);
  if (delay > 0) setTimeout(answer, delay);
  else answer();
});
httpServer.keepAliveTimeout = 30_000;

// A plain TCP server in front of the HTTP parser, so a PROXY header can be read and stripped first.
const front = net.createServer((socket) => {
  socket.once("data", (chunk) => {
    const proxied = parseProxyHeader(chunk);
    if (proxied) socket.proxiedClient = proxied.client ?? undefined;
    socket.pause();
    socket.unshift(proxied ? proxied.rest : chunk);
    httpServer.emit("connection", socket);
    socket.resume();
  });
  socket.on("error", () => socket.destroy());
});
front.listen(PORT, "0.0.0.0", () => console.log(`demo-backend ${NAME}: http on ${PORT}`));

if (process.env.TCP_ECHO_PORT) {
  const port = Number(process.env.TCP_ECHO_PORT);
  net
    .createServer((socket) => {
      socket.on("error", () => socket.destroy());
      socket.pipe(socket);
    })
    .listen(port, "0.0.0.0", () => console.log(`demo-backend ${NAME}: tcp echo on ${port}`));
}

if (process.env.UDP_ECHO_PORT) {
  const port = Number(process.env.UDP_ECHO_PORT);
  const udp = dgram.createSocket("udp4");
  udp.on("message", (msg, rinfo) => udp.send(Buffer.concat([Buffer.from(`${NAME} `), msg]), rinfo.port, rinfo.address));
  udp.bind(port, "0.0.0.0", () => console.log(`demo-backend ${NAME}: udp echo on ${port}`));
}

// PID 1 in a container: exit promptly on SIGTERM/SIGINT instead of waiting for the kill.
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
