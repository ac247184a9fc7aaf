#!/bin/sh
# The anycast router: BIRD accepting BGP from every Ballast node on FABRIC and installing one ECMP
# route per VIP in the kernel table; the kernel forwards client traffic for the VIPs over it, hashing
# by L4 tuple. Needs NET_ADMIN and, set by the container runtime (/proc/sys is read-only inside):
#   net.ipv4.ip_forward=1  net.ipv4.fib_multipath_hash_policy=1
#   net.ipv4.conf.all.rp_filter=0  net.ipv4.conf.default.rp_filter=0
#
#   FABRIC      the nodes' network, a CIDR of /24 or longer (required)
#   VIP_RANGE   prefix VIPs are accepted from, default 10.99.0.0/24
#   VIP_RANGE6  IPv6 prefix IPv6 VIPs (/128) are accepted from, e.g. 2001:db8:99::/64; empty: no IPv6.
#               Needs net.ipv6.conf.all.forwarding=1. STICKY pins IPv4 connections only.
#   RENDER_ONLY 1: write the BIRD config to $CONF (ROUTER_ID may be given) and exit, touching nothing
#   LOCAL_AS    default 65000; PEER_AS default 65010; BFD on|off (on)
#   STICKY      1 (default): pin each connection to the node its first packet was hashed to, through
#               conntrack, so a route change (a node withdrawn, added, or failed) moves only new
#               connections and a draining node finishes its open ones. 0: plain stateless ECMP, where
#               a change rehashes some open connections onto other nodes (as any stateless router would).
set -eu
# busybox sh runs its own applets before PATH; its ip lacks multipath, rules and -batch.
if [ -x /usr/sbin/ip ]; then ip() { /usr/sbin/ip "$@"; }; fi

: "${FABRIC:?set FABRIC}"
VIP_RANGE=${VIP_RANGE:-10.99.0.0/24}
LOCAL_AS=${LOCAL_AS:-65000}
PEER_AS=${PEER_AS:-65010}
BFD=${BFD:-on}
STICKY=${STICKY:-1}
CONF=${CONF:-/run/bird/bird-router.conf}
VIP_RANGE6=${VIP_RANGE6:-}
SOCK=${SOCK:-/run/bird/bird.ctl}
TEMPLATE=${TEMPLATE:-/etc/ballast-anycast/bird-router.conf.in}

