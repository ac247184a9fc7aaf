// Prometheus metrics of the DNS responder, read from its plain counters at scrape time.
import type client from "prom-client";
import { collectedCounter, collectedTotal, collectedValue } from "../collect.js";
import type { DnsResponder } from "./responder.js";

export function registerDnsMetrics(registry: client.Registry, dns: DnsResponder): void {
  collectedCounter({
    name: "ballast_dns_queries_total",
    help: "DNS queries answered (or dropped by RRL after being read), by query type and response code.",
    labelNames: ["type", "rcode"],
    registry,
    read: (emit) => {
      for (const [key, n] of dns.stats.queries) {
        const bar = key.indexOf("|");
        emit({ type: key.slice(0, bar), rcode: key.slice(bar + 1) }, n);
      }
    },
  });
  const total = (name: string, help: string, value: () => number) => collectedTotal({ name, help, registry, value });
  total("ballast_dns_answers_total", "Address records (A/AAAA) sent in answers.", () => dns.stats.answers);
  total("ballast_dns_cache_hits_total", "Queries answered from the reply cache of the current view (same query bytes, same client rotation): no decode, no encode.", () => dns.cache.hits);
  total("ballast_dns_truncated_total", "UDP replies truncated (TC) because they did not fit; the client retries over TCP.", () => dns.stats.truncated);
  total("ballast_dns_dropped_total", "Datagrams or frames that were not DNS queries (too short, responses): dropped unanswered.", () => dns.stats.dropped);
  total("ballast_dns_tcp_connections_total", "DNS TCP connections accepted.", () => dns.stats.tcpConnections);
  total("ballast_dns_tcp_refused_total", "DNS TCP connections refused at dns.maxTcpConnections.", () => dns.stats.tcpRefused);
  collectedCounter({
    name: "ballast_dns_rrl_total",
    help: "UDP replies held back by response rate limiting: dropped, or sent truncated (slip).",
    labelNames: ["action"],
    registry,
    read: (emit) => {
      emit({ action: "drop" }, dns.stats.rrlDropped);
      emit({ action: "slip" }, dns.stats.rrlSlipped);
    },
  });
  collectedValue({ name: "ballast_dns_rrl_sources", help: "Source prefixes RRL tracks now (bounded by dns.rrl.maxSources).", registry, value: () => dns.rrl.size });
  collectedValue({
    name: "ballast_dns_live_nodes",
    help: "Nodes the DNS view answers with (registered, ready, not draining, with a public address).",
    registry,
    value: () => dns.view?.nodes.filter((n) => n.live).length ?? 0,
  });
}
