// What the status page needs from the admin server, without a browser: the page shell without the
// token (and no data in it), the token still required for the API, CORS on /api/state only for other
// nodes' admin origins (preflight included), and an inline script that parses.
import { spawnSync } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AdminApi, AdminServer, STATE_CACHE_MS } from "../../node/admin/server.js";
import { allowsPeerOrigin, statusPage } from "../../node/admin/status-page.js";
import { waitFor } from "../helpers/wait.js";
import type { StateView } from "../../shared/api.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TOKEN = "t0ken";
const peers = [{ admin: "127.0.0.1:9091" }, { admin: "[::1]:9092" }, { admin: "lb2.example:9090" }];

describe("allowsPeerOrigin", () => {
  it.each([
    { description: "a node's admin address", origin: "http://127.0.0.1:9091", expected: true },
    { description: "IPv6 admin address", origin: "http://[::1]:9092", expected: true },
    { description: "advertised hostname", origin: "http://lb2.example:9090", expected: true },
    { description: "same host, other port", origin: "http://127.0.0.1:9999", expected: false },
    { description: "https is not what nodes serve", origin: "https://127.0.0.1:9091", expected: false },
    { description: "some web page", origin: "https://evil.example", expected: false },
    { description: "opaque origin", origin: "null", expected: false },
  ])("$description", ({ origin, expected }) => {
    expect(allowsPeerOrigin(peers, origin)).toBe(expected);
  });
});

