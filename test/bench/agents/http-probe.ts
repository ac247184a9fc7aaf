// Waits until GET `--url` answers 200 (polling, up to --timeoutMs), run inside the client namespace so
// every path is checked from where the load comes from. Prints {"ok":true} or {"ok":false,"last":…}.
import http from "node:http";
import { parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const url = args.url ?? "";
const end = Date.now() + Number(args.timeoutMs ?? 15_000);

function get(): Promise<string> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 1000, agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(String(res.statusCode)));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err) => resolve(err.message));
  });
}

let last = "";
while (Date.now() < end) {
  last = await get();
  if (last === "200") {
    report({ ok: true });
    process.exit(0);
  }
  await new Promise((r) => setTimeout(r, 100));
}
report({ ok: false, last });
process.exit(1);
