// Spoofed UDP datagrams on loopback, as an attacker on the path would send them: a raw IPv4 socket
// (root) writes the IP and UDP headers itself, so the source address and port are whatever the test
// says (port 0, a backend's own address:port, a broadcast address). Python's socket module does the
// raw send; Node has no raw sockets. Only 127.0.0.0/8 destinations.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";

const run = promisify(execFile);
// Debian's interpreter directly: a version-manager shim on PATH adds seconds on a loaded machine.
const PYTHON = existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";

const SCRIPT = `
import socket, struct, sys
src, sport, dport, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data   # checksum 0: none (IPv4)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton("127.0.0.1"))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, ("127.0.0.1", 0))
`;

/** Sends one datagram to 127.0.0.1:`dstPort` that appears to come from `srcAddress`:`srcPort`. */
export async function spoofUdp(opts: { srcAddress: string; srcPort: number; dstPort: number; payload: string }): Promise<void> {
  if (!opts.srcAddress.startsWith("127.")) throw new Error("spoofUdp: loopback sources only");
  await run(PYTHON, ["-c", SCRIPT, opts.srcAddress, String(opts.srcPort), String(opts.dstPort), opts.payload], { timeout: 30_000 });
}
