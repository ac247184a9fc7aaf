// Opens one short connection from each of `count` distinct loopback source addresses (127.<block>.x.y),
// waiting for the backend greeting before closing: every connection creates one affinity entry.
import net from "node:net";
import { loopbackAddress, parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const port = Number(args.port);
const host = args.host ?? "127.0.0.1";
const count = Number(args.count ?? 1000);
const first = Number(args.first ?? 0x010000);
const concurrency = Number(args.concurrency ?? 128);
const deadline = Date.now() + Number(args.timeoutMs ?? 60_000);
const t0 = Date.now();

let next = 0;
let done = 0;
let failed = 0;
let lastError = "";

function one(i: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host, localAddress: loopbackAddress(first, i) });
    let finished = false;
    const finish = (ok: boolean, err?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (ok) done++;
      else {
        failed++;
        if (err) lastError = err;
      }
      s.destroy();
      resolve();
    };
    const timer = setTimeout(() => finish(false, "timeout"), 5000);
    s.once("data", () => finish(true));
    s.once("error", (e) => finish(false, (e as NodeJS.ErrnoException).code ?? e.message));
    s.once("close", () => finish(false, "closed before greeting"));
  });
}

const progress = setInterval(() => report({ progress: true, done, failed, elapsedMs: Date.now() - t0 }), 1000);
const workers: Promise<void>[] = [];
for (let w = 0; w < concurrency; w++) {
  workers.push(
    (async () => {
      while (next < count && Date.now() < deadline) await one(next++);
    })(),
  );
}
await Promise.all(workers);
clearInterval(progress);
report({ done, failed, lastError, elapsedMs: Date.now() - t0, complete: true });
