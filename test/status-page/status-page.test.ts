// The status page end to end: real etcd, three real nodes with an admin token, real backends and a
// trickle of real traffic, and Debian's Chromium (driven by playwright-core) reading the page the way
// an operator would. Saves test-artifacts/status-page.png.
import { existsSync, mkdirSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeValue } from "../../shared/codec.js";
import { waitFor } from "../helpers/wait.js";
import { CLUSTER, keys, launchChromium, type PageCluster, startPageCluster, TOKEN } from "./cluster.js";

const ARTIFACT = "test-artifacts/status-page.png";
const NOT_AN_IP = "not-an-ip";

/** State of one node as the admin API documents it (the fields this test reads). */
interface State {
  revision: number;
  health: { leader: string | null };
  services: Array<{ name: string; backends: Array<{ id: string; verdict: { state: string; reason: string } | null }> }>;
}

let cluster: PageCluster;
let browser: Browser;
let context: BrowserContext;
let page: Page;
const consoleErrors: string[] = [];

beforeAll(async () => {
  cluster = await startPageCluster();
  browser = await launchChromium();
  context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  page = await context.newPage();
  page.on("console", (m) => {
    // The one error this test provokes on purpose: route explain for a client that is not an IP (400).
    if (m.type() === "error" && !m.location().url.includes(`client=${NOT_AN_IP}`)) consoleErrors.push(`console: ${m.text()} (${m.location().url})`);
  });
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e.message}`));
  await page.goto(`http://${cluster.nodes[0].admin.address}/?token=${TOKEN}`);
}, 90_000);

afterAll(async () => {
  await browser?.close();
  await cluster?.stop();
}, 60_000);

