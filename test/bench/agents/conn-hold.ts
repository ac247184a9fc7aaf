// Opens idle TCP connections to one address from rotating loopback source addresses and holds them.
// Pauses at each step (prints {"step":N,...}) until SIGUSR2, so the harness can read memory there.
import net from "node:net";
import { loopbackAddress, parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const port = Number(args.port);
const host = args.host ?? "127.0.0.1";
const steps = (args.steps ?? "1000").split(",").map(Number).sort((a, b) => a - b);
const sources = Number(args.sources ?? 8);
// 127.0.0.2 … (127.0.0.1 stays with the load tools).
const firstSource = 0x000002 + Number(args.sourceOffset ?? 0);
const concurrency = Number(args.concurrency ?? 256);
const deadline = Date.now() + Number(args.timeoutMs ?? 120_000);

const sockets: net.Socket[] = [];
let open = 0;
let failed = 0;
let started = 0;
let lastError = "";

function openOne(): Promise<boolean> {
  return new Promise((resolve) => {
    const localAddress = loopbackAddress(firstSource, started % sources);
    started++;
    const s = net.connect({ port, host, localAddress });
    let done = false;
    const finish = (ok: boolean, err?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (ok) {
        open++;
        sockets.push(s);
        s.on("close", () => open--);
      } else {
        failed++;
        if (err) lastError = err;
        s.destroy();
      }
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false, "no greeting from backend within 5 s"), 5000);
    // The backend's one-byte greeting proves the proxy connected through.
    s.once("data", () => finish(true));
    s.once("error", (e) => finish(false, (e as NodeJS.ErrnoException).code ?? e.message));
    s.once("close", () => finish(false, "closed before greeting"));
  });
}

async function fillTo(target: number): Promise<void> {
  let consecutiveFailures = 0;
  const workers: Promise<void>[] = [];
  for (let w = 0; w < concurrency; w++) {
    workers.push(
      (async () => {
        while (open + inflight() < target && consecutiveFailures < 200 && Date.now() < deadline) {
          pending++;
          const ok = await openOne();
          pending--;
          consecutiveFailures = ok ? 0 : consecutiveFailures + 1;
        }
      })(),
    );
  }
  await Promise.all(workers);
}

let pending = 0;
const inflight = () => pending;

let resume: (() => void) | null = null;
process.on("SIGUSR2", () => {
  resume?.();
  resume = null;
});

for (const step of steps) {
  await fillTo(step);
  report({ step, open, failed, lastError });
  if (open < step) {
    report({ done: true, open, failed, lastError, reason: "could not reach step" });
    break;
  }
  await new Promise<void>((r) => {
    resume = r;
  });
}
report({ done: true, open, failed, lastError });
// Hold until killed.
setInterval(() => {}, 1 << 30);
