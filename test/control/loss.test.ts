// The one lease-loss signal both stores use: listeners hear a loss once, in a microtask (never inside
// the call that noticed it), late listeners too; a throwing listener does not silence the others;
// ending quietly (revoke, resign) tells nobody.

import { describe, expect, it } from "vitest";
import { LossSignal } from "../../node/control/loss.js";
import { MemoryStore } from "../../node/control/memory-store.js";

const microtask = () => Promise.resolve();

describe("LossSignal", () => {
  it("tells every listener once, after the losing call returned, and late listeners the same way", async () => {
    const signal = new LossSignal();
    const heard: string[] = [];
    signal.onLost((r) => heard.push(`early: ${r}`));
    expect(signal.lose("expired")).toBe(true);
    expect(heard).toEqual([]); // not inside lose()
    expect(signal.lose("again")).toBe(false);
    expect(signal.live).toBe(false);
    signal.onLost((r) => heard.push(`late: ${r}`));
    expect(heard).toEqual([]);
    await microtask();
    expect(heard).toEqual(["early: expired", "late: expired"]);
  });

  it("a throwing listener does not keep the others from hearing", async () => {
    const signal = new LossSignal();
    const heard: string[] = [];
    signal.onLost(() => {
      throw new Error("listener bug");
    });
    signal.onLost((r) => heard.push(r));
    signal.lose("gone");
    await microtask();
    await microtask();
    expect(heard).toEqual(["gone"]);
  });

  it("ending quietly tells nobody, and a later loss is ignored", async () => {
    const signal = new LossSignal();
    const heard: string[] = [];
    signal.onLost((r) => heard.push(r));
    expect(signal.end()).toBe(true);
    expect(signal.lose("after end")).toBe(false);
    signal.onLost((r) => heard.push(r));
    await microtask();
    expect(heard).toEqual([]);
  });
});

describe("MemoryStore leases and leaderships use it", () => {
  it("an expired lease tells its listeners in a microtask; a throwing listener is contained", async () => {
    const store = new MemoryStore();
    const lease = await store.grantLease(5, true);
    const heard: string[] = [];
    lease.onLost(() => {
      throw new Error("listener bug"); // before: an uncaught exception in the memory store's microtask
    });
    lease.onLost((r) => heard.push(r));
    store.expireLease(lease.id);
    expect(heard).toEqual([]);
    await microtask();
    await microtask();
    expect(heard).toEqual(["expired"]);
    await store.close();
  });

  it("a leadership hears its lease's loss; resign tells nobody", async () => {
    const store = new MemoryStore();
    const prefix = "/loss/";
    const a = await store.campaign(prefix, "a", 5);
    const heard: string[] = [];
    a.onLost((r) => heard.push(r));
    store.expireLease(BigInt(`0x${a.key.slice(prefix.length)}`).toString());
    await new Promise((resolve) => setImmediate(resolve));
    expect(heard).toEqual(["lease lost: expired"]);

    const b = await store.campaign(prefix, "b", 5);
    const heardB: string[] = [];
    b.onLost((r) => heardB.push(r));
    await b.resign();
    await new Promise((resolve) => setImmediate(resolve));
    expect(heardB).toEqual([]);
    await store.close();
  });
});
