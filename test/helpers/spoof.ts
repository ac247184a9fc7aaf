// Spoofed UDP datagrams on loopback, as an attacker on the path would send them: a raw IPv4 socket
// (root) writes the IP and UDP headers itself, so the source address and port are whatever the test
// says (port 0, a backend's own address:port, a broadcast address). Python's socket module does the
// raw send; Node has no raw sockets. Only 127.0.0.0/8 destinations.
import { execFileSync } from "node:child_process";

const SCRIPT = `
import socket, struct, sys
src, sport, dport, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data   # checksum 0: none (IPv4)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton("127.0.0.1"))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, ("127.0.0.1", 0))
`;

/** Sends one datagram to 127.0.0.1:`dstPort` that appears to come from `srcAddress`:`srcPort`. */
export function spoofUdp(opts: { srcAddress: string; srcPort: number; dstPort: number; payload: string }): void {
  if (!opts.srcAddress.startsWith("127.")) throw new Error("spoofUdp: loopback sources only");
  execFileSync("python3", ["-c", SCRIPT, opts.srcAddress, String(opts.srcPort), String(opts.dstPort), opts.payload], { stdio: ["ignore", "ignore", "inherit"], timeout: 5_000 });
}
