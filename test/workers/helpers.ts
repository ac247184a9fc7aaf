// Helpers of the workers tests: a node with workers that is ready, its /api/state, and held-open
// connections through it that know which backend answered.
import net from "node:net";
import { expect } from "vitest";
import type { StateView } from "../../shared/api.js";
import { getJson, type NodeProcess, spawnNode } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

export const health = { type: "none" };

export async function readyNode(config: Record<string, unknown>): Promise<NodeProcess> {
  const node = await spawnNode({ accessLog: { enabled: false }, ...config });
  await waitFor(async () => (await fetch(`http://${node.admin}/readyz`)).status === 200, { timeoutMs: 60_000, message: "node ready" });
  return node;
}

export const state = (node: NodeProcess) => getJson<StateView>(node.admin, "/api/state");

/** A held-open connection through the node: which backend answered, and an echo check. */
export interface Conn {
  sock: net.Socket;
  backend: string;
  localPort: number;
  closed: boolean;
  /** Resolves true when `text` comes back within `ms`, false if the connection ended or stayed silent. */
  echo(text: string, ms?: number): Promise<boolean>;
}

export async function connect(port: number, localAddress = "127.0.0.1"): Promise<Conn> {
  const sock = net.connect({ port, host: "127.0.0.1", localAddress });
  let got = "";
  const c: Conn = {
    sock,
    backend: "",
    localPort: 0,
    closed: false,
    echo: (text, ms = 5000) =>
      new Promise((resolve) => {
        if (c.closed) return resolve(false);
        const start = got.length;
        const timer = setTimeout(() => done(false), ms);
        const check = () => {
          if (got.slice(start).includes(text)) done(true);
        };
        const done = (ok: boolean) => {
          clearTimeout(timer);
          sock.off("data", onData);
          sock.off("close", onClose);
          resolve(ok);
        };
        const onData = () => setImmediate(check);
        const onClose = () => done(false);
        sock.on("data", onData);
        sock.on("close", onClose);
        sock.write(text);
      }),
  };
  sock.on("data", (d) => (got += d));
  sock.on("close", () => (c.closed = true));
  sock.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    sock.once("connect", () => resolve());
    sock.once("error", reject);
  });
  c.localPort = sock.localPort ?? 0;
  expect(await c.echo("hello")).toBe(true);
  c.backend = got.slice(0, got.indexOf(":"));
  return c;
}

export function tcpPortOf(s: StateView, service: string): number {
  const p = s.services.find((x) => x.name === service)?.boundPort ?? 0;
  if (p === 0) throw new Error(`${service} not bound`);
  return p;
}
