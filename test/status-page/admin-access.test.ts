// What the status page needs from the admin server, without a browser: the page shell without the
// token (and no data in it), the token still required for the API, CORS on /api/state only for other
// nodes' admin origins (preflight included), and an inline script that parses.

import { spawnSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AdminApi, AdminServer } from "../../node/admin/server.js";
import { allowsPeerOrigin, statusPage } from "../../node/admin/status-page.js";
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
