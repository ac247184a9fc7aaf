#!/bin/sh
# One-shot step of the compose demo: writes the demo service "web" and its three backends into etcd.
# Plain puts, so running it again changes nothing. Runs in ballast-etcd:local (etcdctl + busybox).
set -eu
: "${ETCD_ENDPOINTS:?}" "${BACKEND_NET:?}"
prefix=/ballast/default
put() { etcdctl --endpoints="$ETCD_ENDPOINTS" --dial-timeout=3s --command-timeout=5s put "$1" "$2" >/dev/null; echo "put $1 $2"; }

put "$prefix/services/web" '{"listen":"0.0.0.0:8080","protocol":"tcp","affinity":{"mode":"source-ip","ttl":"10m"},"health":{"type":"http","interval":"1s","http":{"path":"/"}}}'
for i in 1 2 3; do
  put "$prefix/backends/web/backend$i" "{\"address\":\"$BACKEND_NET.3$i\",\"port\":8080}"
done
