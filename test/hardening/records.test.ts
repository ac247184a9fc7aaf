// Issue 13 (part A): records an operator or an attacker can write that the schema used to accept and
// the node then mishandled — durations past the timer range, HTTP probe fields http.request refuses,
// PROXY v1 on UDP. Each must be refused at validation with its field path.
import { describe, expect, it } from "vitest";
import { parseServiceValue } from "../../node/control/records.js";
import { probeHttp } from "../../node/health/checks.js";
import { parseHealth } from "../helpers/health.js";
import { startHttpBackend } from "../helpers/backends.js";

const service = (extra: Record<string, unknown>) => Buffer.from(JSON.stringify({ listen: "127.0.0.1:8080", ...extra }));

describe("durations (finding 4)", () => {
  it.each([
    { field: "health.interval", record: { health: { interval: "100000h" } } },
    { field: "health.timeout", record: { health: { timeout: "1000h" } } },
    { field: "timeouts.drain", record: { timeouts: { drain: "1000h" } } },
    { field: "timeouts.idle", record: { timeouts: { idle: 2 ** 31 } } },
    { field: "affinity.ttl", record: { affinity: { mode: "source-ip", ttl: "600h" } } },
  ])("rejects $field above 2^31-1 ms, naming the field", ({ field, record }) => {
    expect(() => parseServiceValue("web", service(record))).toThrow(`${field}: expected a duration of at most 2147483647ms`);
  });

  it("accepts the largest duration a timer takes", () => {
    expect(parseServiceValue("web", service({ timeouts: { drain: 2 ** 31 - 1 } })).timeouts.drain).toBe(2 ** 31 - 1);
  });
});

describe("HTTP probe fields (finding 5)", () => {
  it.each([
    { field: "health.http.path", http: { path: "/a b" } },
    { field: "health.http.path", http: { path: "/\u0100" } },
    { field: "health.http.method", http: { method: "GE T" } },
    { field: "health.http.host", http: { host: "a\r\nX-Evil: 1" } },
  ])("rejects $field that http.request would refuse", ({ field, http }) => {
    expect(() => parseServiceValue("web", service({ health: { type: "http", http } }))).toThrow(`${field}:`);
  });

  it("a probe whose request cannot be made fails with a reason, and nothing throws from its timer", async () => {
    const backend = await startHttpBackend("h");
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on("uncaughtException", onUncaught);
    try {
      // Settings built without the schema (tools, embedders): http.request throws synchronously.
      const settings = { ...parseHealth({ type: "http", timeout: "50ms" }), http: { method: "GET", path: "/a b", expectStatus: [200, 399] as [number, number] } };
      const outcome = await probeHttp({ host: "127.0.0.1", port: backend.port }, settings);
      expect(outcome.ok).toBe(false);
      expect(outcome.reason).toContain("ERR_UNESCAPED_CHARACTERS");
      // Past the deadline: before the fix, the armed timer fired and threw a ReferenceError here.
      await new Promise((r) => setTimeout(r, 150));
      expect(uncaught).toEqual([]);
    } finally {
      process.off("uncaughtException", onUncaught);
      await backend.close();
    }
  });
});

describe("PROXY protocol on UDP (finding 8)", () => {
  it("rejects proxyProtocol v1 for a UDP service, naming the field", () => {
    expect(() => parseServiceValue("dns", service({ protocol: "udp", proxyProtocol: "v1" }))).toThrow("proxyProtocol: v1 is TCP only");
    expect(parseServiceValue("dns", service({ protocol: "udp", proxyProtocol: "v2" })).proxyProtocol).toBe("v2");
    expect(parseServiceValue("web", service({ protocol: "tcp", proxyProtocol: "v1" })).proxyProtocol).toBe("v1");
  });
});
