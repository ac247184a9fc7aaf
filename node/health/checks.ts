// One probe per check kind (tcp, http, send-expect, udp): a single attempt against a backend's check
// address, bounded by the service's timeout. Probes never throw; the reason doubles as the verdict's.

import dgram from "node:dgram";
import http from "node:http";
import net from "node:net";
import type { z } from "zod";
import { formatHostPort } from "../../shared/address.js";
import { formatDuration } from "../../shared/duration.js";
import { isLocalResourceError } from "../model/fd-budget.js";
import type { CheckType, healthSchema } from "../../shared/schema.js";

/** A service's health settings after resolveService() filled the protocol-dependent check type. */
export type HealthSettings = z.output<typeof healthSchema> & { type: CheckType };
export type CheckKind = Exclude<CheckType, "none">;

/**
 * Metric label of a probe outcome; the detail lives in `reason`. `local`: this node could not make
 * the probe (EMFILE, ENOBUFS…) — says nothing about the backend, so it never counts toward a verdict.
 */
export type CheckResult = "ok" | "refused" | "timeout" | "status" | "mismatch" | "error" | "local";

export interface ProbeOutcome {
  ok: boolean;
  result: CheckResult;
  /** e.g. "connect ECONNREFUSED", "http 503", "timeout 1s", "expect mismatch". */
  reason: string;
}

export interface ProbeTarget {
  host: string;
  port: number;
}

export type Probe = (target: ProbeTarget, settings: HealthSettings, kind: CheckKind) => Promise<ProbeOutcome>;

/** Bytes read at most while looking for an expected pattern or body match. */
const MAX_READ = 64 * 1024;

// Error listeners are `on`, not `once`: a second error after finishing must not become uncaught.
const ok = (reason: string): ProbeOutcome => ({ ok: true, result: "ok", reason });
const fail = (result: CheckResult, reason: string): ProbeOutcome => ({ ok: false, result, reason });
const timedOut = (ms: number): ProbeOutcome => fail("timeout", `timeout ${formatDuration(ms)}`);

function socketError(what: string, err: NodeJS.ErrnoException): ProbeOutcome {
  const code = err.code ?? err.message;
  if (isLocalResourceError(err.code)) return fail("local", `local ${code} (this node, not the backend)`);
  return fail(code === "ECONNREFUSED" ? "refused" : "error", `${what} ${code}`);
}

/**
 * Runs the probe for `kind`. Patterns (`expect`, `http.bodyMatch`) are plain substrings, matched
 * against the bytes read so far (latin1), so binary banners work and no regex can fail to compile.
 */
export const probe: Probe = (target, settings, kind) => {
  switch (kind) {
    case "tcp":
      return probeTcp(target, settings.timeout);
    case "http":
      return probeHttp(target, settings);
    case "send-expect":
      return probeSendExpect(target, settings);
    case "udp":
      return probeUdp(target, settings);
  }
};

/**
 * A probe's one outcome: the first call wins, the deadline is cleared and `release` frees the socket.
 * `atDeadline` says what running out of time means for this kind of probe.
 */
function settleOnce(
  resolve: (outcome: ProbeOutcome) => void,
  timeoutMs: number,
  release: () => void,
  atDeadline: () => ProbeOutcome = () => timedOut(timeoutMs),
): (outcome: ProbeOutcome) => void {
  let done = false;
  const finish = (outcome: ProbeOutcome) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    release();
    resolve(outcome);
  };
  const timer = setTimeout(() => finish(atDeadline()), timeoutMs);
  return finish;
}

/** Connect, then close: the backend accepts connections. */
export function probeTcp(target: ProbeTarget, timeoutMs: number): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: target.host, port: target.port });
    const finish = settleOnce(resolve, timeoutMs, () => socket.destroy());
    socket.once("connect", () => finish(ok("connected")));
    socket.on("error", (err) => finish(socketError("connect", err)));
  });
}

