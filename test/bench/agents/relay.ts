// A byte relay between a TCP address and a Unix socket, so the bench (host namespace) and processes in
// a namespace it made can talk without a link into the host namespace: the socket file lives in the
// shared filesystem. `--listen tcp:127.0.0.1:2379 --to unix:/tmp/x.sock` or the other way round. Used
// for control traffic only (etcd, the admin API), never for measured traffic.
import { rmSync } from "node:fs";
import net from "node:net";
import { parseArgs, report, splice } from "./args.js";

type Address = { path: string } | { host: string; port: number };

function parse(spec: string): Address {
  if (spec.startsWith("unix:")) return { path: spec.slice(5) };
  const m = /^tcp:(.+):(\d+)$/.exec(spec);
  if (!m) throw new Error(`bad address ${spec}: want unix:PATH or tcp:HOST:PORT`);
  return { host: m[1], port: Number(m[2]) };
}

const args = parseArgs(process.argv.slice(2));
const listen = parse(args.listen ?? "");
const to = parse(args.to ?? "");
const server = net.createServer((inbound) => {
  splice(inbound, net.connect(to as net.NetConnectOpts));
});
server.on("error", (err) => {
  report({ error: err.message });
  process.exit(1);
});
// A socket file left by an earlier relay of the same name would make listen fail with EADDRINUSE.
if ("path" in listen) rmSync(listen.path, { force: true });
server.listen(listen as net.ListenOptions, () => report({ ready: true }));
