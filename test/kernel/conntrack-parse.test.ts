import { describe, expect, it } from "vitest";
import { countByReplySource } from "../../node/kernel/conntrack.js";

// `conntrack -L` lines as conntrack-tools 1.4.7 prints them (IPv4 and IPv6, TCP and UDP, with and
// without flags between the two directions).
const OUT = [
  "tcp      6 431999 ESTABLISHED src=10.77.1.2 dst=10.77.3.1 sport=44144 dport=80 src=10.77.2.2 dst=10.77.2.1 sport=80 dport=44144 [ASSURED] mark=0 use=1",
  "tcp      6 431998 ESTABLISHED src=10.77.1.2 dst=10.77.3.1 sport=44146 dport=80 src=10.77.2.3 dst=10.77.2.1 sport=8080 dport=44146 [ASSURED] mark=0 use=1",
  "udp      17 29 src=10.77.1.2 dst=10.77.3.1 sport=5000 dport=53 [UNREPLIED] src=10.77.2.2 dst=10.77.2.1 sport=53 dport=5000 mark=0 use=1",
  "tcp      6 431999 ESTABLISHED src=fd77:1::2 dst=fd77:9::1 sport=40000 dport=80 src=fd77:2::10 dst=fd77:2::1 sport=80 dport=40000 [ASSURED] mark=0 use=1",
  "tcp      6 431999 ESTABLISHED src=10.77.1.2 dst=10.77.3.1 sport=44148 dport=80 src=10.77.2.2 dst=10.77.2.1 sport=80 dport=44148 [ASSURED] mark=0 use=1",
  "a line without a reply direction src=10.0.0.1 sport=1",
  "",
].join("\n");

describe("conntrack output", () => {
  it("counts flows per backend by the reply direction's source address and port", () => {
    expect(Object.fromEntries(countByReplySource(OUT))).toEqual({
      "10.77.2.2|80": 2,
      "10.77.2.3|8080": 1,
      "10.77.2.2|53": 1,
      "fd77:2::10|80": 1,
    });
  });

  it("an empty listing and a last line without a newline", () => {
    expect(countByReplySource("").size).toBe(0);
    expect(Object.fromEntries(countByReplySource(OUT.split("\n")[0]))).toEqual({ "10.77.2.2|80": 1 });
  });
});
