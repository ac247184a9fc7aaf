// Real backends for tests, on loopback port 0: TCP echo, HTTP that names itself, UDP echo, and a
// PROXY-protocol recorder. Each tracks what it saw so tests can assert where traffic went.
import dgram from "node:dgram";
import http from "node:http";
import net from "node:net";

export interface Backend {
  name: string;
  port: number;
  /** Connections (TCP) or datagrams (UDP) received. */
  hits: number;
  /** Currently open TCP connections. */
  open: number;
  close(): Promise<void>;
}

const all = new Set<Backend>();

export async function closeAllBackends(): Promise<void> {
  await Promise.all([...all].map((b) => b.close()));
}

function listen(server: net.Server | http.Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port));
  });
}

/** Echoes every byte back, prefixed once with `<name>:` so the client knows which backend answered. */
export async function startTcpEcho(name: string, opts: { port?: number; prefix?: boolean } = {}): Promise<Backend> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    b.hits++;
    b.open++;
    sockets.add(s);
    s.on("error", () => {});
    s.on("close", () => {
      b.open--;
      sockets.delete(s);
    });
    if (opts.prefix !== false) s.write(`${name}:`);
    s.pipe(s);
  });
  const port = await listen(server, opts.port);
  const b: Backend = {
    name,
    port,
    hits: 0,
    open: 0,
    close: () => {
      all.delete(b);
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
  all.add(b);
  return b;
}

/** HTTP backend answering `<name>` (and the client address it saw) on every path. */
export async function startHttpBackend(name: string, opts: { port?: number; status?: number } = {}): Promise<Backend & { status: number }> {
  const server = http.createServer((req, res) => {
    b.hits++;
    res.writeHead(b.status, { "content-type": "text/plain" });
    res.end(`${name} ${req.socket.remoteAddress}\n`);
  });
  server.on("connection", (s) => {
    b.open++;
    s.on("close", () => b.open--);
  });
  const port = await listen(server, opts.port);
  const b = {
    name,
    port,
    hits: 0,
    open: 0,
    status: opts.status ?? 200,
    close: () => {
      all.delete(b);
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
  all.add(b);
  return b;
}

/** Answers every datagram with `<name>:<payload>`. */
export async function startUdpEcho(name: string): Promise<Backend & { clients: Set<string> }> {
  const sock = dgram.createSocket("udp4");
  const clients = new Set<string>();
  sock.on("message", (msg, rinfo) => {
    b.hits++;
    clients.add(`${rinfo.address}:${rinfo.port}`);
    sock.send(Buffer.concat([Buffer.from(`${name}:`), msg]), rinfo.port, rinfo.address);
  });
  const port = await new Promise<number>((r) => sock.bind(0, "127.0.0.1", () => r(sock.address().port)));
  const b = {
    name,
    port,
    hits: 0,
    open: 0,
    clients,
    close: () => {
      all.delete(b);
      return new Promise<void>((r) => sock.close(() => r()));
    },
  };
  all.add(b);
  return b;
}

/** Records the first bytes of each connection (to check PROXY headers), then answers "ok". */
export async function startRecorder(name: string): Promise<Backend & { firsts: Buffer[] }> {
  const firsts: Buffer[] = [];
  const server = net.createServer((s) => {
    b.hits++;
    s.on("error", () => {});
    s.once("data", (d) => {
      firsts.push(d);
      s.end("ok");
    });
  });
  const port = await listen(server);
  const b = {
    name,
    port,
    hits: 0,
    open: 0,
    firsts,
    close: () => {
      all.delete(b);
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
  all.add(b);
  return b;
}

/** A port with nothing listening (connect → ECONNREFUSED). */
export async function deadPort(): Promise<number> {
  const s = net.createServer();
  const port = await listen(s);
  await new Promise((r) => s.close(r));
  return port;
}

/** One TCP exchange: write `data`, optionally half-close, and collect everything until the server closes. */
export function tcpExchange(port: number, data: string | Buffer, opts: { halfClose?: boolean; host?: string; localAddress?: string; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: opts.host ?? "127.0.0.1", localAddress: opts.localAddress, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`tcpExchange to ${port} timed out; got ${Buffer.concat(chunks).toString()}`));
    }, opts.timeoutMs ?? 5000);
    s.on("connect", () => {
      s.write(data);
      if (opts.halfClose !== false) s.end();
    });
    s.on("data", (d) => chunks.push(d));
    s.on("end", () => {
      clearTimeout(timer);
      s.end();
      resolve(Buffer.concat(chunks).toString());
    });
    s.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** GET / over a fresh connection; resolves to the body. */
export function httpGet(port: number, opts: { host?: string; localAddress?: string; path?: string } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: opts.host ?? "127.0.0.1", port, path: opts.path ?? "/", localAddress: opts.localAddress, agent: false, timeout: 5000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("timeout", () => req.destroy(new Error("http timeout")));
    req.on("error", reject);
  });
}

/** Sends one datagram from a fresh socket and waits for the first reply. */
export function udpExchange(port: number, payload: string, opts: { socket?: dgram.Socket; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const own = opts.socket === undefined;
    const s = opts.socket ?? dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      s.off("message", onMsg);
      if (own) s.close();
      reject(new Error(`no UDP reply from ${port}`));
    }, opts.timeoutMs ?? 3000);
    const onMsg = (msg: Buffer) => {
      clearTimeout(timer);
      s.off("message", onMsg);
      if (own) s.close();
      resolve(msg.toString());
    };
    s.on("message", onMsg);
    s.send(payload, port, "127.0.0.1");
  });
}
