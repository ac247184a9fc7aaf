#!/usr/bin/env bash
# A/B of the DNS responder between two builds (for a change to node/dns/): one etcd on loopback, then
# per round one node of each build in turn with the setup of test/bench/dns.ts (zone bench.test, TTL 5,
# RRL off, `dnsperf -c 1 -q 100` from one source for D seconds) and dnsmasq answering the same name as
# the reference. Prints queries/s and the server's CPU per answered query (utime+stime of its process
# over the run): on a shared machine qps swings with the load, CPU per query much less.
#
#   bash test/bench/dns-ab.sh DIST_A DIST_B        # e.g. dist and a copy of dist built before the change
#   ROUNDS=5 D=6 RATE=8000 bash test/bench/dns-ab.sh …   # RATE: dnsperf -Q (fixed rate) instead of flat out
set -u
A=${1:?usage: dns-ab.sh DIST_A DIST_B}; B=${2:?usage: dns-ab.sh DIST_A DIST_B}
D=${D:-10}; ROUNDS=${ROUNDS:-3}
for tool in etcd etcdctl dnsperf dig; do command -v $tool >/dev/null || { echo "dns-ab.sh: $tool missing" >&2; exit 1; }; done
W=$(mktemp -d /tmp/ballast-dns-ab.XXXXXX)
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
EP=$(free_port); PP=$(free_port); DNSP=$(free_port); AP=$(free_port); MP=$(free_port)
ETCD=; NODE=; MASQ=
trap 'for p in $NODE $MASQ $ETCD; do kill $p 2>/dev/null; done; rm -rf "$W"' EXIT
etcd --data-dir $W/etcd --listen-client-urls http://127.0.0.1:$EP --advertise-client-urls http://127.0.0.1:$EP \
  --listen-peer-urls http://127.0.0.1:$PP --initial-advertise-peer-urls http://127.0.0.1:$PP --initial-cluster ab=http://127.0.0.1:$PP --name ab >$W/etcd.log 2>&1 &
ETCD=$!
ctl() { ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:$EP "$@" >/dev/null; }
for _ in $(seq 100); do ctl endpoint health 2>/dev/null && break; sleep 0.2; done
ctl put /ballast/ab/services/web '{"listen":"127.0.0.1:0","health":{"type":"none"}}' || { echo "dns-ab.sh: etcd did not start: $W/etcd.log" >&2; exit 1; }
ctl put /ballast/ab/dns '{"zone":"bench.test","ttl":5}'
echo "web.bench.test A" >$W/q.txt
answers() { [ "$(dig @127.0.0.1 -p $1 web.bench.test +short +time=1 +tries=1 2>/dev/null)" = 127.0.0.11 ]; }
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
perf() { # port pid
  local t0 t1 out q
  t0=$(ticks $2)
  out=$(dnsperf -s 127.0.0.1 -p $1 -d $W/q.txt -l $D -c 1 -q 100 -t 2 ${RATE:+-Q $RATE} 2>&1)
  t1=$(ticks $2)
  q=$(echo "$out" | awk '/Queries completed/{print $3}')
  echo "$(echo "$out" | awk '/Queries per second/{printf "%.0f qps", $4}'), $(((t1 - t0) * 1000000 / $(getconf CLK_TCK) / (q > 0 ? q : 1))) µs CPU/query ($q answered)"
}
for r in $(seq $ROUNDS); do
  for dist in "$A" "$B"; do
    printf 'node: { id: ab, publicAddresses: [127.0.0.11] }\ncluster: ab\nadmin: { listen: "127.0.0.1:%s" }\nlog: { level: warn }\naccessLog: { enabled: false }\netcd: { endpoints: ["http://127.0.0.1:%s"] }\ndns: { listen: "127.0.0.1:%s", rrl: { responsesPerSecond: 0 } }\n' $AP $EP $DNSP >$W/node.yaml
    node "$dist/node/cli.js" node --config $W/node.yaml >$W/node.log 2>&1 &
    NODE=$!
    for _ in $(seq 100); do answers $DNSP && break; sleep 0.2; done
    echo "round $r  $dist: $(perf $DNSP $NODE)"
    kill $NODE; wait $NODE 2>/dev/null; NODE=
  done
  if command -v dnsmasq >/dev/null; then
    dnsmasq -k -p $MP --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts --address=/web.bench.test/127.0.0.11 --log-facility=- >$W/dnsmasq.log 2>&1 &
    MASQ=$!
    for _ in $(seq 50); do answers $MP && break; sleep 0.2; done
    echo "round $r  dnsmasq: $(perf $MP $MASQ)"
    kill $MASQ; wait $MASQ 2>/dev/null; MASQ=
  fi
done
