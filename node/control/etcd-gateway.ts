// A read-only etcd client over etcd's JSON gateway (POST /v3/kv/range on the client URL), for short CLI
// reads such as `ballast status`. Loading etcd3 (gRPC, protobufjs parsing etcd's .proto files) costs
// ~0.5 s of CPU on this machine, more than the reads themselves (issue 19); node:http(s) costs nothing.
// Nodes and every command that writes or watches use EtcdStore. Same options (endpoints tried in turn,
// TLS, user/password), same error codes (StoreError) so the CLI reports both alike.
import { readFileSync } from "node:fs";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { type KeyValue, StoreError } from "./store.js";

export interface EtcdGatewayOptions {
  endpoints: string[];
  username?: string;
  password?: string;
  tls?: { ca?: string; cert?: string; key?: string };
  /** Deadline of each HTTP exchange. */
  timeoutMs?: number;
  /** Keys per range request (paging, as EtcdStore lists). */
  pageSize?: number;
}

/**
 * The endpoint answers, but not as etcd's gateway (404: gateway disabled or an etcd older than 3.4,
 * whose gateway lives under /v3beta; or not JSON): the caller falls back to EtcdStore.
 */
export class GatewayUnavailable extends Error {
  override readonly name = "GatewayUnavailable";
}

interface GatewayKv {
  key: string;
  value?: string;
  mod_revision?: string;
  lease?: string;
}

interface RangeAnswer {
  header?: { revision?: string };
  kvs?: GatewayKv[];
  more?: boolean;
}

/** The first key after every key that starts with `prefix` (etcd's range_end for a prefix). */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

const b64 = (b: Buffer | string) => Buffer.from(b).toString("base64");

export class EtcdGatewayReader {
  private readonly endpoints: string[];
  private readonly timeoutMs: number;
  private readonly pageSize: number;
  private readonly tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } | undefined;
  /** The endpoint that answered last: later calls start there. */
  private current = 0;
  private token: Promise<string | undefined> | undefined;

  constructor(private readonly opts: EtcdGatewayOptions) {
    if (opts.endpoints.length === 0) throw new RangeError("EtcdGatewayReader: endpoints must not be empty");
    this.endpoints = opts.endpoints.map((e) => e.replace(/\/+$/, ""));
    this.timeoutMs = opts.timeoutMs ?? 5_000;
    this.pageSize = opts.pageSize ?? 1_000;
    const t = opts.tls;
    this.tls = t === undefined ? undefined : { ca: t.ca === undefined ? undefined : readFileSync(t.ca), cert: t.cert === undefined ? undefined : readFileSync(t.cert), key: t.key === undefined ? undefined : readFileSync(t.key) };
  }

  /** All keys under `prefix` at one revision, in pages of `pageSize` keys. */
  async list(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }> {
    const rangeEnd = b64(prefixEnd(Buffer.from(prefix)));
    const kvs: KeyValue[] = [];
    let from = Buffer.from(prefix);
    let revision: string | undefined;
    for (;;) {
      const res = (await this.call("/v3/kv/range", { key: b64(from), range_end: rangeEnd, limit: this.pageSize, ...(revision ? { revision } : {}) }, "list")) as RangeAnswer;
      revision ??= res.header?.revision ?? "0";
      const page = res.kvs ?? [];
      for (const kv of page) {
        kvs.push({ key: Buffer.from(kv.key, "base64").toString(), value: Buffer.from(kv.value ?? "", "base64"), modRevision: Number(kv.mod_revision ?? 0), lease: kv.lease ?? "0" });
      }
      const last = page[page.length - 1];
      if (!res.more || last === undefined) break;
      from = Buffer.concat([Buffer.from(last.key, "base64"), Buffer.from([0])]);
    }
    return { kvs, revision: Number(revision) };
  }

  async close(): Promise<void> {
    // Nothing is kept open: each exchange has its own connection (agent: false).
  }

  /** One gateway call, with the auth token when a user is set; endpoints tried in turn on network errors. */
  private async call(path: string, body: unknown, what: string): Promise<unknown> {
    const token = await this.authToken();
    return this.post(path, body, what, token);
  }

  private authToken(): Promise<string | undefined> {
    if (this.opts.username === undefined) return Promise.resolve(undefined);
    this.token ??= this.post("/v3/auth/authenticate", { name: this.opts.username, password: this.opts.password ?? "" }, "authenticate", undefined).then((r) => {
      const t = (r as { token?: unknown }).token;
      if (typeof t !== "string") throw new StoreError("STORE_AUTH", "authenticate: etcd returned no token", false);
      return t;
    });
    return this.token;
  }

  private async post(path: string, body: unknown, what: string, token: string | undefined): Promise<unknown> {
    let lastError: Error | undefined;
    for (let i = 0; i < this.endpoints.length; i++) {
      const at = (this.current + i) % this.endpoints.length;
      let answer: { status: number; text: string };
      try {
        answer = await this.exchange(this.endpoints[at], path, JSON.stringify(body), token);
      } catch (err) {
        lastError = err as Error;
        continue;
      }
      this.current = at;
      let json: { error?: unknown; message?: unknown; code?: unknown } & Record<string, unknown>;
      try {
        json = JSON.parse(answer.text) as typeof json;
      } catch {
        throw new GatewayUnavailable(`${what}: ${this.endpoints[at]}${path} answered ${answer.status}, not JSON`);
      }
      if (answer.status === 404 || answer.status === 405) throw new GatewayUnavailable(`${what}: ${this.endpoints[at]}${path} answered ${answer.status}`);
      if (answer.status !== 200) {
        const message = `${what}: ${String(json.error ?? json.message ?? `HTTP ${answer.status}`)}`;
        // gRPC codes 7 (permission denied) and 16 (unauthenticated); etcd says "authentication failed" for a bad password.
        const auth = json.code === 7 || json.code === 16 || /authentication failed|permission denied|invalid auth token|user name is empty/i.test(message);
        throw new StoreError(auth ? "STORE_AUTH" : "STORE_UNAVAILABLE", message, !auth);
      }
      return json;
    }
    // The socket error alone: the CLI puts the endpoint around it.
    const err = new StoreError("STORE_UNAVAILABLE", lastError?.message ?? "no endpoint answered", true);
    err.cause = lastError;
    throw err;
  }

  private exchange(endpoint: string, path: string, body: string, token: string | undefined): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const url = new URL(path, endpoint);
      const headers: Record<string, string> = { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) };
      if (token) headers.authorization = token;
      const onAnswer = (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") });
        });
      };
      const req =
        url.protocol === "https:"
          ? httpsRequest(url, { method: "POST", headers, agent: false, ca: this.tls?.ca, cert: this.tls?.cert, key: this.tls?.key }, onAnswer)
          : httpRequest(url, { method: "POST", headers, agent: false }, onAnswer);
      const timer = setTimeout(() => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      req.on("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.end(body);
    });
  }
}
