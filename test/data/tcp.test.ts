// The TCP data plane over real loopback sockets: round trip, half-close, backpressure, retries,
// limits, PROXY protocol, access rules, config changes that must not cut open connections.
import { randomBytes } from "node:crypto";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { parseProxyHeader } from "../../node/data/proxy-protocol.js";
import { closeAllBackends, deadPort, startRecorder, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

afterEach(async () => {
  await stopAllNodes();
  await closeAllBackends();
});

// Health checks off unless a test turns them on: their probe connections would count as backend hits.
function service(name: string, backends: Array<{ id: string; port: number }>, extra: Record<string, unknown> = {}) {
  return { name, listen: "127.0.0.1:0", health: { type: "none" }, backends: backends.map((b) => ({ id: b.id, address: "127.0.0.1", port: b.port })), ...extra };
}

describe("tcp proxy", () => {
  it("relays a round trip and spreads connections over backends (round-robin)", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const node = await startNode({ services: [service("echo", [{ id: "a", port: a.port }, { id: "b", port: b.port }])] });
    const port = portOf(node, "echo");
    const replies = [];
    for (let i = 0; i < 4; i++) replies.push(await tcpExchange(port, `hello${i}`));
    expect(replies.sort()).toEqual(["a:hello0", "a:hello2", "b:hello1", "b:hello3"].sort());
    expect(a.hits).toBe(2);
    expect(b.hits).toBe(2);
  });

  it("keeps the reply path open after the client half-closes", async () => {
    // The backend answers only after it sees the client's FIN.
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      let got = "";
      s.on("data", (d) => (got += d));
      s.on("end", () => s.end(`received ${got.length} bytes after FIN`));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const node = await startNode({ services: [service("hc", [{ id: "x", port: (server.address() as net.AddressInfo).port }])] });
    const reply = await tcpExchange(portOf(node, "hc"), "x".repeat(1000), { halfClose: true });
    expect(reply).toBe("received 1000 bytes after FIN");
    server.close();
  });

  it("delivers a whole large reply to a client that half-closed first and reads slowly", async () => {
    // Small enough to fit in the socket buffers along the way, so the backend can finish and close
    // while the client has read nothing: the node then holds the tail in its write queue.
    const total = 4 * 1024 * 1024;
    // The backend waits for the client's FIN, then sends a large reply and closes.
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on("error", () => {});
      s.resume();
      s.on("end", () => {
        const chunk = Buffer.alloc(64 * 1024, 9);
        let sent = 0;
        const pump = () => {
          while (sent < total) {
            sent += chunk.length;
            if (!s.write(chunk)) return void s.once("drain", pump);
          }
          s.end();
        };
        pump();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    let backendClosed = false;
    server.on("connection", (s) => s.on("close", () => (backendClosed = true)));
    const node = await startNode({ services: [service("big", [{ id: "x", port: (server.address() as net.AddressInfo).port }])] });
    const client = net.connect({ port: portOf(node, "big"), host: "127.0.0.1", allowHalfOpen: true });
    client.pause();
    await new Promise((r) => client.once("connect", r));
    client.end("request");
    // Read nothing until the backend has sent everything and closed: the node holds the rest.
    await waitFor(() => backendClosed, { timeoutMs: 20_000, message: "backend finished and closed" });
    let received = 0;
    client.on("data", (d: Buffer) => (received += d.length));
    client.resume();
    await new Promise((r) => client.on("close", r));
    expect(received).toBe(total);
    server.close();
  });

  it("applies backpressure to a slow reader: the backend cannot push more than the buffers hold", async () => {
    const total = 200 * 1024 * 1024;
    const chunk = Buffer.alloc(64 * 1024, 7);
    let written = 0;
    let stalled = false;
    const server = net.createServer((s) => {
      s.on("error", () => {});
      const pump = () => {
        while (written < total) {
          written += chunk.length;
          if (!s.write(chunk)) {
            stalled = true;
            s.once("drain", () => {
              stalled = false;
              pump();
            });
            return;
          }
        }
        s.end();
      };
      pump();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    // No health checks: their connections would also receive the stream and share `written`.
    const node = await startNode({ services: [service("bulk", [{ id: "x", port: (server.address() as net.AddressInfo).port }], { health: { type: "none" } })] });
    const client = net.connect(portOf(node, "bulk"), "127.0.0.1");
    client.pause();
    await new Promise((r) => client.once("connect", r));
    // Wait until the backend is blocked and stays blocked: the whole chain is full.
    let last = -1;
    await waitFor(() => {
      const steady = stalled && written === last;
      last = written;
      return steady;
    }, { intervalMs: 100, message: "backend stalls while the client does not read" });
    expect(written).toBeLessThan(64 * 1024 * 1024);
    // Resume: every byte arrives intact.
    let received = 0;
    client.on("data", (d: Buffer) => (received += d.length));
    client.resume();
    await new Promise((r) => client.on("end", r));
    expect(received).toBe(total);
    client.destroy();
    server.close();
  });

  it("keeps every byte in order through its reused read buffers: concurrent slow readers, small and large writes", async () => {
    // The node reads the backend's bytes into buffers it reuses (small per connection, large from a
    // shared pool): a buffer read into while a write of it was still queued, or handed to two
    // connections at once, would corrupt the stream. Random content shows it; constant bytes would not.
    // Each client stops reading twice until its backend is blocked, so the whole chain is full and the
    // node's writes to the client are queued: the case where a reused buffer is still in use.
    const size = 40 * 1024 * 1024 + 777;
    const streams = [0, 1].map(() => randomBytes(size));
    const stalled = [false, false];
    const sent = [0, 0];
    const server = net.createServer((s) => {
      s.on("error", () => {});
      s.once("data", (d: Buffer) => {
        const i = Number(d.toString());
        const data = streams[i];
        // Chunks from 1 byte to 96 KiB, so reads of every size reach the node: small ones that fit the
        // connection's own buffer, and ones that fill it and move it to a large one.
        let off = 0;
        let chunk = 1;
        const pump = () => {
          stalled[i] = false;
          while (off < data.length) {
            const n = Math.min(chunk, data.length - off);
            const ok = s.write(data.subarray(off, off + n));
            off += n;
            sent[i] = off;
            chunk = chunk >= 96 * 1024 ? 1 : chunk * 3 + 1;
            if (!ok) {
              stalled[i] = true;
              return void s.once("drain", pump);
            }
          }
          s.end();
        };
        pump();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const node = await startNode({ services: [service("bytes", [{ id: "x", port: (server.address() as net.AddressInfo).port }])] });
    const port = portOf(node, "bytes");
    const received = await Promise.all(
      streams.map(
        (_, i) =>
          new Promise<Buffer>((resolve, reject) => {
            const parts: Buffer[] = [];
            let got = 0;
            let pauses = 0;
            const c = net.connect(port, "127.0.0.1", () => c.write(String(i)));
            c.on("error", reject);
            c.on("data", (d: Buffer) => {
              parts.push(d);
              got += d.length;
              if (pauses < 2 && got > (pauses * 16 + 1) * 1024 * 1024) {
                pauses++;
                c.pause();
                // Blocked and staying blocked: every buffer along the way is full. Or the backend wrote
                // its last byte and nothing moves: the kernel's buffers took the rest (tcp_rmem may let
                // a receive buffer grow to 32 MiB, more than what is left after the second pause), and
                // the node's writes to the paused client are still queued.
                let last = -1;
                const steady = () => {
                  const still = (stalled[i] || sent[i] === size) && sent[i] === last;
                  last = sent[i];
                  return still;
                };
                waitFor(steady, { intervalMs: 100, timeoutMs: 20_000, message: `backend ${i} blocked` }).then(() => c.resume(), reject);
              }
            });
            c.on("end", () => resolve(Buffer.concat(parts)));
          }),
      ),
    );
    for (let i = 0; i < streams.length; i++) {
      expect(received[i].length).toBe(size);
      expect(received[i].equals(streams[i])).toBe(true);
    }
    server.close();
  });

  it("keeps every byte in order from the client through its reused read buffers, with the backend reading slowly", async () => {
    // The other direction of the test above: the node reads the clients' bytes into buffers it reuses
    // too. Each backend stops reading twice until its client is blocked, so the node's writes to the
    // backend are queued while it holds the buffer they came from.
    const size = 40 * 1024 * 1024 + 555;
    const streams = [0, 1].map(() => randomBytes(size));
    const stalled = [false, false];
    const sent = [0, 0];
    const received: Array<Promise<Buffer>> = [];
    const arrived: Array<(b: Buffer) => void> = [];
    for (let i = 0; i < streams.length; i++) received.push(new Promise<Buffer>((r) => (arrived[i] = r)));
    const errors: Error[] = [];
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on("error", (e) => errors.push(e));
      const parts: Buffer[] = [];
      let got = 0;
      let pauses = 0;
      let index = -1;
      s.on("data", (d: Buffer) => {
        if (index < 0) {
          // The first byte names the stream (0 or 1), then the stream follows.
          index = d[0];
          d = d.subarray(1);
        }
        parts.push(d);
        got += d.length;
        if (pauses < 2 && got > (pauses * 16 + 1) * 1024 * 1024) {
          pauses++;
          s.pause();
          const i = index;
          let last = -1;
          const steady = () => {
            const still = stalled[i] && sent[i] === last;
            last = sent[i];
            return still;
          };
          waitFor(steady, { intervalMs: 100, timeoutMs: 20_000, message: `client ${i} blocked` }).then(
            () => s.resume(),
            (e: Error) => errors.push(e),
          );
        }
      });
      s.on("end", () => {
        arrived[index](Buffer.concat(parts));
        s.end();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const node = await startNode({ services: [service("upload", [{ id: "x", port: (server.address() as net.AddressInfo).port }])] });
    const port = portOf(node, "upload");
    const clients = streams.map((data, i) => {
      const c = net.connect(port, "127.0.0.1", () => {
        c.write(Buffer.from([i]));
        // Chunks from 1 byte to 96 KiB: reads of every size reach the node.
        let off = 0;
        let chunk = 1;
        const pump = () => {
          stalled[i] = false;
          while (off < data.length) {
            const n = Math.min(chunk, data.length - off);
            const ok = c.write(data.subarray(off, off + n));
            off += n;
            sent[i] = off;
            chunk = chunk >= 96 * 1024 ? 1 : chunk * 3 + 1;
            if (!ok) {
              stalled[i] = true;
              return void c.once("drain", pump);
            }
          }
          c.end();
        };
        pump();
      });
      c.on("error", (e) => errors.push(e));
      c.resume();
      return c;
    });
    const got = await Promise.all(received);
    expect(errors).toEqual([]);
    for (let i = 0; i < streams.length; i++) {
      expect(got[i].length).toBe(size);
      expect(got[i].equals(streams[i])).toBe(true);
    }
    expect(node.plane.stats.service("upload").bytesIn).toBe(2 * (size + 1));
    for (const c of clients) c.destroy();
    server.close();
  });

  it("keeps every byte in order when many connections send small pieces while their backends stall", async () => {
    // Small reads go through one scratch buffer all connections share, copied out before the next read
    // anywhere: a write still holding scratch bytes while another connection reads would mix streams.
    // Eight clients send 1000-byte pieces, one per event-loop turn (so the node's reads stay small),
    // while the backends first read nothing until no client gets further: the node's writes queue.
    const n = 8;
    const size = 4000 * 1000;
    const streams = Array.from({ length: n }, () => randomBytes(size));
    const sent = new Array<number>(n).fill(0);
    const arrived: Array<(b: Buffer) => void> = [];
    const received = streams.map((_, i) => new Promise<Buffer>((r) => (arrived[i] = r)));
    const errors: Error[] = [];
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => {
      s.on("error", (e) => errors.push(e));
      const parts: Buffer[] = [];
      let index = -1;
      // Reads nothing (paused since accept) until the clients have stopped getting anywhere (blocked,
      // or done); which client it serves is in its first byte, read after the wait.
      let last = -1;
      const noProgress = () => {
        const total = sent.reduce((a, b) => a + b, 0);
        const still = total === last;
        last = total;
        return still;
      };
      waitFor(noProgress, { intervalMs: 200, timeoutMs: 20_000, message: "the clients blocked or done" }).then(
        () => {
          s.on("data", (d: Buffer) => {
            if (index < 0) {
              index = d[0];
              d = d.subarray(1);
            }
            parts.push(d);
          });
          s.on("end", () => {
            arrived[index](Buffer.concat(parts));
            s.end();
          });
          s.resume();
        },
        (e: Error) => errors.push(e),
      );
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const node = await startNode({ services: [service("pieces", [{ id: "x", port: (server.address() as net.AddressInfo).port }])] });
    const port = portOf(node, "pieces");
    const clients = streams.map((data, i) => {
      const c = net.connect(port, "127.0.0.1", () => {
        c.write(Buffer.from([i]));
        let off = 0;
        const step = () => {
          while (off < data.length) {
            const ok = c.write(data.subarray(off, off + 1000));
            off += 1000;
            sent[i] = off;
            if (!ok) return void c.once("drain", () => setImmediate(step));
            return void setImmediate(step);
          }
          c.end();
        };
        step();
      });
      c.on("error", (e) => errors.push(e));
      c.resume();
      return c;
    });
    const got = await Promise.all(received);
    expect(errors).toEqual([]);
    for (let i = 0; i < n; i++) {
      expect(got[i].length, `stream ${i}`).toBe(size);
      expect(got[i].equals(streams[i]), `stream ${i} intact`).toBe(true);
    }
    for (const c of clients) c.destroy();
    server.close();
  });

  it("retries a failed connect on another backend, never the same one twice", async () => {
    const live = await startTcpEcho("live");
    const dead1 = await deadPort();
    const dead2 = await deadPort();
    const node = await startNode({
      health: { ejectBase: "1ms", ejectMax: "1ms" },
      services: [service("r", [{ id: "d1", port: dead1 }, { id: "d2", port: dead2 }, { id: "live", port: live.port }], { limits: { retries: 2 } })],
    });
    const port = portOf(node, "r");
    for (let i = 0; i < 6; i++) expect(await tcpExchange(port, "ping")).toBe("live:ping");
    const failures = node.plane.stats.backend("r", "d1").connectFailures.refused + node.plane.stats.backend("r", "d2").connectFailures.refused;
    expect(failures).toBeGreaterThan(0);
    expect(node.plane.stats.service("r").retries).toBe(failures);
  });

  it("refuses quickly over the per-backend connection limit and counts it", async () => {
    const a = await startTcpEcho("a");
    const node = await startNode({ services: [service("lim", [{ id: "a", port: a.port }], { limits: { maxConnectionsPerBackend: 2 } })] });
    const port = portOf(node, "lim");
    const open: net.Socket[] = [];
    for (let i = 0; i < 2; i++) {
      const s = net.connect(port, "127.0.0.1");
      s.on("data", () => {});
      open.push(s);
    }
    await waitFor(() => a.open === 2, { message: "two connections reach the backend" });
    await expect(tcpExchange(port, "third")).rejects.toThrow(/ECONNRESET|socket hang up/);
    expect(node.plane.stats.service("lim").refused["max-connections"]).toBe(1);
    for (const s of open) s.destroy();
  });

  it("refuses over the per-service connection limit and accepts again once a connection ends", async () => {
    const a = await startTcpEcho("a");
    const b = await startTcpEcho("b");
    const node = await startNode({ services: [service("svc", [{ id: "a", port: a.port }, { id: "b", port: b.port }], { limits: { maxConnections: 1 } })] });
    const port = portOf(node, "svc");
    const held = net.connect(port, "127.0.0.1");
    held.on("data", () => {});
    await waitFor(() => a.open + b.open === 1);
    await expect(tcpExchange(port, "second")).rejects.toThrow(/ECONNRESET|socket hang up/);
    expect(node.plane.stats.service("svc").refused["max-connections"]).toBe(1);
    held.destroy();
    await waitFor(() => node.plane.stats.service("svc").active === 0);
    expect(await tcpExchange(port, "third")).toMatch(/^[ab]:third$/);
  });

  it("sends PROXY protocol v1 and v2 headers with the client's address", async () => {
    const r1 = await startRecorder("v1");
    const r2 = await startRecorder("v2");
    const node = await startNode({
      services: [service("p1", [{ id: "a", port: r1.port }], { proxyProtocol: "v1" }), service("p2", [{ id: "a", port: r2.port }], { proxyProtocol: "v2" })],
    });
    expect(await tcpExchange(portOf(node, "p1"), "data", { localAddress: "127.0.0.7" })).toBe("ok");
    expect(await tcpExchange(portOf(node, "p2"), "data", { localAddress: "127.0.0.8" })).toBe("ok");
    const h1 = parseProxyHeader(r1.firsts[0]);
    const h2 = parseProxyHeader(r2.firsts[0]);
    expect(r1.firsts[0].toString().startsWith("PROXY TCP4 127.0.0.7 127.0.0.1 ")).toBe(true);
    expect(h1?.src).toBe("127.0.0.7");
    expect(h2?.version).toBe(2);
    expect(h2?.src).toBe("127.0.0.8");
    expect(h2?.dstPort).toBe(portOf(node, "p2"));
  });

  it("denies clients by CIDR and limits new connections per source", async () => {
    const a = await startTcpEcho("a");
    const node = await startNode({
      services: [
        service("acl", [{ id: "a", port: a.port }], { access: { allow: ["127.0.0.0/8"], deny: ["127.0.0.66/32"] } }),
        service("rate", [{ id: "a", port: a.port }], { limits: { sourceRate: 0.001, sourceBurst: 2 } }),
      ],
    });
    expect(await tcpExchange(portOf(node, "acl"), "ok", { localAddress: "127.0.0.65" })).toBe("a:ok");
    await expect(tcpExchange(portOf(node, "acl"), "no", { localAddress: "127.0.0.66" })).rejects.toThrow();
    expect(node.plane.stats.service("acl").refused.denied).toBe(1);
    const rate = portOf(node, "rate");
    expect(await tcpExchange(rate, "1", { localAddress: "127.0.0.70" })).toBe("a:1");
    expect(await tcpExchange(rate, "2", { localAddress: "127.0.0.70" })).toBe("a:2");
    await expect(tcpExchange(rate, "3", { localAddress: "127.0.0.70" })).rejects.toThrow();
    // Another source has its own bucket.
    expect(await tcpExchange(rate, "4", { localAddress: "127.0.0.71" })).toBe("a:4");
    expect(node.plane.stats.service("rate").refused["rate-limited"]).toBe(1);
  });

  it("keeps open connections when their backend is removed, and closes them after the drain timeout", async () => {
    const a = await startTcpEcho("a", { prefix: false });
    const b = await startTcpEcho("b", { prefix: false });
    const node = await startNode({ services: [service("d", [{ id: "a", port: a.port }], { timeouts: { drain: "300ms" } })] });
    const port = portOf(node, "d");
    const s = net.connect(port, "127.0.0.1");
    let got = "";
    s.on("data", (d) => (got += d));
    s.write("one");
    await waitFor(() => got === "one");
    // Replace backend a by b: a new revision, a new snapshot.
    await node.store.delete(node.keys.backend("d", "a"));
    await node.store.put(node.keys.backend("d", "b"), JSON.stringify({ address: "127.0.0.1", port: b.port }));
    await waitFor(() => node.reconciler.snapshot?.services.get("d")?.targets[0]?.id === "b");
    s.write("two");
    await waitFor(() => got === "onetwo", { message: "the open connection still works after the change" });
    expect(await tcpExchange(port, "new")).toBe("new");
    expect(b.hits).toBe(1);
    await new Promise((r) => s.on("close", r));
    expect(a.open).toBe(0);
  });
});
