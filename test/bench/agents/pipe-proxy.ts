// The floor of a Node.js TCP proxy, for `npm run bench:workers` (issue 18): what the runtime itself
// costs per request, per connection and per GB before any product logic. One process, one event loop:
// accept, connect to the next backend (round-robin), pipe both ways, destroy both on error or close.
// No health, no metrics, no limits, no access log, no affinity: each of those is Ballast's to answer
// for; what this costs is not. Ballast's CPU ÷ this one's says how much of the gap to HAProxy is ours.
//   --listen PORT:B1,B2[;PORT:B1,...]  services on 127.0.0.1, each with its backend ports
import net from "node:net";
import { parseArgs, report, splice } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const services = (args.listen ?? "").split(";").filter(Boolean).map((s) => {
  const [port, to] = s.split(":");
  return { port: Number(port), backends: to.split(",").map(Number) };
});
let listening = 0;
for (const svc of services) {
  let next = 0;
  const server = net.createServer({ noDelay: true }, (client) => {
    const port = svc.backends[next];
    next = (next + 1) % svc.backends.length;
    splice(client, net.connect({ port, host: "127.0.0.1", noDelay: true }));
  });
  server.on("error", (err) => report({ error: err.message }));
  server.listen({ port: svc.port, host: "127.0.0.1", backlog: 4096 }, () => {
    if (++listening === services.length) report({ ready: true });
  });
}
