// UDP echo backend. Also accepts TCP on the same port numbers so the default (tcp) health check passes.
import dgram from "node:dgram";
import net from "node:net";
import { parseArgs, report } from "./args.js";

const args = parseArgs(process.argv.slice(2));
const ports = (args.ports ?? "").split(",").filter(Boolean).map(Number);
let ready = 0;
const total = ports.length * 2;
const up = () => {
  if (++ready === total) report({ ready: true, ports });
};
for (const port of ports) {
  const sock = dgram.createSocket({ type: "udp4", recvBufferSize: 8 << 20, sendBufferSize: 8 << 20 });
  sock.on("message", (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
  sock.on("error", (err) => report({ error: err.message }));
  sock.bind(port, "127.0.0.1", up);
  const tcp = net.createServer((s) => {
    s.on("error", () => s.destroy());
    s.resume();
  });
  tcp.listen(port, "127.0.0.1", up);
}
