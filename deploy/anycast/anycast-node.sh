#!/bin/sh
# Anycast announcer for one Ballast node. Runs beside the node in the node's network namespace (a
# sidecar started with --network container:<node> and NET_ADMIN; the node itself needs neither),
# puts the VIPs on lo, runs BIRD, and keeps the VIP routes announced to the router only while the
# node's /readyz answers 200: withdrawn on drain, failure, a lost snapshot, or a node that hangs.
#
#   VIPS            VIPs to announce, space separated, e.g. "10.99.0.10 2001:db8:99::10" (required);
#                   IPv6 VIPs are announced as /128 over the same (IPv4) BGP session (MP-BGP)
#   NEXT_HOP6       next hop for IPv6 VIPs: this node's IPv6 address towards the router (default: the
#                   first global IPv6 address on the interface that reaches ROUTER)
#   ROUTER          the router's address on the network shared with the node (required)
#   RETURN_ROUTES   client networks to reach through the router, e.g. "10.98.0.0/24"
#   READY_URL       default http://127.0.0.1:9090/readyz
#   POLL_MS         readiness poll period, default 250; RISE (default 2) successes announce,
#                   FALL (default 1) answers other than 200 (503 while draining, refused) withdraw;
#                   a check times out after 1 s, and SLOW_FALL (default 3) checks in a row that got
#                   no answer withdraw (a hung node). One slow answer on a loaded host is not a
#                   verdict: it used to withdraw a healthy node (chaos scenario 6, two nodes at once
#                   while an etcd member was killed). A dead host is BFD's to notice, in ~300 ms.
#   LOCAL_AS        default 65010 (all nodes may share it); ROUTER_AS default 65000; BFD on|off (on)
#   RENDER_ONLY     1: write the BIRD config to $CONF (ROUTER_ID may be given) and exit, touching nothing
# Needs bird2, iproute2, wget and timeout (busybox has them all), fractional sleep (GNU or busybox).
# Log lines "anycast: announce" / "anycast: withdraw" mark each transition (docker logs -t times them).
set -eu
# busybox sh runs its own applets before PATH; its ip lacks multipath, rules and -batch.
if [ -x /usr/sbin/ip ]; then ip() { /usr/sbin/ip "$@"; }; fi

: "${VIPS:?set VIPS}" "${ROUTER:?set ROUTER}"
READY_URL=${READY_URL:-http://127.0.0.1:9090/readyz}
POLL_MS=${POLL_MS:-250}
RISE=${RISE:-2}
FALL=${FALL:-1}
SLOW_FALL=${SLOW_FALL:-3}
LOCAL_AS=${LOCAL_AS:-65010}
ROUTER_AS=${ROUTER_AS:-65000}
BFD=${BFD:-on}
POLL_S=$(awk -v ms="$POLL_MS" 'BEGIN { printf "%.3f", ms / 1000 }')
CONF=${CONF:-/run/bird/bird-node.conf}
SOCK=${SOCK:-/run/bird/bird.ctl}
TEMPLATE=${TEMPLATE:-/etc/ballast-anycast/bird-node.conf.in}

VIPS4=""
VIPS6=""
for vip in $VIPS; do
  case "$vip" in *:*) VIPS6="$VIPS6 $vip" ;; *) VIPS4="$VIPS4 $vip" ;; esac
done

# The router id is this namespace's address on the way to the router.
if [ -z "${ROUTER_ID:-}" ]; then
  ROUTER_ID=$(ip -4 route get "$ROUTER" | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1)
fi
[ -n "$ROUTER_ID" ] || { echo "anycast: no route to router $ROUTER" >&2; exit 1; }
if [ -n "$VIPS6" ] && [ -z "${NEXT_HOP6:-}" ]; then
  dev=$(ip -4 route get "$ROUTER" | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n1)
  NEXT_HOP6=$(ip -6 addr show dev "$dev" scope global | sed -n 's/.*inet6 \([0-9a-fA-F:]*\)\/.*/\1/p' | head -n1)
  [ -n "$NEXT_HOP6" ] || { echo "anycast: IPv6 VIPs need an IPv6 address on $dev (or NEXT_HOP6)" >&2; exit 1; }
fi

