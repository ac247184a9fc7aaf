// The admin HTTP server: /metrics, /healthz, /readyz, /api/state, /api/summary, /api/route, and the status page.
// Bound to 127.0.0.1 by default; with a token, everything but /healthz, /readyz and the status page
// shell needs `Authorization: Bearer <token>` (probes and a static page carry no secrets).
//
// Also: the Host header must name this node (an IP literal, localhost, or a configured name), so a
// web page whose DNS name was rebound to 127.0.0.1 cannot read a token-less API from the operator's
// browser; /api/state is built at most once per STATE_CACHE_MS and sent compact; admin connections
// are capped (they share the process's file descriptors with the data plane); the token is compared
// in constant time; every answer says nosniff.
import { createHash, timingSafeEqual } from "node:crypto";
import http from "node:http";
import { type AddressInfo, isIP } from "node:net";
import { formatHostPort, parseHostPort } from "../../shared/address.js";
import type { ApiError, NodeSummaryView, RouteAnswer, StateView } from "../../shared/api.js";

/** Pollers (status pages, scrapers of /api/state) share one build of the state per this interval. */
export const STATE_CACHE_MS = 250;

export interface AdminOptions {
  /** Host names (besides IP literals and localhost) the API answers to: the advertised and listen names. */
  allowedHosts?: readonly string[];
  /** Open admin connections at most (further ones are closed at once). */
  maxConnections?: number;
}

export interface AdminApi {
  ready(): boolean;
  state(): StateView;
  /** GET /api/summary: this node's own figures, in a size independent of the cluster's (node/admin/summary.ts). */
  summary?(): NodeSummaryView;
  route(service: string, client: string, port: number): { status: number; body: RouteAnswer | ApiError };
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Optional extra GET routes (status page assets, later features): path → handler. */
  pages?: Map<string, () => { contentType: string; body: string | Buffer }>;
  /**
   * Paths of `pages` that hold no cluster data (the status page shell), served without the token: a
   * browser cannot put a header on a navigation. Whatever the page then fetches needs the token.
   */
  publicPages?: ReadonlySet<string>;
  /**
   * Changes whenever /api/state would change other than in its live counters (revision applied,
   * readiness, mode): a cached state is reused only while this stays the same.
   */
  stateKey?(): string;
  /** Whether a page from this browser origin (another node's status page) may read /api/state and /api/summary (CORS). */
  allowOrigin?(origin: string): boolean;
}

export class AdminServer {
  readonly server: http.Server;
  address = "";
  private readonly tokenHash: Buffer | null;
  private readonly allowedHosts: Set<string>;
  private stateCache: { at: number; key: string; json: string } | null = null;

  constructor(
    private readonly api: AdminApi,
    token: string | undefined,
    opts: AdminOptions = {},
  ) {
    this.tokenHash = token === undefined ? null : sha256(token);
    this.allowedHosts = new Set(["localhost", ...(opts.allowedHosts ?? [])].map((h) => h.toLowerCase()));
    this.server = http.createServer((req, res) => {
      res.setHeader("x-content-type-options", "nosniff");
      this.handle(req, res).catch((err: Error) => send(res, 500, { error: err.message }));
    });
    this.server.keepAliveTimeout = 5000;
    this.server.maxConnections = opts.maxConnections ?? 64;
  }

  /** Whether the Host header names this node: an IP literal, localhost, or an allowed name (any port). */
  hostAllowed(host: string | undefined): boolean {
    if (host === undefined || host === "") return false;
    let name = host;
    if (name.startsWith("[")) {
      const end = name.indexOf("]");
      if (end < 0) return false;
      name = name.slice(1, end);
    } else {
      const colon = name.lastIndexOf(":");
      if (colon >= 0 && name.indexOf(":") === colon) name = name.slice(0, colon);
    }
    if (isIP(name) !== 0) return true;
    const lower = name.toLowerCase();
    return this.allowedHosts.has(lower.endsWith(".") ? lower.slice(0, -1) : lower);
  }

