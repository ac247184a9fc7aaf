// The admin HTTP server: /metrics, /healthz, /readyz, /api/state, /api/route, and the status page.
// Bound to 127.0.0.1 by default; with a token, everything but /healthz, /readyz and the status page
// shell needs `Authorization: Bearer <token>` (probes and a static page carry no secrets).
import http from "node:http";
import type { AddressInfo } from "node:net";
import { formatHostPort, parseHostPort } from "../../shared/address.js";
import type { ApiError, RouteAnswer, StateView } from "../../shared/api.js";

export interface AdminApi {
  ready(): boolean;
  state(): StateView;
  route(service: string, client: string, port: number): { status: number; body: RouteAnswer | ApiError };
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Optional extra GET routes (status page assets, later features): path → handler. */
  pages?: Map<string, () => { contentType: string; body: string | Buffer }>;
  /**
   * Paths of `pages` that hold no cluster data (the status page shell), served without the token: a
   * browser cannot put a header on a navigation. Whatever the page then fetches needs the token.
   */
  publicPages?: ReadonlySet<string>;
  /** Whether a page from this browser origin (another node's status page) may read /api/state (CORS). */
  allowOrigin?(origin: string): boolean;
}

export class AdminServer {
  readonly server: http.Server;
  address = "";

  constructor(
    private readonly api: AdminApi,
    private readonly token: string | undefined,
  ) {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => send(res, 500, { error: err.message }));
    });
    this.server.keepAliveTimeout = 5000;
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
    // CORS for /api/state only, and only for origins the node vouches for (other nodes' status pages).
    const origin = req.headers.origin;
    const cors = path === "/api/state" && origin !== undefined && this.api.allowOrigin?.(origin) === true;
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
    if (this.api.publicPages?.has(path)) return this.page(res, path);
    if (this.token !== undefined && req.headers.authorization !== `Bearer ${this.token}`) {
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
      case "/api/state":
        return send(res, 200, this.api.state());
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
  const json = JSON.stringify(body, null, 1);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-cache" });
  res.end(json);
}

function text(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8" });
  res.end(body);
}
