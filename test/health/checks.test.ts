// Each probe kind against real servers on loopback: passing, refused, wrong status, wrong body, wrong
// banner (closed and left open), silence (timeout), and the reasons verdicts carry.
import dgram from "node:dgram";
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CheckKind, type HealthSettings, probe } from "../../node/health/checks.js";
import { parseHealth } from "../helpers/health.js";
import { closeAllBackends, deadPort, startTcpEcho, startUdpEcho } from "../helpers/backends.js";

const servers: Array<{ close(): void }> = [];
const ports: Record<string, number> = {};
const seenRequests: Array<{ method?: string; url?: string; host?: string }> = [];

function listenTcp(handler: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer((s) => {
    s.on("error", () => {});
    handler(s);
  });
  servers.push({ close: () => server.close() });
  return new Promise((r) => server.listen(0, "127.0.0.1", () => r((server.address() as net.AddressInfo).port)));
}

beforeAll(async () => {
  ports.echo = (await startTcpEcho("echo", { prefix: false })).port;
  ports.dead = await deadPort();
  ports.udpEcho = (await startUdpEcho("u")).port;
  ports.udpDead = await new Promise<number>((r) => {
    const s = dgram.createSocket("udp4");
    s.bind(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => r(p));
    });
  });
  const silentUdp = dgram.createSocket("udp4");
  servers.push({ close: () => silentUdp.close() });
  ports.udpSilent = await new Promise<number>((r) => silentUdp.bind(0, "127.0.0.1", () => r(silentUdp.address().port)));

  const web = http.createServer((req, res) => {
    seenRequests.push({ method: req.method, url: req.url, host: req.headers.host });
    const status = req.url === "/down" ? 503 : req.url === "/moved" ? 302 : 200;
    res.writeHead(status, { "content-type": "text/plain" });
    res.end(req.method === "HEAD" ? undefined : `status ${status}: all systems go\n`);
  });
  servers.push({ close: () => web.close() });
  ports.http = await new Promise<number>((r) => web.listen(0, "127.0.0.1", () => r((web.address() as net.AddressInfo).port)));

  ports.silent = await listenTcp(() => {});
  ports.garbage = await listenTcp((s) => s.end("SSH-2.0-not-http\r\n\r\n"));
  ports.banner = await listenTcp((s) => s.write("SSH-2.0-OpenSSH_9.2\r\n"));
  ports.wrongBannerClose = await listenTcp((s) => s.end("220 mail.example ESMTP\r\n"));
  ports.wrongBannerOpen = await listenTcp((s) => s.write("220 mail.example ESMTP\r\n"));
});

afterAll(async () => {
  for (const s of servers) s.close();
  await closeAllBackends();
});

function settings(input: Record<string, unknown>): HealthSettings {
  return parseHealth({ timeout: 150, ...input });
}

interface Case {
  description: string;
  input: { kind: CheckKind; port: string; settings?: Record<string, unknown> };
  expected: { ok: boolean; result: string; reason: string | RegExp };
}