sysctls="net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 net.ipv4.conf.all.rp_filter=0"
[ -z "$VIP_RANGE6" ] || sysctls="$sysctls net.ipv6.conf.all.forwarding=1 net.ipv6.fib_multipath_hash_policy=1"
[ "${RENDER_ONLY:-0}" = 1 ] && sysctls=""
for s in $sysctls; do
  key=${s%=*}; want=${s#*=}
  have=$(cat "/proc/sys/$(echo "$key" | tr . /)")
  [ "$have" = "$want" ] || echo "anycast-router: warning: $key is $have, want $want (docker run --sysctl $s)" >&2
done

# The route to FABRIC's first host names the interface and our address: "10.97.0.1 dev eth0 src 10.97.0.2".
if [ -z "${ROUTER_ID:-}" ]; then
  first_host=$(echo "${FABRIC%/*}" | awk -F. '{ printf "%d.%d.%d.%d", $1, $2, $3, $4 + 1 }')
  fabric_route=$(ip -4 route get "$first_host" | head -n1)
  FABRIC_DEV=$(echo "$fabric_route" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
  ROUTER_ID=$(echo "$fabric_route" | sed -n 's/.* src \([0-9.]*\).*/\1/p')
  [ -n "$FABRIC_DEV" ] && [ -n "$ROUTER_ID" ] || { echo "anycast-router: not attached to $FABRIC" >&2; exit 1; }
fi

kernel6=""
channel6=""
if [ -n "$VIP_RANGE6" ]; then
  # IPv6 VIPs arrive over the same sessions (MP-BGP) and become ECMP routes in the kernel's IPv6 table.
  kernel6="protocol kernel kernel6 {\n  ipv6 {\n    import none;\n    export all;\n  };\n  merge paths on;\n  persist off;\n}\n"
  channel6="  ipv6 {\n    import where net ~ [ $VIP_RANGE6{128,128} ];\n    export none;\n  };\n"
fi
mkdir -p "$(dirname "$CONF")"
awk -v kernel6="$kernel6" -v channel6="$channel6" '
  /@KERNEL6_PROTOCOL@/ { printf "%s", kernel6; next }
  /@IPV6_CHANNEL@/ { sub(/@IPV6_CHANNEL@/, ""); printf "%s", channel6; print; next }
  { print }' "$TEMPLATE" |
  sed -e "s|@ROUTER_ID@|$ROUTER_ID|" -e "s|@FABRIC@|$FABRIC|" -e "s|@VIP_RANGE@|$VIP_RANGE|" \
      -e "s|@LOCAL_AS@|$LOCAL_AS|" -e "s|@PEER_AS@|$PEER_AS|" -e "s|@BFD@|$BFD|" >"$CONF"
[ "${RENDER_ONLY:-0}" = 1 ] && exit 0

mkdir -p "$(dirname "$SOCK")"
# With no node announcing, VIP traffic is refused here rather than sent anywhere else.
ip route replace unreachable "$VIP_RANGE"
[ -z "$VIP_RANGE6" ] || ip -6 route replace unreachable "$VIP_RANGE6"
# Nodes, clients and router may share one segment (a one-armed router: on docker bridge networks only
# traffic inside the subnet passes); redirects would send clients straight to one node, so none leave.
nft -f - <<NFT
table ip ballast_router {
  chain out {
    type filter hook output priority filter; policy accept;
    icmp type redirect drop
  }
}
NFT

if [ "$STICKY" = 1 ]; then
  # Conntrack pinning: the first packet of a connection to a VIP is routed by the ECMP route; its
  # next hop is saved in the connection's mark; later packets carry the mark and a policy rule routes
  # them via a table holding only that next hop. One mark/table per address in FABRIC (/24 or less).
  prefix_len=${FABRIC#*/}
  [ "$prefix_len" -ge 24 ] || { echo "anycast-router: STICKY needs FABRIC of /24 or longer" >&2; exit 1; }
  base=$(echo "${FABRIC%/*}" | cut -d. -f1-3)
  first=$(echo "${FABRIC%/*}" | cut -d. -f4)
  count=$((1 << (32 - prefix_len)))
  elements=""
  : >/run/bird/sticky.ip
  i=$((first + 1))
  while [ "$i" -lt $((first + count - 1)) ]; do
    elements="$elements$base.$i : $((256 + i)), "
    echo "rule add fwmark $((256 + i)) lookup $((1000 + i)) priority 100" >>/run/bird/sticky.ip
    echo "route replace default via $base.$i dev $FABRIC_DEV table $((1000 + i))" >>/run/bird/sticky.ip
    i=$((i + 1))
  done
  ip -batch /run/bird/sticky.ip
  nft -f - <<NFT
table ip ballast_sticky {
  map nexthop_mark {
    type ipv4_addr : mark
    elements = { ${elements%, } }
  }
  chain pin {
    type filter hook postrouting priority mangle; policy accept;
    ct state new ip daddr $VIP_RANGE ct mark set rt ip nexthop map @nexthop_mark
  }
  chain follow {
    type filter hook prerouting priority mangle; policy accept;
    ct direction original ct mark != 0 meta mark set ct mark
  }
}
NFT
  echo "anycast-router: sticky connections on ($count next hops in $FABRIC)"
fi

echo "anycast-router: router id $ROUTER_ID, peers from $FABRIC on $FABRIC_DEV, VIPs in $VIP_RANGE"
exec bird -f -c "$CONF" -s "$SOCK"