routes=""
for vip in $VIPS4; do routes="$routes  route $vip/32 blackhole;\n"; done
vip6=""
channel6=""
if [ -n "$VIPS6" ]; then
  vip6="protocol static vip6 {\n  disabled yes;\n  ipv6;\n"
  for vip in $VIPS6; do vip6="$vip6  route $vip/128 blackhole;\n"; done
  vip6="$vip6}\n"
  # IPv6 routes over the IPv4 session (MP-BGP): the next hop must be an IPv6 address of this node.
  channel6="  ipv6 {\n    import none;\n    export where proto = \"vip6\";\n    next hop address $NEXT_HOP6;\n  };\n"
fi
mkdir -p "$(dirname "$CONF")"
awk -v routes="$routes" -v vip6="$vip6" -v channel6="$channel6" '
  /@VIP_ROUTES@/ { printf "%s", routes; next }
  /@VIP6_PROTOCOL@/ { printf "%s", vip6; next }
  /@IPV6_CHANNEL@/ { sub(/@IPV6_CHANNEL@/, ""); printf "%s", channel6; print; next }
  { print }' "$TEMPLATE" |
  sed -e "s/@ROUTER_ID@/$ROUTER_ID/" -e "s/@ROUTER@/$ROUTER/" -e "s/@LOCAL_AS@/$LOCAL_AS/" \
      -e "s/@ROUTER_AS@/$ROUTER_AS/" -e "s/@BFD@/$BFD/" >"$CONF"
[ "${RENDER_ONLY:-0}" = 1 ] && exit 0

mkdir -p "$(dirname "$SOCK")"
for vip in $VIPS4; do ip addr replace "$vip/32" dev lo; done
for vip in $VIPS6; do ip -6 addr replace "$vip/128" dev lo; done
for net in ${RETURN_ROUTES:-}; do ip route replace "$net" via "$ROUTER"; done

bird -f -c "$CONF" -s "$SOCK" &
bird_pid=$!
for _ in $(seq 1 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
echo "anycast: bird up, router id $ROUTER_ID, peer $ROUTER, vips $VIPS, watching $READY_URL"

announced=0
set_announced() {
  if [ "$1" = 1 ]; then
    birdcl -s "$SOCK" enable vip >/dev/null
    [ -z "$VIPS6" ] || birdcl -s "$SOCK" enable vip6 >/dev/null
    echo "anycast: announce ($2)"
  else
    birdcl -s "$SOCK" disable vip >/dev/null
    [ -z "$VIPS6" ] || birdcl -s "$SOCK" disable vip6 >/dev/null
    echo "anycast: withdraw ($2)"
  fi
  announced=$1
}

stop() {
  [ "$announced" = 1 ] && set_announced 0 "stopping"
  sleep 0.3  # let the withdraw reach the router before the session closes
  kill "$bird_pid" 2>/dev/null || true
  wait "$bird_pid" 2>/dev/null || true
  exit 0
}
trap stop TERM INT

ok=0
bad=0
slow=0
while kill -0 "$bird_pid" 2>/dev/null; do
  # timeout, not wget -T: busybox 1.35's wget crashes with -T. timeout exits 124 (coreutils) or
  # 143 (busybox: killed by TERM) when the check got no answer in time; wget exits 1 for an HTTP
  # error (503) or a refused connection.
  rc=0
  timeout 1 wget -q -O /dev/null "$READY_URL" 2>/dev/null || rc=$?
  case "$rc" in
    0) ok=$((ok + 1)); bad=0; slow=0 ;;
    124 | 143) slow=$((slow + 1)); ok=0 ;;
    *) bad=$((bad + 1)); ok=0; slow=0 ;;
  esac
  if [ "$announced" = 0 ] && [ "$ok" -ge "$RISE" ]; then set_announced 1 "ready"; fi
  if [ "$announced" = 1 ] && [ "$bad" -ge "$FALL" ]; then set_announced 0 "not ready"; fi
  if [ "$announced" = 1 ] && [ "$slow" -ge "$SLOW_FALL" ]; then set_announced 0 "no answer to $slow checks"; fi
  sleep "$POLL_S" &
  wait $! || true  # a trap runs at once while waiting, not after the sleep
done
echo "anycast: bird exited" >&2
exit 1
