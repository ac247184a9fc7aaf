// The namespace helper itself: links and the switch carry traffic, processes run inside, and
// cleanup removes every namespace and process it made without touching the host namespace.
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { netnsUnavailable, Topology } from "../helpers/netns.js";
import { waitFor } from "../helpers/wait.js";

const skip = netnsUnavailable();
const hostLinks = () => execFileSync("ip", ["-o", "link", "show"]).toString().replace(/\s+/g, " ").split("\n").map((l) => l.split(":")[1]).sort().join(",");

describe.skipIf(skip !== null)("test/helpers/netns", () => {
  const topologies: Topology[] = [];
  afterAll(async () => {
    for (const t of topologies) await t.destroy();
  });

  it("builds a veth link and a switch, routes across a router namespace, and runs processes inside", async () => {
    const before = hostLinks();
    const t = await Topology.create();
    topologies.push(t);
    const a = await t.namespace("a");
    const r = await t.namespace("r");
    const b = await t.namespace("b");
    await t.link(a, "eth0", r, "ra", { aAddr: "10.200.1.2/24", bAddr: "10.200.1.1/24" });
    await t.attach(r, ["10.200.2.1/24"]);
    await t.attach(b, ["10.200.2.2/24", "fd00:200:2::2/64"]);
    await r.enableForwarding();
    await a.addRoute("default", "10.200.1.1");
    await b.addRoute("default", "10.200.2.1");
    // A long-running process inside b, reached from a through r and the switch (two hops).
    const server = b.spawn(process.execPath, ["-e", 'require("net").createServer((s) => s.end("hello from b")).listen(7000, "10.200.2.2")']);
    await waitFor(async () => (await b.run("ss", ["-ltnH", "sport = :7000"])).includes("7000"), { message: "server listening in b" });
    const got = await a.run(process.execPath, ["-e", 'const s = require("net").connect(7000, "10.200.2.2"); s.pipe(process.stdout)']);
    expect(got).toBe("hello from b");
    expect(t.existing().sort()).toEqual([a.name, r.name, b.name, `${t.id}-sw`].sort());
    // The host namespace did not gain or lose a link.
    expect(hostLinks()).toBe(before);
    await t.destroy();
    expect(t.existing()).toEqual([]);
    expect(server.exitCode !== null || server.signalCode !== null).toBe(true);
  });

  it("removes its namespaces when the process exits without calling destroy()", () => {
    // A child process (the compiled helper: npm test builds first) builds a topology and exits; its
    // exit hook must delete what it made.
    const script = `
      import { Topology } from "${new URL("../../dist/test/helpers/netns.js", import.meta.url).pathname}";
      const t = await Topology.create();
      await t.namespace("x");
      console.log(t.id);
      process.exit(0);
    `;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 20_000 });
    const id = r.stdout.trim();
    expect(id, r.stderr).toMatch(/^bt\d+-/);
    expect(readdirSync("/run/netns").filter((n) => n.startsWith(id))).toEqual([]);
  });
});