describe("status page", () => {
  it("loads with no console errors, keeps the token out of the address bar, and shows the three nodes with their applied revisions", async () => {
    await page.locator("#nodes-table tbody tr").nth(2).waitFor({ timeout: 10_000 });
    expect(await page.locator("#cluster").textContent()).toBe(CLUSTER);
    expect(new URL(page.url()).search).toBe("");
    expect(await page.locator("#nodes-table tbody tr").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-node")))).toEqual(["n1", "n2", "n3"]);
    // Each node's revision comes from that node's own /api/state: cross-origin, with the token.
    await waitFor(async () => (await page.locator("#nodes-table td[data-rev]").evaluateAll((tds) => tds.every((td) => /^\d+$/.test(td.getAttribute("data-rev") ?? "")))), {
      timeoutMs: 10_000,
      message: "an applied revision for every node",
    });
    const revs = await page.locator("#nodes-table td[data-rev]").evaluateAll((tds) => tds.map((td) => Number(td.getAttribute("data-rev"))));
    const own = await Promise.all(cluster.nodes.map((n) => cluster.get<State>(n, "/api/state")));
    for (const [i, r] of revs.entries()) {
      expect(r).toBeGreaterThan(0);
      expect(r).toBeLessThanOrEqual(own[i].revision);
    }
    expect(await page.locator("section.svc").evaluateAll((s) => s.map((e) => e.getAttribute("data-service")))).toEqual(["api", "mqtt", "web"]);
    expect(consoleErrors).toEqual([]);
  });

  it("shows which node is the health leader", async () => {
    await waitFor(() => cluster.nodes[0].reconciler.heartbeat !== null, { timeoutMs: 15_000, message: "a health heartbeat in etcd" });
    const leader = (await cluster.get<State>(cluster.nodes[0], "/api/state")).health.leader;
    expect(["n1", "n2", "n3"]).toContain(leader);
    await expect.poll(() => page.locator("#leader").textContent(), { timeout: 5000 }).toBe(leader);
    await expect.poll(() => page.locator(`#nodes-table tr[data-node="${leader}"]`).textContent(), { timeout: 5000 }).toContain("leader");
    expect(await page.locator("#nodes-table tbody").textContent()).toMatch(/★ leader/);
    expect(await page.locator('#nodes-table tr:has-text("★ leader")').count()).toBe(1);
  });

  it("turns a killed backend down within a few seconds, with its reason", async () => {
    await page.locator('tr[data-backend="web/w2"][data-verdict="up"]').waitFor({ timeout: 15_000 });
    await cluster.backends.w2.close();
    const row = page.locator('tr[data-backend="web/w2"][data-verdict="down"]');
    await row.waitFor({ timeout: 6000 });
    const st = await cluster.get<State>(cluster.nodes[0], "/api/state");
    const verdict = st.services.find((s) => s.name === "web")!.backends.find((b) => b.id === "w2")!.verdict!;
    expect(verdict.state).toBe("down");
    expect(verdict.reason).not.toBe("");
    expect(await row.textContent()).toContain("▼ down");
    expect(await row.locator("td").nth(6).textContent()).toBe(verdict.reason);
    expect(await page.title()).toMatch(/^\(1 down\) edge-eu/);
  });

  it("shows the killed backend's verdict change in the events timeline", async () => {
    const down = page.locator('#events-table tr[data-kind="verdict"]', { hasText: "web/w2 down" });
    await down.first().waitFor({ timeout: 15_000 });
    const api = await cluster.get<{ events: Array<{ kind: string; message: string }> }>(cluster.nodes[0], "/api/events");
    expect(api.events.some((e) => e.kind === "verdict" && e.message.startsWith("backend web/w2 down"))).toBe(true);
  });

  it("sorts the backend table by the clicked column", async () => {
    const ids = () => page.locator('section[data-service="web"] table.backends tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute("data-backend")));
    expect(await ids()).toEqual(["web/w1", "web/w2", "web/w3", "web/w4"]);
    await page.locator('section[data-service="web"] th button', { hasText: "Backend" }).click();
    expect(await ids()).toEqual(["web/w4", "web/w3", "web/w2", "web/w1"]);
    await page.locator('section[data-service="web"] th button', { hasText: "Weight" }).click();
    expect((await ids()).slice(0, 2)).toEqual(["web/w1", "web/w2"]); // weight 2 first, ties by id
    expect(await page.locator('section[data-service="web"] th[aria-sort="descending"]').textContent()).toContain("Weight");
    await page.locator('section[data-service="web"] th button', { hasText: "Backend" }).click();
    expect(await ids()).toEqual(["web/w1", "web/w2", "web/w3", "web/w4"]);
  });

  it("answers route explain with the backend and the reason /api/route gives", async () => {
    await page.selectOption("#ex-service", "web");
    await page.fill("#ex-client", "203.0.113.7");
    await page.click("#ex-go");
    await page.locator("#ex-reason").waitFor({ timeout: 5000 });
    const direct = await cluster.get<{ backend: { id: string } | null; reason: string }>(cluster.nodes[0], "/api/route?service=web&client=203.0.113.7");
    expect(direct.backend).not.toBeNull();
    expect(await page.locator("#ex-backend").textContent()).toContain(direct.backend!.id);
    expect(await page.locator("#ex-reason").textContent()).toBe(direct.reason);

    await page.fill("#ex-client", NOT_AN_IP);
    await page.click("#ex-go");
    await expect.poll(() => page.locator("#ex-answer").textContent()).toContain("client must be an IP address");
  });

  it("lists invalid etcd records with key and reason", async () => {
    const typo = page.locator(`#invalid-table tr[data-key="${keys.backend("web", "typo")}"]`);
    const cache = page.locator(`#invalid-table tr[data-key="${keys.service("cache")}"]`);
    await typo.waitFor({ timeout: 5000 });
    expect(await typo.locator("td").nth(1).textContent()).toMatch(/address:port/);
    expect(await cache.locator("td").nth(1).textContent()).toMatch(/algorithm/);
    expect(await page.locator("#tile-invalid").textContent()).toBe("2");
  });

  it("saves a screenshot with no console errors along the way", async () => {
    // A route explain answer in the picture, and sparklines with some history (longer for the docs shot).
    await page.selectOption("#ex-service", "web");
    await page.fill("#ex-client", "198.51.100.23");
    await page.click("#ex-go");
    await page.locator("#ex-reason").waitFor({ timeout: 5000 });
    await new Promise((r) => setTimeout(r, Number(process.env.STATUS_PAGE_SETTLE_MS ?? 3000)));
    if (!existsSync("test-artifacts")) mkdirSync("test-artifacts");
    await page.screenshot({ path: ARTIFACT, fullPage: true });
    expect(existsSync(ARTIFACT)).toBe(true);
    expect(consoleErrors).toEqual([]);
  }, 120_000);

  it("asks for the token when opened without one, and then works", async () => {
    const other = await context.browser()!.newContext({ viewport: { width: 1200, height: 800 } });
    try {
      const p = await other.newPage();
      let asked = 0;
      p.on("request", (r) => {
        if (new URL(r.url()).pathname === "/api/state") asked++;
      });
      const shell = await p.goto(`http://${cluster.nodes[1].admin.address}/`);
      expect(shell?.status()).toBe(200);
      await p.locator("#token-banner").waitFor({ timeout: 5000 });
      expect(await p.locator("#nodes-table").count()).toBe(0); // no cluster data without the token
      await new Promise((r) => setTimeout(r, 1500));
      expect(asked).toBe(1); // refused once, then it waits for a token instead of asking every second
      // Typed slowly across a redraw or two: the field must keep it.
      await p.locator('#token-banner input[name="token"]').pressSequentially(TOKEN, { delay: 60 });
      await p.click('#token-banner button[type="submit"]');
      await p.locator('#nodes-table tr[data-node="n2"]').waitFor({ timeout: 5000 });
      expect(await p.locator("#token-banner").isHidden()).toBe(true);
    } finally {
      await other.close();
    }
  });

  it("never sends the token to a node record's admin address that is not in admin.trustedPeers (issue 13, finding 10)", async () => {
    // A rogue writer registers a well-formed node record pointing at its own listener (127.0.0.2: loopback, not trusted).
    const seen: Array<string | undefined> = [];
    // It answers CORS preflights as a peer would, so a page willing to send the token would send it.
    const trap = http.createServer((req, res) => {
      const cors = { "access-control-allow-origin": req.headers.origin ?? "*", "access-control-allow-headers": "authorization", "access-control-allow-methods": "GET" };
      if (req.method === "OPTIONS") return void res.writeHead(204, cors).end();
      seen.push(req.headers.authorization);
      res.writeHead(401, cors).end("{}");
    });
    await new Promise<void>((r) => trap.listen(0, "127.0.0.2", r));
    const admin = `127.0.0.2:${(trap.address() as AddressInfo).port}`;
    const key = keys.node("rogue");
    const record = { id: "rogue", address: admin, admin, zone: "", version: "0.0.0", ready: true, draining: false, revision: 1, mode: "shared", startedAt: Date.now(), updatedAt: Date.now() };
    try {
      await cluster.nodes[0].store.put(key, encodeValue(record));
      await waitFor(() => seen.length >= 2, { timeoutMs: 15_000, message: "the page polls the rogue address" });
      expect(seen.every((a) => a === undefined), `Authorization sent: ${JSON.stringify(seen)}`).toBe(true);
      // The nodes in the list still get it: their revisions keep coming.
      await page.locator('#nodes-table tr[data-node="rogue"]').waitFor({ timeout: 5000 });
    } finally {
      await cluster.nodes[0].store.delete(key);
      await new Promise((r) => trap.close(r));
    }
  }, 30_000);

  it("keeps drawing after a render exception, and a service named like an Object property renders (issue 13, finding 12)", async () => {
    const names = ["constructor", "toString", "hasOwnProperty"];
    const errorsBefore = consoleErrors.length;
    try {
      for (const name of names) await cluster.etcd.put(keys.service(name), JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
      for (const name of names) await page.locator(`section.svc[data-service="${name}"]`).waitFor({ timeout: 10_000 });
      // Polling goes on: the leader changes nothing here, but the applied revision keeps up with etcd.
      const put = await cluster.etcd.put(keys.backend("constructor", "b1"), "127.0.0.1:9");
      await waitFor(async () => (await page.locator('section.svc[data-service="constructor"]').textContent())?.includes("b1") === true, { timeoutMs: 10_000, message: "the page keeps polling and shows the new backend" });
      expect(put).toBeGreaterThan(0);
      expect(consoleErrors.slice(errorsBefore)).toEqual([]);
      // A render that throws (a page bug, provoked here) must not stop polling for good.
      await page.evaluate(() => {
        const orig = Date.prototype.toISOString;
        let left = 3;
        Date.prototype.toISOString = function () {
          if (left-- > 0) throw new Error("provoked render failure");
          return orig.call(this);
        };
      });
      const mark = await cluster.etcd.put(keys.backend("constructor", "b2"), "127.0.0.1:10");
      await waitFor(async () => (await page.locator('section.svc[data-service="constructor"]').textContent())?.includes("b2") === true, { timeoutMs: 15_000, message: "polling survives the render exception" });
      expect(mark).toBeGreaterThan(put);
      expect(consoleErrors.slice(errorsBefore).some((e) => e.includes("provoked render failure")), "the provoked exception did happen").toBe(true);
    } finally {
      for (const name of names) {
        await cluster.etcd.del(keys.backend(name, "b1"));
        await cluster.etcd.del(keys.backend(name, "b2"));
        await cluster.etcd.del(keys.service(name));
      }
      consoleErrors.splice(errorsBefore);
    }
  }, 60_000);

  it("shows a drained node and the rollout's progress (issue 17)", async () => {
    const errorsBefore = consoleErrors.length;
    const now = Date.now();
    const rollout = { id: "r-1", status: "running", startedAt: now, updatedAt: now, maxUnavailable: 1, restartCmd: null, nodes: ["n1", "n2", "n3"], done: ["n1", "n2"], current: { node: "n3", phase: "draining", since: now, revision: 0, startedAtBefore: 1, marks: { drain: now, restart: 0, undrain: 0, openAtStart: 0, cut: 0 } }, error: null, steps: [] };
    try {
      await cluster.etcd.put(keys.drain("n3"), JSON.stringify({ by: "ops", reason: "status page test" }));
      await cluster.etcd.put(keys.rolloutState, JSON.stringify(rollout));
      const row = page.locator('#nodes-table tr[data-node="n3"]');
      await waitFor(async () => /drained/.test((await row.textContent()) ?? ""), { timeoutMs: 15_000, message: "n3 shown drained" });
      expect(await page.locator("#drain-keys").textContent()).toBe("drain keys: n3");
      expect(await page.locator("#rollout-progress").textContent()).toMatch(/rollout running\s*2 \/ 3 nodes restarted · now n3 \(draining/);
      expect(consoleErrors.slice(errorsBefore)).toEqual([]);
    } finally {
      await cluster.etcd.del(keys.drain("n3"));
      await cluster.etcd.del(keys.rolloutState);
    }
    await waitFor(async () => /ready/.test((await page.locator('#nodes-table tr[data-node="n3"]').textContent()) ?? "") && (await page.locator("#drain-keys").count()) === 0, { timeoutMs: 15_000, message: "n3 ready again" });
  }, 60_000);

  it("shows a member that is down, and how to forget it (issue 17)", async () => {
    const errorsBefore = consoleErrors.length;
    // A member record with no node record: a node that died (or was removed) and is not forgotten.
    const gone = { v: 1, id: "n9", address: "127.0.0.1:1", admin: "127.0.0.1:1", zone: "", version: "0.0.9", firstSeen: Date.now() - 7_200_000, startedAt: Date.now() - 3_600_000 };
    try {
      await cluster.etcd.put(keys.member("n9"), JSON.stringify(gone));
      await waitFor(async () => (await page.locator("#members-down").count()) === 1, { timeoutMs: 15_000, message: "n9 shown down" });
      const text = (await page.locator("#members-down").textContent()) ?? "";
      expect(text).toMatch(/^down n9 \(last started 1 h ago, 0\.0\.9\) · members with no live node record; .*ballast node forget <id>/);
      expect(consoleErrors.slice(errorsBefore)).toEqual([]);
    } finally {
      await cluster.etcd.del(keys.member("n9"));
    }
    await waitFor(async () => (await page.locator("#members-down").count()) === 0, { timeoutMs: 15_000, message: "n9 no longer shown once forgotten" });
  }, 60_000);
});