/** One request on a fresh connection; the status must fall in `expectStatus`, the body contain `bodyMatch`. */
export function probeHttp(target: ProbeTarget, settings: HealthSettings): Promise<ProbeOutcome> {
  const h = settings.http ?? { method: "GET", path: "/", host: undefined, expectStatus: [200, 399] as [number, number], bodyMatch: undefined };
  const timeoutMs = settings.timeout;
  return new Promise((resolve) => {
    let connected = false;
    const hostHeader = h.host ?? formatHostPort(target.host, target.port);
    let req: http.ClientRequest;
    try {
      req = http.request({
        host: target.host,
        port: target.port,
        method: h.method,
        path: h.path,
        headers: { host: hostHeader, "user-agent": "ballast-health", connection: "close" },
        agent: false,
      });
    } catch (err) {
      // The schema rejects what http.request refuses; settings built elsewhere (tests, tools) may not.
      // A refused request is this node's problem, so it says so instead of throwing.
      resolve(fail("error", `http request refused: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`));
      return;
    }
    // The deadline is armed only once the request exists: its release must have something to destroy.
    const finish = settleOnce(resolve, timeoutMs, () => req.destroy());
    req.once("socket", (s) => s.once("connect", () => (connected = true)));
    req.on("error", (err: NodeJS.ErrnoException) => {
      // Before the connect: refused/unreachable; after: the reply was not HTTP, or the connection broke.
      if (!connected) finish(socketError("connect", err));
      else finish(fail("error", err.code?.startsWith("HPE_") ? "http invalid response" : `http ${err.code ?? err.message}`));
    });
    req.once("response", (res) => {
      const status = res.statusCode ?? 0;
      const [lo, hi] = h.expectStatus;
      if (status < lo || status > hi) return finish(fail("status", `http ${status}`));
      const match = h.bodyMatch;
      if (match === undefined || match === "") return finish(ok(`http ${status}`));
      let body = "";
      res.setEncoding("latin1");
      res.on("data", (chunk: string) => {
        body += chunk;
        if (body.includes(match)) finish(ok(`http ${status}`));
        else if (body.length > MAX_READ) finish(fail("mismatch", "body mismatch"));
      });
      res.once("end", () => finish(fail("mismatch", "body mismatch")));
      res.on("error", () => finish(fail("mismatch", "body mismatch")));
    });
    req.end();
  });
}

/** Connect, send `send` (if any), read until `expect` shows up; without `expect`, a connect suffices. */
export function probeSendExpect(target: ProbeTarget, settings: HealthSettings): Promise<ProbeOutcome> {
  const timeoutMs = settings.timeout;
  const expect = settings.expect ?? "";
  return new Promise((resolve) => {
    const socket = net.connect({ host: target.host, port: target.port });
    let connected = false;
    let received = "";
    // A wrong banner on a connection the server keeps open is only known for sure at the deadline.
    const finish = settleOnce(resolve, timeoutMs, () => socket.destroy(), () => (received.length > 0 ? fail("mismatch", "expect mismatch") : timedOut(timeoutMs)));
    socket.setEncoding("latin1");
    socket.once("connect", () => {
      connected = true;
      if (settings.send !== undefined && settings.send !== "") socket.write(settings.send);
      if (expect === "") finish(ok("connected"));
    });
    socket.on("data", (chunk: string) => {
      received += chunk;
      if (received.includes(expect)) finish(ok("expect matched"));
      else if (received.length > MAX_READ) finish(fail("mismatch", "expect mismatch"));
    });
    socket.once("end", () => finish(fail("mismatch", "expect mismatch")));
    socket.on("error", (err) => finish(socketError(connected ? "read" : "connect", err)));
  });
}

/**
 * One datagram out (`send`, may be empty), one reply in that contains `expect` (any reply when unset).
 * A closed port answers with ICMP port unreachable, which a connected socket reports as ECONNREFUSED.
 */
export function probeUdp(target: ProbeTarget, settings: HealthSettings): Promise<ProbeOutcome> {
  const timeoutMs = settings.timeout;
  const expect = settings.expect ?? "";
  return new Promise((resolve) => {
    const socket = dgram.createSocket(net.isIPv6(target.host) ? "udp6" : "udp4");
    const finish = settleOnce(resolve, timeoutMs, () => {
      try {
        socket.close();
      } catch {
        // already closed
      }
    });
    socket.on("error", (err: NodeJS.ErrnoException) => finish(socketError("udp", err)));
    socket.on("message", (msg) => {
      if (expect === "" || msg.toString("latin1").includes(expect)) finish(ok("reply matched"));
      else finish(fail("mismatch", "expect mismatch"));
    });
    socket.connect(target.port, target.host, () => {
      socket.send(Buffer.from(settings.send ?? ""), (err) => {
        if (err) finish(socketError("udp", err));
      });
    });
  });
}
