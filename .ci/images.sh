#!/usr/bin/env bash
# CI and first-time setup for the container tests: installs Docker and the binaries the images are
# made of (Debian packages, as root), starts dockerd when it is not running, and builds every image
# (deploy/images/build.sh). Idempotent: a second run only checks, and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# command → Debian package
declare -A packages=(
  [dockerd]=docker.io [docker-compose]=docker-compose [etcd]=etcd-server [etcdctl]=etcd-client
  [bird]=bird2 [nft]=nftables [xtables-nft-multi]=iptables [ip]=iproute2
)
need=()
for cmd in "${!packages[@]}"; do command -v "$cmd" >/dev/null 2>&1 || need+=("${packages[$cmd]}"); done
[ -x /bin/busybox ] || need+=(busybox-static)
if ((${#need[@]})); then
  [ "$(id -u)" = 0 ] || { echo "images.sh: installing ${need[*]} needs root" >&2; exit 1; }
  echo "images.sh: installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "images.sh: starting dockerd (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "images.sh: dockerd did not answer within 60 s; last log lines:" >&2
      tail -n 20 /var/log/dockerd.log >&2
      exit 1
    fi
    sleep 0.5
  done
fi
echo "images.sh: docker $(docker version -f '{{.Server.Version}}'), compose $(docker-compose version --short)"

bash deploy/images/build.sh