  private authorized(header: string | undefined): boolean {
    if (this.tokenHash === null) return true;
    // Hashes have one length, so timingSafeEqual never sees two lengths and the compare time says nothing.
    return typeof header === "string" && header.startsWith("Bearer ") && timingSafeEqual(sha256(header.slice(7)), this.tokenHash);
  }

  listen(listen: string): Promise<string> {
    const hp = parseHostPort(listen)!;
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(hp.port, hp.host, () => {
        this.server.off("error", reject);
        const a = this.server.address() as AddressInfo;
        this.address = formatHostPort(a.address, a.port);
        resolve(this.address);
      });
    });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://admin");
    const path = url.pathname;
    // CORS for /api/state and /api/summary only, and only for origins the node vouches for (other nodes'
    // status pages, which read every peer's summary).
    const origin = req.headers.origin;
    const cors = (path === "/api/state" || path === "/api/summary") && origin !== undefined && this.api.allowOrigin?.(origin) === true;
    if (cors) res.setHeader("access-control-allow-origin", origin!).setHeader("vary", "Origin");
    if (cors && req.method === "OPTIONS") {
      // The preflight of a GET carrying the token: it never carries the token itself, and answers no data.
      res.writeHead(204, { "access-control-allow-methods": "GET", "access-control-allow-headers": "authorization", "access-control-max-age": "600" });
      res.end();
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") return send(res, 405, { error: "method not allowed" });
    if (path === "/healthz") return text(res, 200, "ok\n");
    if (path === "/readyz") return this.api.ready() ? text(res, 200, "ready\n") : text(res, 503, "not ready\n");
    // Probes above carry nothing; everything below only to requests addressed to this node by name.
    if (!this.hostAllowed(req.headers.host)) return send(res, 403, { error: "host not allowed (add it to admin.allowedHosts)" });
    if (this.api.publicPages?.has(path)) return this.page(res, path);
    if (!this.authorized(req.headers.authorization)) {
      res.setHeader("WWW-Authenticate", 'Bearer realm="ballast"');
      return send(res, 401, { error: "missing or wrong bearer token" });
    }
    switch (path) {
      case "/metrics": {
        const m = await this.api.metrics();
        res.writeHead(200, { "content-type": m.contentType });
        res.end(m.body);
        return;
      }
      case "/api/state": {
        const now = Date.now();
        const key = this.api.stateKey?.() ?? "";
        let c = this.stateCache;
        if (c === null || c.key !== key || now - c.at >= STATE_CACHE_MS || now < c.at) {
          c = { at: now, key, json: JSON.stringify(this.api.state()) };
          this.stateCache = c;
        }
        return sendJson(res, 200, c.json);
      }
      case "/api/summary":
        if (!this.api.summary) return send(res, 404, { error: `no such endpoint ${path}` });
        // Small and cheap: built per request (a status page at 1000 nodes asks each node every few seconds).
        return send(res, 200, this.api.summary());
      case "/api/route": {
        const service = url.searchParams.get("service");
        const client = url.searchParams.get("client");
        if (!service || !client) return send(res, 400, { error: "need ?service=NAME&client=IP[&port=N]" });
        const port = Number(url.searchParams.get("port") ?? "0");
        const r = this.api.route(service, client, Number.isInteger(port) && port >= 0 && port <= 65535 ? port : 0);
        return send(res, r.status, r.body);
      }
      default:
        return this.page(res, path);
    }
  }

  private page(res: http.ServerResponse, path: string): void {
    const page = this.api.pages?.get(path);
    if (!page) {
      send(res, 404, { error: `no such endpoint ${path}` });
      return;
    }
    const p = page();
    res.writeHead(200, { "content-type": p.contentType, "cache-control": "no-cache" });
    res.end(p.body);
  }
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  sendJson(res, status, JSON.stringify(body));
}

function sendJson(res: http.ServerResponse, status: number, json: string): void {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-cache" });
  res.end(json);
}

function sha256(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

function text(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8" });
  res.end(body);
}