const cases: Case[] = [
  { description: "tcp: a listening port", input: { kind: "tcp", port: "echo" }, expected: { ok: true, result: "ok", reason: "connected" } },
  { description: "tcp: nothing listening", input: { kind: "tcp", port: "dead" }, expected: { ok: false, result: "refused", reason: "connect ECONNREFUSED" } },

  { description: "http: 200 in the default range", input: { kind: "http", port: "http" }, expected: { ok: true, result: "ok", reason: "http 200" } },
  { description: "http: 302 is in the default 200-399", input: { kind: "http", port: "http", settings: { http: { path: "/moved" } } }, expected: { ok: true, result: "ok", reason: "http 302" } },
  { description: "http: wrong status", input: { kind: "http", port: "http", settings: { http: { path: "/down" } } }, expected: { ok: false, result: "status", reason: "http 503" } },
  {
    description: "http: status outside a narrowed range",
    input: { kind: "http", port: "http", settings: { http: { path: "/moved", expectStatus: [200, 299] } } },
    expected: { ok: false, result: "status", reason: "http 302" },
  },
  { description: "http: 503 accepted when the range says so", input: { kind: "http", port: "http", settings: { http: { path: "/down", expectStatus: [500, 503] } } }, expected: { ok: true, result: "ok", reason: "http 503" } },
  { description: "http: body matches", input: { kind: "http", port: "http", settings: { http: { bodyMatch: "systems go" } } }, expected: { ok: true, result: "ok", reason: "http 200" } },
  { description: "http: body does not match", input: { kind: "http", port: "http", settings: { http: { bodyMatch: "meltdown" } } }, expected: { ok: false, result: "mismatch", reason: "body mismatch" } },
  { description: "http: HEAD", input: { kind: "http", port: "http", settings: { http: { method: "HEAD", path: "/head" } } }, expected: { ok: true, result: "ok", reason: "http 200" } },
  { description: "http: nothing listening", input: { kind: "http", port: "dead" }, expected: { ok: false, result: "refused", reason: "connect ECONNREFUSED" } },
  { description: "http: server never answers", input: { kind: "http", port: "silent" }, expected: { ok: false, result: "timeout", reason: "timeout 150ms" } },
  { description: "http: not an HTTP server", input: { kind: "http", port: "garbage" }, expected: { ok: false, result: "error", reason: "http invalid response" } },

  { description: "send-expect: banner matches", input: { kind: "send-expect", port: "banner", settings: { expect: "SSH-2.0" } }, expected: { ok: true, result: "ok", reason: "expect matched" } },
  {
    description: "send-expect: wrong banner, server closes",
    input: { kind: "send-expect", port: "wrongBannerClose", settings: { expect: "SSH-2.0" } },
    expected: { ok: false, result: "mismatch", reason: "expect mismatch" },
  },
  {
    description: "send-expect: wrong banner, server keeps the connection open",
    input: { kind: "send-expect", port: "wrongBannerOpen", settings: { expect: "SSH-2.0" } },
    expected: { ok: false, result: "mismatch", reason: "expect mismatch" },
  },
  { description: "send-expect: request and reply", input: { kind: "send-expect", port: "echo", settings: { send: "PING\r\n", expect: "PING" } }, expected: { ok: true, result: "ok", reason: "expect matched" } },
  { description: "send-expect: server silent", input: { kind: "send-expect", port: "silent", settings: { send: "PING\r\n", expect: "PONG" } }, expected: { ok: false, result: "timeout", reason: "timeout 150ms" } },
  { description: "send-expect: no expect is a connect check", input: { kind: "send-expect", port: "silent" }, expected: { ok: true, result: "ok", reason: "connected" } },
  { description: "send-expect: nothing listening", input: { kind: "send-expect", port: "dead", settings: { expect: "x" } }, expected: { ok: false, result: "refused", reason: "connect ECONNREFUSED" } },

  { description: "udp: reply contains the pattern", input: { kind: "udp", port: "udpEcho", settings: { send: "ping", expect: "u:ping" } }, expected: { ok: true, result: "ok", reason: "reply matched" } },
  { description: "udp: any reply without a pattern", input: { kind: "udp", port: "udpEcho" }, expected: { ok: true, result: "ok", reason: "reply matched" } },
  { description: "udp: wrong reply", input: { kind: "udp", port: "udpEcho", settings: { send: "ping", expect: "pong" } }, expected: { ok: false, result: "mismatch", reason: "expect mismatch" } },
  { description: "udp: port unreachable", input: { kind: "udp", port: "udpDead", settings: { send: "ping" } }, expected: { ok: false, result: "refused", reason: "udp ECONNREFUSED" } },
  { description: "udp: no reply", input: { kind: "udp", port: "udpSilent", settings: { send: "ping" } }, expected: { ok: false, result: "timeout", reason: "timeout 150ms" } },
];

describe("probes against real servers", () => {
  it.each(cases)("$description", async ({ input, expected }) => {
    const out = await probe({ host: "127.0.0.1", port: ports[input.port] }, settings({ type: input.kind, ...input.settings }), input.kind);
    expect(out.ok).toBe(expected.ok);
    expect(out.result).toBe(expected.result);
    if (typeof expected.reason === "string") expect(out.reason).toBe(expected.reason);
    else expect(out.reason).toMatch(expected.reason);
  });

  it("http sends method, path and the configured Host header", async () => {
    seenRequests.length = 0;
    await probe({ host: "127.0.0.1", port: ports.http }, settings({ type: "http", http: { method: "HEAD", path: "/healthz?full=1", host: "app.example" } }), "http");
    expect(seenRequests).toEqual([{ method: "HEAD", url: "/healthz?full=1", host: "app.example" }]);
    await probe({ host: "127.0.0.1", port: ports.http }, settings({ type: "http" }), "http");
    expect(seenRequests[1]).toEqual({ method: "GET", url: "/", host: `127.0.0.1:${ports.http}` });
  });

  it("timeouts are written the way operators write them", async () => {
    const out = await probe({ host: "127.0.0.1", port: ports.silent }, settings({ type: "http", timeout: "1s" }), "http");
    expect(out).toEqual({ ok: false, result: "timeout", reason: "timeout 1s" });
  });
});
