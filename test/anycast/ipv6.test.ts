// IPv6 anycast with the real announcer and router scripts and BIRD, inside two network namespaces this
// test makes (random names; deleted at the end, also on failure): a node announces an IPv4 and an IPv6
// VIP while its readiness URL answers, the router installs both routes, and withdraws them when it stops.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
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
  for (const ns of [nsR, nsN]) {
    try {
      sh("ip", "netns", "del", ns);
    } catch {
      // not created
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!canRun)("IPv6 anycast", () => {
  it("announces an IPv6 VIP next to an IPv4 one while ready, and withdraws both", async () => {
    sh("ip", "netns", "add", nsR);
    sh("ip", "netns", "add", nsN);
    sh("ip", "link", "add", `r${id}`, "netns", nsR, "type", "veth", "peer", "name", `n${id}`, "netns", nsN);
    for (const [ns, dev, v4, v6] of [
      [nsR, `r${id}`, "10.197.0.1/24", "fd97::1/64"],
      [nsN, `n${id}`, "10.197.0.5/24", "fd97::5/64"],
    ]) {
      inNs(ns, "ip", "link", "set", "lo", "up");
      inNs(ns, "ip", "addr", "add", v4, "dev", dev);
      inNs(ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad");
      inNs(ns, "ip", "link", "set", dev, "up");
    }
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
});
