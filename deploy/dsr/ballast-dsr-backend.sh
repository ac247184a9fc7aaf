#!/bin/sh
# Backend side of Ballast's `forwarding: dsr`: puts each service VIP on the loopback so the backend
# accepts packets a Ballast node forwarded without rewriting them, and answers the client directly
# from the VIP; the ARP settings keep the backend from answering ARP for the VIP (only the routers'
# path to the Ballast nodes may attract the VIP's traffic). POSIX sh; works with busybox.
#
#   ballast-dsr-backend.sh up   VIP [VIP...]   add the VIPs (idempotent) and set the ARP sysctls
#   ballast-dsr-backend.sh down VIP [VIP...]   remove the VIPs (the sysctls stay)
#   ballast-dsr-backend.sh check VIP [VIP...]  exit 1 unless every VIP is on lo and the sysctls are set
#
# VIPs may also come from BALLAST_DSR_VIPS (space-separated), as the systemd unit passes them.
set -eu

usage() { echo "usage: $0 up|down|check VIP [VIP...]  (or BALLAST_DSR_VIPS=\"VIP ...\")" >&2; exit 2; }

[ $# -ge 1 ] || usage
action=$1
shift
vips=${*:-${BALLAST_DSR_VIPS:-}}
[ -n "$vips" ] || usage

valid_ipv4() {
  case $1 in *[!0-9.]* | "" ) return 1 ;; esac
  old_ifs=$IFS; IFS=.; set -- $1; IFS=$old_ifs
  [ $# -eq 4 ] || return 1
  for octet; do [ -n "$octet" ] && [ "$octet" -le 255 ] || return 1; done
}

on_lo() { ip -4 addr show dev lo | grep -q "inet $1/32"; }

sysctl_is() { [ "$(cat "/proc/sys/net/ipv4/conf/$1/$2")" = "$3" ]; }

# Writes a sysctl unless it already has the value: in a container /proc/sys is read-only and the
# runtime sets it (docker run --sysctl net.ipv4.conf.all.arp_ignore=1 ...).
set_conf() {
  sysctl_is all "$1" "$2" && return 0
  sysctl -q -w "net.ipv4.conf.all.$1=$2" >/dev/null 2>&1 || {
    echo "cannot set net.ipv4.conf.all.$1=$2 (in a container: docker run --sysctl net.ipv4.conf.all.$1=$2)" >&2
    exit 1
  }
}

for vip in $vips; do valid_ipv4 "$vip" || { echo "not an IPv4 address: $vip" >&2; exit 2; }; done

case $action in
  up)
    # arp_ignore=1: answer ARP only for addresses on the interface the request came in on (the VIP
    # lives on lo, so never). arp_announce=2: never use the VIP as the source of our own ARP requests.
    # "all" combines with each interface's own value by maximum, so this covers every interface.
    set_conf arp_ignore 1
    set_conf arp_announce 2
    for vip in $vips; do
      on_lo "$vip" || ip addr add "$vip/32" dev lo
      echo "vip $vip on lo"
    done
    ;;
  down)
    for vip in $vips; do
      if on_lo "$vip"; then ip addr del "$vip/32" dev lo; fi
      echo "vip $vip removed"
    done
    ;;
  check)
    ok=0
    sysctl_is all arp_ignore 1 || { echo "net.ipv4.conf.all.arp_ignore is not 1" >&2; ok=1; }
    sysctl_is all arp_announce 2 || { echo "net.ipv4.conf.all.arp_announce is not 2" >&2; ok=1; }
    for vip in $vips; do on_lo "$vip" || { echo "vip $vip is not on lo" >&2; ok=1; }; done
    exit $ok
    ;;
  *) usage ;;
esac
