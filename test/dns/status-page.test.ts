// The status page in headless Chromium (as CI runs it) shows the DNS view of a node that runs a DNS
// responder, and groups a service's backends by zone.
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTcpEcho } from "../helpers/backends.js";
import type { EtcdProcess } from "../helpers/etcd.js";
import { startNode } from "../helpers/node.js";
import { useSharedEtcd } from "../helpers/suite.js";
import { waitFor } from "../helpers/wait.js";
import { launchChromium } from "../status-page/cluster.js";

let etcd: EtcdProcess;
useSharedEtcd((e) => {
  etcd = e;
});
let browser: Browser;
beforeAll(async () => {
  browser = await launchChromium();
}, 60_000);
afterAll(async () => {
  await browser?.close();
});

describe("status page: DNS and zones", () => {
  it("shows each DNS name with the live nodes it answers, and backends grouped by zone", { timeout: 60_000 }, async () => {
    const p = "/ballast/dnspage/";
    const b1 = await startTcpEcho("b1");
    const b2 = await startTcpEcho("b2");
    await etcd.put(`${p}services/web`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" }, locality: "prefer-zone" }));
    // Ids sort one way, zones the other: the table must follow the zones.
    await etcd.put(`${p}backends/web/a-in-b`, JSON.stringify({ address: "127.0.0.1", port: b1.port, zone: "b" }));
    await etcd.put(`${p}backends/web/z-in-a`, JSON.stringify({ address: "127.0.0.1", port: b2.port, zone: "a" }));
    await etcd.put(`${p}dns`, JSON.stringify({ zone: "lb.test" }));
    const n = await startNode({ node: { id: "p1", zone: "a", publicAddresses: ["127.0.0.31"] }, cluster: "dnspage", etcd: { endpoints: [etcd.endpoint], leaseTtl: 2 }, dns: { listen: "127.0.0.1:0" } });
    await waitFor(() => n.dns!.describe().names.some((x) => x.name === "web.lb.test" && x.addresses.length === 1));
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://${n.admin.address}/`);
    const row = page.locator('#dns-table tr[data-name="web.lb.test"]');
    await row.waitFor({ timeout: 15_000 });
    expect(await row.textContent()).toContain("127.0.0.31 (p1, zone a)");
    expect(await page.locator("#dns").textContent()).toMatch(/zone lb\.test · serial \d+/);
    const order = await page.locator('section.svc[data-service="web"] tr[data-backend]').evaluateAll((rows) => rows.map((r) => r.getAttribute("data-backend")));
    expect(order).toEqual(["web/z-in-a", "web/a-in-b"]);
    expect(errors).toEqual([]);
    await page.close();
  });
});
