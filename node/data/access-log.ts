// The access log: one JSON line per finished TCP connection and per ended UDP flow. The data plane only
// checks the switch, the sample and the rate budget, then queues a few numbers and strings; formatting
// and the write happen in a batch on a timer, off the connection's path.
import { createWriteStream, type WriteStream } from "node:fs";
import type client from "prom-client";
import { collectedCounter, collectedTotal } from "../collect.js";

/**
 * Why a connection or flow ended: a fixed vocabulary (as HAProxy's termination states), documented in
 * README "Operating Ballast". Values are stable: alert on them, grep for them.
 */
export const TERMINATIONS = [
  "client-closed", // the client closed first (FIN or close): normal end
  "backend-closed", // the backend closed first: normal end
  "client-aborted", // the client went away before a backend was connected
  "client-reset", // the client's socket failed (reset, error)
  "backend-reset", // the backend reset an established connection
  "connect-failed", // no backend could be connected (every attempt failed, or no backend left to retry)
  "idle-timeout", // nothing moved for timeouts.idle (or timeouts.halfClosed after one side's FIN)
  "drain-timeout", // the backend was drained, disabled or removed and the drain timeout passed
  "backend-down", // the backend's verdict went down and the service has closeOnDown
  "shutdown", // the node stopped (drainTimeout passed on SIGTERM, or close)
  "udp-idle", // a UDP flow saw no datagram for timeouts.udpIdle
  "udp-drain", // a UDP flow ended at the end of the node's drain grace
] as const;
export type Termination = (typeof TERMINATIONS)[number];

/** Maps the reason strings the data plane closes connections with onto the vocabulary. */
export function terminationOf(reason: string): Termination {
  switch (reason) {
    case "idle timeout":
      return "idle-timeout";
    case "drain timeout":
      return "drain-timeout";
    case "backend down":
      return "backend-down";
    case "udp drain":
      return "udp-drain";
    case "udp idle":
      return "udp-idle";
    default:
      return "shutdown";
  }
}

export interface AccessLogOptions {
  enabled: boolean;
  /** Lines per second per node at most; the rest are counted in `suppressed`, not written. */
  ratePerSecond: number;
  /** Share of finished connections logged (0..1), decided before anything is queued. */
  sample: number;
  /** File to append to; empty: standard output, with the node's other logs. */
  path: string;
}

interface Entry {
  service: string;
  protocol: "tcp" | "udp";
  client: string;
  clientPort: number;
  backend: string;
  backendAddress: string;
  start: number;
  end: number;
  bytesIn: number;
  bytesOut: number;
  termination: Termination;
  attempts: number;
}

/** Queued lines beyond this are dropped (counted): a stuck output must not grow the heap. */
const MAX_QUEUED = 10_000;
const FLUSH_MS = 200;

export class AccessLog {
  written = 0;
  suppressed = { rate: 0, sampled: 0, overflow: 0 };
  private opts: AccessLogOptions;
  private queue: Entry[] = [];
  private timer: NodeJS.Timeout | null = null;
  private windowStart = 0;
  private windowCount = 0;
  private readonly out: { write(s: string): unknown; end?(): unknown };

  constructor(
    private readonly node: string,
    opts: AccessLogOptions,
  ) {
    this.opts = { ...opts };
    this.out = opts.path === "" ? process.stdout : (createWriteStream(opts.path, { flags: "a" }) as WriteStream);
  }

  /** Reload: switch, rate and sample apply at once; the path only at start. */
  configure(opts: AccessLogOptions): void {
    this.opts = { ...opts, path: this.opts.path };
  }

  /** Called once per finished connection, before building anything: the switch, the sample, the budget. */
  admit(now: number): boolean {
    const o = this.opts;
    if (!o.enabled) return false;
    if (o.sample < 1 && Math.random() >= o.sample) {
      this.suppressed.sampled++;
      return false;
    }
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.windowCount = 0;
    }
    if (this.windowCount >= o.ratePerSecond) {
      this.suppressed.rate++;
      return false;
    }
    if (this.queue.length >= MAX_QUEUED) {
      this.suppressed.overflow++;
      return false;
    }
    this.windowCount++;
    return true;
  }

  push(e: Entry): void {
    this.queue.push(e);
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Formats and writes the queued lines in one write. */
  flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const q = this.queue;
    if (q.length === 0) return;
    this.queue = [];
    let text = "";
    for (const e of q) {
      text += `${JSON.stringify({
        level: 30,
        time: new Date(e.end).toISOString(),
        node: this.node,
        msg: "access",
        service: e.service,
        protocol: e.protocol,
        client: e.client.includes(":") ? `[${e.client}]:${e.clientPort}` : `${e.client}:${e.clientPort}`,
        backend: e.backend,
        backendAddress: e.backendAddress,
        start: new Date(e.start).toISOString(),
        durationMs: e.end - e.start,
        bytesIn: e.bytesIn,
        bytesOut: e.bytesOut,
        termination: e.termination,
        attempts: e.attempts,
      })}\n`;
    }
    this.written += q.length;
    this.out.write(text);
  }

  close(): void {
    this.flush();
    if (this.out !== process.stdout) this.out.end?.();
  }
}

export function registerAccessLogMetrics(registry: client.Registry, log: AccessLog): void {
  collectedTotal({ name: "ballast_access_log_lines_total", help: "Access log lines written.", registry, value: () => log.written });
  collectedCounter({
    name: "ballast_access_log_suppressed_total",
    help: "Finished connections not logged: rate (over accessLog.ratePerSecond), sampled (left out by accessLog.sample), overflow (output too slow).",
    labelNames: ["reason"],
    registry,
    read: (emit) => {
      for (const [reason, n] of Object.entries(log.suppressed)) emit({ reason }, n);
    },
  });
}
