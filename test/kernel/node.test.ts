// A real Ballast node process inside the lb namespace (standalone YAML config): it programs its
// NAT service into the kernel, explains the kernel's choice, survives SIGKILL at the kernel level
// (fail-static), adopts its table on restart, removes it with --flush, and without CAP_NET_ADMIN or
// without nft reports the NAT service as not programmed while its proxy service keeps working.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { netnsUnavailable, type Namespace } from "../helpers/netns.js";
import { CLI } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";
import { CLIENT, createLab, type Lab, VIP } from "./lab.js";

const skip = netnsUnavailable();
const ADMIN = "10.77.1.1:9090";
const ports = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

/** GETs from inside a namespace (the admin API listens on an address that exists only there), one process for all. */
// biome-ignore lint/suspicious/noExplicitAny: JSON from the admin API, read field by field in assertions
type Json = any;

async function nsGetMany(ns: Namespace, paths: string[]): Promise<Json[]> {
  const js = `Promise.all(${JSON.stringify(paths)}.map((p) => fetch("http://${ADMIN}" + p).then((r) => r.json()))).then((j) => process.stdout.write(JSON.stringify(j)))`;
  return JSON.parse(await ns.run(process.execPath, ["-e", js]));
}
const nsGet = async (ns: Namespace, path: string) => (await nsGetMany(ns, [path]))[0];

function config(): string {
  const dir = mkdtempSync(join(tmpdir(), "ballast-nat-node-"));
  const file = join(dir, "ballast.yaml");
  const backends = [0, 1, 2].map((i) => ({ id: `b${i}`, address: `10.77.2.${10 + i}`, port: 8080 }));
  writeFileSync(
    file,
    stringify({
      node: { id: "n1" },
      cluster: "natlab",
      admin: { listen: ADMIN },
      log: { level: "info" },
      health: { staleAfter: "1h" },
      services: [
        { name: "web", listen: `${VIP}:80`, forwarding: "nat", health: { type: "none" }, backends },
        { name: "px", listen: "10.77.1.1:81", health: { type: "none" }, backends },
      ],
    }),
  );
  return file;
}

describe.skipIf(skip !== null)("a Ballast node with forwarding: nat (real process in a namespace)", { timeout: 180_000 }, () => {
  let lab: Lab;
  let file: string;
  beforeAll(async () => {
    lab = await createLab(3);
    file = config();
  });
  afterAll(async () => {
    await lab?.destroy();
  });

  const start = (prefix: string[] = [], env: NodeJS.ProcessEnv = process.env) => {
    const logs: string[] = [];
    const child = lab.lb.spawn(prefix.length ? prefix[0] : process.execPath, [...prefix.slice(1), ...(prefix.length ? [process.execPath] : []), CLI, "node", "--config", file], { env, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (d: Buffer) => logs.push(d.toString()));
    child.stderr!.on("data", (d: Buffer) => logs.push(d.toString()));
    return { child, logs };
  };
  /** waitFor that quotes the node's log when it gives up. */
  const waitNode = async (node: { logs: string[] }, cond: () => Promise<boolean>, message: string) => {
    try {
      await waitFor(cond, { timeoutMs: 90_000, intervalMs: 200, message });
    } catch (err) {
      throw new Error(`${(err as Error).message}\nnode log:\n${node.logs.join("").slice(-3000)}`);
    }
  };
  const webState = async () => ((await nsGet(lab.client, "/api/state")).services as Json[]).find((s) => s.name === "web");

  it("programs, explains, keeps forwarding after SIGKILL, adopts on restart, and --flush removes the table", async () => {
    const first = start();
    await waitNode(first, async () => (await webState())?.forwarding?.programmed === true, "web programmed");
    const st = await webState();
    expect(st.forwarding).toMatchObject({ mode: "nat", forwarder: "kernel", programmed: true });
    // Route explain answers with the kernel's own hash.
    const got = await lab.flows("tcp", ports(23000, 40));
    const explained = await nsGetMany(lab.client, [...got.keys()].map((p) => `/api/route?service=web&client=${CLIENT}&port=${p}`));
    expect(explained.map((r) => r.backend?.id)).toEqual([...got.values()].map((a) => a.split(" ")[0]));
    expect(explained[0].forwarding).toBe("nat");
    const held = await lab.hold(ports(24000, 10));
    const before = await held.ask();
    first.child.kill("SIGKILL");
    await new Promise<void>((r) => first.child.once("exit", () => r()));
    // Fail-static one level lower: the process is gone, the kernel keeps forwarding.
    expect(await held.ask()).toEqual(before);
    const during = await lab.flows("tcp", ports(25000, 30));
    expect([...during.values()].filter((a) => !/^b[012] /.test(a))).toEqual([]);
    // A restarted node adopts the table without disturbing tracked flows.
    const second = start();
    await waitNode(second, async () => (await webState())?.forwarding?.programmed === true, "web programmed again");
    expect(await held.ask()).toEqual(before);
    held.close();
    second.child.kill("SIGTERM");
    await new Promise<void>((r) => second.child.once("exit", () => r()));
    // SIGTERM leaves the table too; --flush removes it.
    const flush = await lab.lb.exec(process.execPath, [CLI, "node", "--config", file, "--flush"]);
    expect(flush.stdout + flush.stderr).toMatch(/removed nftables table inet ballast_natlab/);
    expect((await lab.lb.run("nft", ["list", "tables"])).includes("ballast_natlab")).toBe(false);
  }, 240_000);

  it.each([
    { description: "without CAP_NET_ADMIN", prefix: ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"], env: process.env, reason: /CAP_NET_ADMIN/ },
    { description: "without nft", prefix: ["env", "PATH=/nonexistent"], env: process.env, reason: /nft is not installed/ },
  ])("$description: the NAT service is reported not programmed with the reason; the proxy service works", async ({ prefix, env, reason }) => {
    const node = start(prefix, env);
    try {
      await waitNode(node, async () => {
        // Before the first apply the state says "not applied yet"; wait for the kernel forwarder's own word.
        const r = (await webState())?.forwarding?.reason;
        return r != null && r !== "not applied yet";
      }, "web status");
      const st = await webState();
      expect(st.forwarding.programmed).toBe(false);
      expect(st.forwarding.reason).toMatch(reason);
      const proxied = await lab.client.run(process.execPath, ["-e", `const s = require("net").connect(81, "10.77.1.1"); s.on("data", (d) => { process.stdout.write(String(d)); s.destroy(); })`]);
      expect(proxied).toMatch(/^b[012] /);
      const metrics = await lab.client.run(process.execPath, ["-e", `fetch("http://${ADMIN}/metrics").then((r) => r.text()).then((t) => process.stdout.write(t))`]);
      expect(metrics).toMatch(/ballast_kernel_service_programmed\{service="web",node="n1"\} 0/);
    } finally {
      node.child.kill("SIGKILL");
      await new Promise<void>((r) => (node.child.exitCode !== null ? r() : node.child.once("exit", () => r())));
    }
  }, 180_000);
});
