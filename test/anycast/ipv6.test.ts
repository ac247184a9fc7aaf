// Anycast with the real announcer and router scripts and BIRD, inside network namespaces this test
// makes (random names; deleted at the end, also on failure): a node announces an IPv4 and an IPv6 VIP
// while its readiness URL answers, the router installs both routes, and withdraws them when it stops.
// And what withdraws: a 503 (draining) at the first poll; a poll with no answer in 1 s not alone (a
// loaded host), three in a row (a hung node) do.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { waitFor } from "../helpers/wait.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const anycast = join(repo, "deploy/anycast");
const id = randomBytes(3).toString("hex");
const nsR = `bl6r-${id}`;
const nsN = `bl6n-${id}`;
const nsR2 = `blar-${id}`;
const nsN2 = `blan-${id}`;
const dir = mkdtempSync(join(tmpdir(), "ballast-anycast6-"));
const children: ChildProcess[] = [];
const canRun = process.getuid?.() === 0 && spawnable("bird") && spawnable("ip");

function spawnable(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const sh = (...args: string[]) => execFileSync(args[0], args.slice(1), { stdio: "pipe", encoding: "utf8" });
const inNs = (ns: string, ...args: string[]) => sh("ip", "netns", "exec", ns, ...args);

/** A long-running process in a namespace, in its own process group so it and its children can be ended. */
function start(ns: string, env: Record<string, string>, ...argv: string[]): ChildProcess {
  const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const child = spawn("ip", ["netns", "exec", ns, "env", ...envArgs, ...argv], { detached: true, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout?.on("data", () => {});
  child.stderr?.on("data", () => {});
  children.push(child);
  return child;
}

function stop(child: ChildProcess): void {
  if (child.pid !== undefined && child.exitCode === null) {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

afterAll(() => {
  for (const c of children) stop(c);
  for (const ns of [nsR, nsN, nsR2, nsN2]) {
    try {
      sh("ip", "netns", "del", ns);
    } catch {
      // not created
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

/** A router and a node namespace joined by a veth, with IPv4 (and IPv6) addresses. */
function pair(r: string, n: string, suffix: string, net4: string, net6: string): void {
  sh("ip", "netns", "add", r);
  sh("ip", "netns", "add", n);
  sh("ip", "link", "add", `r${suffix}`, "netns", r, "type", "veth", "peer", "name", `n${suffix}`, "netns", n);
  for (const [ns, dev, v4, v6] of [
    [r, `r${suffix}`, `${net4}.1/24`, `${net6}::1/64`],
    [n, `n${suffix}`, `${net4}.5/24`, `${net6}::5/64`],
  ]) {
    inNs(ns, "ip", "link", "set", "lo", "up");
    inNs(ns, "ip", "addr", "add", v4, "dev", dev);
    inNs(ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad");
    inNs(ns, "ip", "link", "set", dev, "up");
  }
}

describe.skipIf(!canRun)("IPv6 anycast", () => {
  it("announces an IPv6 VIP next to an IPv4 one while ready, and withdraws both", async () => {
    pair(nsR, nsN, id, "10.197.0", "fd97");
    inNs(nsR, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1");

    // The node's readiness: a plain HTTP server inside the node's namespace.
    const ready = start(nsN, {}, process.execPath, "-e", "require('http').createServer((q, s) => s.end('ok')).listen(9090, '127.0.0.1')");
    start(nsR, { FABRIC: "10.197.0.0/24", VIP_RANGE: "10.199.0.0/24", VIP_RANGE6: "2001:db8:99::/64", STICKY: "0", BFD: "off", CONF: join(dir, "router.conf"), SOCK: join(dir, "router.ctl"), TEMPLATE: join(anycast, "bird-router.conf.in") }, "sh", join(anycast, "anycast-router.sh"));
    start(nsN, { VIPS: "10.199.0.10 2001:db8:99::10", ROUTER: "10.197.0.1", READY_URL: "http://127.0.0.1:9090/", POLL_MS: "100", BFD: "off", CONF: join(dir, "node.conf"), SOCK: join(dir, "node.ctl"), TEMPLATE: join(anycast, "bird-node.conf.in") }, "sh", join(anycast, "anycast-node.sh"));

    const route6 = () => inNs(nsR, "ip", "-6", "route", "show", "2001:db8:99::10");
    const route4 = () => inNs(nsR, "ip", "-4", "route", "show", "10.199.0.10");
    await waitFor(() => route6().includes("via fd97::5"), { timeoutMs: 30_000, message: "the IPv6 VIP route on the router" });
    await waitFor(() => route4().includes("via 10.197.0.5"), { timeoutMs: 10_000, message: "the IPv4 VIP route on the router" });
    // The VIP is on the node's loopback, so traffic the router forwards is delivered there.
    expect(inNs(nsN, "ip", "-6", "addr", "show", "dev", "lo")).toContain("2001:db8:99::10/128");

    stop(ready);
    await waitFor(() => !route6().includes("fd97::5") && !route4().includes("10.197.0.5"), { timeoutMs: 15_000, message: "both routes withdrawn when the node is not ready" });
  }, 90_000);

  it("one readiness poll without an answer keeps the route; a 503 withdraws it; three polls without an answer do", async () => {
    pair(nsR2, nsN2, `a${id}`, "10.196.0", "fd96");
    // The readiness URL answers as the file `mode` says: ok, 503, slow-once (one answer after 1.5 s,
    // past the announcer's 1 s timeout; it then writes `slow-done`), hang (no answer at all).
    const mode = join(dir, "mode");
    const setMode = (m: string) => writeFileSync(mode, m);
    setMode("ok");
    const server = `const fs=require('fs');require('http').createServer((q,s)=>{const m=fs.readFileSync(${JSON.stringify(mode)},'utf8');if(m==='503'){s.statusCode=503;s.end('draining');}else if(m==='hang'){}else if(m==='slow-once'){fs.writeFileSync(${JSON.stringify(mode)},'ok');setTimeout(()=>{s.end('ok');fs.writeFileSync(${JSON.stringify(join(dir, "slow-done"))},'1');},1500);}else s.end('ok');}).listen(9090,'127.0.0.1')`;
    start(nsN2, {}, process.execPath, "-e", server);
    start(nsR2, { FABRIC: "10.196.0.0/24", VIP_RANGE: "10.198.0.0/24", STICKY: "0", BFD: "off", CONF: join(dir, "router2.conf"), SOCK: join(dir, "router2.ctl"), TEMPLATE: join(anycast, "bird-router.conf.in") }, "sh", join(anycast, "anycast-router.sh"));
    start(nsN2, { VIPS: "10.198.0.10", ROUTER: "10.196.0.1", READY_URL: "http://127.0.0.1:9090/", POLL_MS: "100", BFD: "off", CONF: join(dir, "node2.conf"), SOCK: join(dir, "node2.ctl"), TEMPLATE: join(anycast, "bird-node.conf.in") }, "sh", join(anycast, "anycast-node.sh"));
    const announced = () => inNs(nsR2, "ip", "-4", "route", "show", "10.198.0.10").includes("via 10.196.0.5");
    await waitFor(announced, { timeoutMs: 30_000, message: "the VIP route on the router" });

    // One slow answer: the route must stay through it and the poll after it.
    setMode("slow-once");
    const gone: number[] = [];
    const t0 = Date.now();
    let after = 0;
    await waitFor(
      () => {
        if (!announced()) gone.push(Date.now() - t0);
        if (existsSync(join(dir, "slow-done"))) after++;
        return after >= 10; // 10 samples (≥ 0.5 s, several polls) after the slow answer went out
      },
      { timeoutMs: 15_000, intervalMs: 50, message: "the slow answer served" },
    );
    expect(gone, "ms after the slow poll began at which the route was missing").toEqual([]);

    setMode("503");
    await waitFor(() => !announced(), { timeoutMs: 10_000, message: "withdrawn on a 503" });
    setMode("ok");
    await waitFor(announced, { timeoutMs: 15_000, message: "announced again" });
    setMode("hang");
    await waitFor(() => !announced(), { timeoutMs: 20_000, message: "withdrawn when polls get no answer" });
  }, 120_000);
});
