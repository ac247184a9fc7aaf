// The one collector helper: metrics read plain numbers at scrape time, start empty at each scrape
// (a service that left disappears), and a labelless metric is emitted with {}.

import client from "prom-client";
import { describe, expect, it } from "vitest";
import { childCache, collectedCounter, collectedGauge } from "../../node/collect.js";

describe("collected metrics", () => {
  it("read their source at each scrape, and forget label sets the source no longer has", async () => {
    const registry = new client.Registry();
    const totals = new Map<string, number>([["web", 3], ["dns", 5]]);
    let queued = 7;
    collectedCounter({
      name: "t_total",
      help: "test counter",
      labelNames: ["service"],
      registry,
      read: (emit) => {
        for (const [service, n] of totals) emit({ service }, n);
      },
    });
    collectedGauge({ name: "t_queued", help: "test gauge", registry, read: (emit) => emit({}, queued) });

    const first = await registry.metrics();
    expect(first).toContain('t_total{service="web"} 3');
    expect(first).toContain('t_total{service="dns"} 5');
    expect(first).toContain("t_queued 7");

    totals.delete("dns");
    totals.set("web", 4);
    queued = 0;
    const second = await registry.metrics();
    expect(second).toContain('t_total{service="web"} 4');
    expect(second).not.toContain('service="dns"');
    expect(second).toContain("t_queued 0");
  });

  it("childCache hands out one child per label value; forget drops the child and its series", async () => {
    const registry = new client.Registry();
    const h = new client.Histogram({ name: "t_seconds", help: "h", labelNames: ["service"], registers: [registry] });
    const child = childCache(h);
    expect(child("web")).toBe(child("web"));
    expect(child("web")).not.toBe(child("dns"));
    child("dns").observe(0.1);
    expect(await registry.metrics()).toContain('t_seconds_count{service="dns"} 1');
    const before = child("dns");
    child.forget("dns");
    expect(await registry.metrics()).not.toContain('service="dns"');
    expect(child("dns")).not.toBe(before);
  });
});
