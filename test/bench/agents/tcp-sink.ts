// TCP sink backend for idle-connection and affinity runs: greets each connection with one byte (so a
// client knows the proxy reached the backend), discards input, holds the connection open.
import net from "node:net";
import { parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const ports = (args.ports ?? "").split(",").filter(Boolean).map(Number);
// 0.0.0.0 in a backend namespace (every backend address of the namespace answers); loopback otherwise.
const host = args.host ?? "127.0.0.1";
const greeting = Buffer.from("+");
let open = 0;
let accepted = 0;
let reported = -1;
let listening = 0;
for (const port of ports) {
  const server = net.createServer((s) => {
    open++;
    accepted++;
    s.on("error", () => s.destroy());
    s.on("close", () => open--);
    s.resume();
    s.write(greeting);
  });
  server.maxConnections = 1 << 20;
  server.on("error", (err) => report({ error: err.message }));
  server.listen({ port, host, backlog: 4096 }, () => {
    if (++listening === ports.length) report({ ready: true, ports });
  });
}
setInterval(() => {
  if (open !== reported) {
    reported = open;
    report({ open, accepted });
  }
}, 250);
