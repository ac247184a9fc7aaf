// Fallback HTTP backend when nginx is not installed: answers every request with a 2-byte body, keep-alive.
import http from "node:http";
import { parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const ports = (args.ports ?? "").split(",").filter(Boolean).map(Number);
const host = args.host ?? "127.0.0.1";
const body = Buffer.from("ok");
let listening = 0;
for (const port of ports) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
    res.end(body);
    req.resume();
  });
  server.keepAliveTimeout = 300_000;
  server.listen(port, host, () => {
    if (++listening === ports.length) report({ ready: true, ports });
  });
}