describe("status page access rules", () => {
  let server: AdminServer;
  let base = "";
  beforeAll(async () => {
    const api: AdminApi = {
      ready: () => true,
      // Only who may read it matters here, not the shape.
      state: () => ({ cluster: "c", secret: "cluster data" }) as unknown as StateView,
      route: () => ({ status: 404, body: { error: "no service" } }),
      metrics: async () => ({ contentType: "text/plain", body: "" }),
      pages: new Map([["/", statusPage]]),
      publicPages: new Set(["/"]),
      allowOrigin: (origin) => allowsPeerOrigin(peers, origin),
    };
    server = new AdminServer(api, TOKEN);
    base = `http://${await server.listen("127.0.0.1:0")}`;
  });
  afterAll(() => server.close());

  it("serves the page shell without the token, with no cluster data in it", async () => {
    const res = await fetch(`${base}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/html; charset=utf-8");
    const html = await res.text();
    expect(html).not.toContain("cluster data");
    expect(html).toContain("Content-Security-Policy");
    expect(html).not.toMatch(/<(script|link)[^>]+(src|href)="(?!data:)/); // nothing loaded from elsewhere
  });

  it("still needs the token for the API and everything else", async () => {
    for (const path of ["/api/state", "/api/route?service=s&client=192.0.2.1", "/metrics", "/nope"]) {
      expect((await fetch(`${base}${path}`)).status, path).toBe(401);
    }
    const ok = await fetch(`${base}/api/state`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(await ok.json()).toEqual({ cluster: "c", secret: "cluster data" });
  });

  it("answers a peer page's preflight and GET with CORS headers, and nobody else's", async () => {
    const pre = await fetch(`${base}/api/state`, {
      method: "OPTIONS",
      headers: { origin: "http://127.0.0.1:9091", "access-control-request-method": "GET", "access-control-request-headers": "authorization" },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers.get("access-control-allow-origin")).toBe("http://127.0.0.1:9091");
    expect(pre.headers.get("access-control-allow-headers")).toBe("authorization");
    expect(await pre.text()).toBe("");

    const get = await fetch(`${base}/api/state`, { headers: { origin: "http://127.0.0.1:9091", authorization: `Bearer ${TOKEN}` } });
    expect(get.status).toBe(200);
    expect(get.headers.get("access-control-allow-origin")).toBe("http://127.0.0.1:9091");
    expect(get.headers.get("vary")).toBe("Origin");
    // Without the token the peer page learns it needs one (a readable 401), and gets no data.
    const noToken = await fetch(`${base}/api/state`, { headers: { origin: "http://127.0.0.1:9091" } });
    expect(noToken.status).toBe(401);
    expect(noToken.headers.get("access-control-allow-origin")).toBe("http://127.0.0.1:9091");

    const stranger = await fetch(`${base}/api/state`, { method: "OPTIONS", headers: { origin: "https://evil.example", "access-control-request-method": "GET" } });
    expect(stranger.status).toBe(405);
    expect(stranger.headers.get("access-control-allow-origin")).toBeNull();
    const strangerGet = await fetch(`${base}/api/state`, { headers: { origin: "https://evil.example", authorization: `Bearer ${TOKEN}` } });
    expect(strangerGet.headers.get("access-control-allow-origin")).toBeNull();
    // Only /api/state is shared across origins.
    const route = await fetch(`${base}/api/route?service=s&client=192.0.2.1`, { headers: { origin: "http://127.0.0.1:9091", authorization: `Bearer ${TOKEN}` } });
    expect(route.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("has an inline script that parses, and a page that stays small", () => {
    const inline = /<script>([\s\S]*)<\/script>/.exec(statusPage().body.toString())?.[1];
    expect(inline).toBeTruthy();
    expect(() => new vm.Script(inline!)).not.toThrow();
    expect(statusPage().body.length).toBeLessThan(64 * 1024);
  });

  it("has a script that type-checks against the admin API types (shared/api.ts) and the DOM", () => {
    const r = spawnSync(process.execPath, [join(repo, "node_modules/typescript/bin/tsc"), "-p", join(repo, "node/admin/assets")], { encoding: "utf8", timeout: 120_000 });
    expect(`${r.stdout}${r.stderr}`).toBe("");
    expect(r.status).toBe(0);
  }, 150_000);
});

/** A GET with a Host header of our choosing (fetch would put the URL's). */
function get(base: string, path: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path, headers, agent: false }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("admin API hardening (issue 13, finding 15)", () => {
  let server: AdminServer;
  let base = "";
  let builds = 0;
  beforeAll(async () => {
    const api: AdminApi = {
      ready: () => true,
      state: () => ({ builds: ++builds, nested: { list: [1, 2, 3] } }) as unknown as StateView,
      route: () => ({ status: 404, body: { error: "no service" } }),
      metrics: async () => ({ contentType: "text/plain", body: "" }),
      pages: new Map([["/", statusPage]]),
      publicPages: new Set(["/"]),
    };
    // No token: the case DNS rebinding is about (a token-less API on loopback).
    server = new AdminServer(api, undefined, { allowedHosts: ["lb1.example"], maxConnections: 3 });
    base = `http://${await server.listen("127.0.0.1:0")}`;
  });
  afterAll(() => server.close());

  it.each([
    { host: "evil.example", status: 403 },
    { host: "evil.example:80", status: 403 },
    { host: "127.0.0.1.evil.example", status: 403 },
    { host: "127.0.0.1:9090", status: 200 },
    { host: "[::1]:9090", status: 200 },
    { host: "localhost:9090", status: 200 },
    { host: "LB1.example:9090", status: 200 },
  ])("Host $host → $status on /api/state and the page", async ({ host, status }) => {
    expect((await get(base, "/api/state", { host })).status).toBe(status);
    expect((await get(base, "/", { host })).status).toBe(status);
  });

  it("answers probes whatever the Host header", async () => {
    expect((await get(base, "/healthz", { host: "anything.example" })).status).toBe(200);
    expect((await get(base, "/readyz", { host: "anything.example" })).status).toBe(200);
  });

  it("says nosniff on every answer", async () => {
    for (const path of ["/", "/api/state", "/healthz", "/nope"]) expect((await get(base, path, { host: "127.0.0.1" })).headers["x-content-type-options"], path).toBe("nosniff");
  });

  it("sends /api/state compact, built once per short interval for all pollers", async () => {
    const first = await get(base, "/api/state", { host: "127.0.0.1" });
    expect(first.body).not.toContain("\n");
    const burst = await Promise.all(Array.from({ length: 20 }, () => get(base, "/api/state", { host: "127.0.0.1" })));
    const seen = new Set([first, ...burst].map((r) => (JSON.parse(r.body) as { builds: number }).builds));
    // 21 requests, a handful of builds at most (one per STATE_CACHE_MS while they run).
    expect(seen.size).toBeLessThan(21);
    const before = builds;
    await new Promise((r) => setTimeout(r, STATE_CACHE_MS + 50));
    await get(base, "/api/state", { host: "127.0.0.1" });
    expect(builds).toBe(before + 1); // and fresh again after the interval
  });

  it("rebuilds the cached state at once when the node's state key changes (a new revision applied)", async () => {
    let key = "r1";
    let n = 0;
    const api: AdminApi = { ready: () => true, state: () => ({ n: ++n, key }) as unknown as StateView, stateKey: () => key, route: () => ({ status: 404, body: { error: "no service" } }), metrics: async () => ({ contentType: "text/plain", body: "" }) };
    const s = new AdminServer(api, undefined);
    const b = `http://${await s.listen("127.0.0.1:0")}`;
    try {
      const a = JSON.parse((await get(b, "/api/state", { host: "127.0.0.1" })).body) as { n: number; key: string };
      const same = JSON.parse((await get(b, "/api/state", { host: "127.0.0.1" })).body) as { n: number };
      key = "r2";
      const next = JSON.parse((await get(b, "/api/state", { host: "127.0.0.1" })).body) as { n: number; key: string };
      // Within STATE_CACHE_MS (no sleep here): the same key reuses the build, a new key does not.
      expect(same.n === a.n || same.n === a.n + 1).toBe(true);
      expect(next.key).toBe("r2");
    } finally {
      await s.close();
    }
  });

  it("caps open admin connections", async () => {
    const port = Number(new URL(base).port);
    const held: net.Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const s = net.connect(port, "127.0.0.1");
        await new Promise((r) => s.once("connect", r));
        held.push(s);
      }
      await waitFor(() => new Promise<boolean>((r) => server.server.getConnections((_e, n) => r(n === 3))), { message: "three connections accepted" });
      const extra = net.connect(port, "127.0.0.1");
      let closed = false;
      extra.on("close", () => (closed = true));
      extra.on("error", () => {});
      await waitFor(() => closed, { message: "the connection over the cap is closed" });
    } finally {
      for (const s of held) s.destroy();
    }
  });

  it("compares the token in constant time: any length is a 401, never a 500", async () => {
    const api: AdminApi = { ready: () => true, state: () => ({}) as unknown as StateView, route: () => ({ status: 404, body: { error: "no service" } }), metrics: async () => ({ contentType: "text/plain", body: "" }) };
    const s = new AdminServer(api, TOKEN);
    const b = `http://${await s.listen("127.0.0.1:0")}`;
    try {
      for (const auth of ["Bearer ", "Bearer t", `Bearer ${TOKEN}x`, `Bearer ${"x".repeat(5000)}`, "Basic abc"]) expect((await get(b, "/api/state", { host: "127.0.0.1", authorization: auth })).status, auth).toBe(401);
      expect((await get(b, "/api/state", { host: "127.0.0.1", authorization: `Bearer ${TOKEN}` })).status).toBe(200);
    } finally {
      await s.close();
    }
  });
});
