#!/usr/bin/env bash
# Builds every image the compose cluster and the chaos suite use, with no registry: three images
# imported from root filesystems made of this host's binaries, then the node image from
# deploy/Dockerfile on top of the local base. Run from anywhere; needs docker, node/npm, etcd,
# bird2, busybox-static, iproute2, nftables and iptables on the host (.ci/images.sh installs them).
#
#   ballast-base:local   node + its libraries, busybox, user ballast (uid 10001)
#   ballast-etcd:local   etcd + etcdctl, busybox
#   ballast-bird:local   bird + birdc, iproute2 ip, nft, iptables, busybox, deploy/anycast scripts
#   ballast-node:local   deploy/Dockerfile FROM ballast-base:local (dist/, bin/, production node_modules)
#
# Environment: BALLAST_SKIP_NPM_BUILD=1 skips `npm run build` (dist/ is taken as it is);
# BALLAST_IMAGES="base etcd bird node" picks a subset. An imported image whose inputs (binaries,
# libraries, scripts, this file) hash the same as the existing tag is not rebuilt, so calling this
# again is cheap and the node image's layer cache stays valid.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGES=${BALLAST_IMAGES:-"base etcd bird node"}
PATH_IN_IMAGE=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORK=$(mktemp -d /tmp/ballast-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

started=$(date +%s%N)
log() { local ms=$((($(date +%s%N) - started) / 1000000)); printf '[images %3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { echo "build.sh: $*" >&2; exit 1; }

for tool in docker tar sha256sum; do command -v "$tool" >/dev/null || die "missing $tool on the host"; done
docker info >/dev/null 2>&1 || die "docker engine not reachable (run .ci/images.sh, or start dockerd)"

# Copies a host binary and every library ldd lists (resolving symlinks) into a rootfs, same paths.
add_binary() {
  local rootfs=$1 bin=$2 real lib
  real=$(readlink -f "$bin")
  [ -x "$real" ] || die "binary $bin not found on the host"
  mkdir -p "$rootfs$(dirname "$bin")"
  cp -L "$real" "$rootfs$bin"
  add_libraries "$rootfs" "$real"
}

add_libraries() {
  local rootfs=$1 file=$2 lib
  # ldd lines: "libx.so => /path (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"; vdso has no path.
  for lib in $(ldd "$file" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}'); do
    [ -e "$rootfs$lib" ] && continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
}

# busybox-static with every applet linked in /bin; real binaries elsewhere win through PATH order.
add_busybox() {
  local rootfs=$1 applet
  mkdir -p "$rootfs/bin" "$rootfs/usr/bin" "$rootfs/sbin" "$rootfs/usr/sbin"
  cp -L /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
  done
}

add_etc() {
  local rootfs=$1
  mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/root" "$rootfs/run" "$rootfs/var/tmp" "$rootfs/home/ballast"
  chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
  cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
ballast:x:10001:10001:ballast:/home/ballast:/bin/sh
EOF
  cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
ballast:x:10001:
EOF
  echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
  # docker bind-mounts its own hosts/resolv.conf/hostname over these.
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$rootfs/etc/hosts"
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  chown 10001:10001 "$rootfs/home/ballast"
}

# Hash of everything that goes into a rootfs (file contents), so an unchanged image is not re-imported.
inputs_hash() {
  { sha256sum "${BASH_SOURCE[0]}"; for f in "$@"; do if [ -d "$f" ]; then find "$f" -type f -print0 | sort -z | xargs -0 sha256sum; else sha256sum "$(readlink -f "$f")"; fi; done; } \
    | awk '{print $1}' | sha256sum | cut -c1-16
}

current_hash() { docker image inspect -f '{{ index .Config.Labels "ballast.inputs" }}' "$1" 2>/dev/null || true; }

# import NAME HASH ROOTFS [--change …]…
import_rootfs() {
  local name=$1 hash=$2 rootfs=$3; shift 3
  local changes=(--change "ENV PATH=$PATH_IN_IMAGE" --change "LABEL ballast.image=$name" --change "LABEL ballast.inputs=$hash")
  while [ $# -gt 0 ]; do changes+=(--change "$1"); shift; done
  tar --numeric-owner -C "$rootfs" -c . | docker import "${changes[@]}" - "$name" >/dev/null
}

image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }

build_base() {
  local name=ballast-base:local hash rootfs=$WORK/base
  hash=$(inputs_hash /usr/bin/node /bin/busybox /usr/sbin/nft)
  if [ "$(current_hash "$name")" = "$hash" ]; then log "$name up to date ($(image_size "$name"))"; return; fi
  mkdir -p "$rootfs"
  add_etc "$rootfs"
  add_busybox "$rootfs"
  add_binary "$rootfs" /usr/bin/node
  # nft: a node given root and NET_ADMIN programs its nat and dsr services (the default user has neither).
  add_binary "$rootfs" /usr/sbin/nft
  import_rootfs "$name" "$hash" "$rootfs" 'WORKDIR /home/ballast' 'CMD ["node"]'
  log "$name built ($(image_size "$name"))"
}

build_etcd() {
  local name=ballast-etcd:local hash rootfs=$WORK/etcd
  hash=$(inputs_hash /usr/bin/etcd /usr/bin/etcdctl /bin/busybox)
  if [ "$(current_hash "$name")" = "$hash" ]; then log "$name up to date ($(image_size "$name"))"; return; fi
  mkdir -p "$rootfs/var/lib/etcd"
  add_etc "$rootfs"
  add_busybox "$rootfs"
  add_binary "$rootfs" /usr/bin/etcd
  add_binary "$rootfs" /usr/bin/etcdctl
  # etcd reads ETCD_* variables, so compose files and tests configure members without a command line.
  import_rootfs "$name" "$hash" "$rootfs" 'ENV ETCD_DATA_DIR=/var/lib/etcd' 'ENV ETCDCTL_API=3' \
    'EXPOSE 2379 2380' 'CMD ["/usr/bin/etcd"]'
  log "$name built ($(image_size "$name"))"
}

build_bird() {
  local name=ballast-bird:local hash rootfs=$WORK/bird f
  local bins=(/usr/sbin/bird /usr/sbin/birdc /usr/sbin/birdcl /usr/sbin/nft /usr/sbin/xtables-nft-multi)
  hash=$(inputs_hash "${bins[@]}" /usr/bin/ip /bin/busybox /usr/lib/x86_64-linux-gnu/xtables "$ROOT/deploy/anycast")
  if [ "$(current_hash "$name")" = "$hash" ]; then log "$name up to date ($(image_size "$name"))"; return; fi
  mkdir -p "$rootfs/run/bird" "$rootfs/etc/bird"
  add_etc "$rootfs"
  add_busybox "$rootfs"
  for f in "${bins[@]}"; do add_binary "$rootfs" "$f"; done
  # iproute2's ip (busybox ip cannot show or add multipath routes, nor nexthop objects).
  add_binary "$rootfs" /usr/bin/ip
  ln -sf /usr/bin/ip "$rootfs/usr/sbin/ip"
  for f in iptables iptables-save iptables-restore; do ln -sf xtables-nft-multi "$rootfs/usr/sbin/$f"; done
  mkdir -p "$rootfs/usr/lib/x86_64-linux-gnu/xtables"
  for f in /usr/lib/x86_64-linux-gnu/xtables/libxt_*.so /usr/lib/x86_64-linux-gnu/xtables/libipt_*.so; do
    cp -L "$f" "$rootfs$f"
    add_libraries "$rootfs" "$f"
  done
  mkdir -p "$rootfs/etc/ballast-anycast" "$rootfs/usr/local/bin"
  cp "$ROOT"/deploy/anycast/*.conf.in "$rootfs/etc/ballast-anycast/"
  for f in "$ROOT"/deploy/anycast/*.sh; do install -m 0755 "$f" "$rootfs/usr/local/bin/$(basename "$f")"; done
  import_rootfs "$name" "$hash" "$rootfs" 'CMD ["/usr/local/bin/anycast-router.sh"]'
  log "$name built ($(image_size "$name"))"
}

# The node image's build context is staged, not the checkout: only dist/, bin/, the lock file and
# production node_modules go in (a copy of the installed tree pruned with --omit=dev, which only
# deletes, so it works offline and yields exactly the versions the tests ran against).
build_node() {
  local name=ballast-node:local stage=$WORK/node-context
  if [ "${BALLAST_SKIP_NPM_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && npm run --silent build) || die "npm run build failed"
  fi
  [ -f "$ROOT/bin/ballast.js" ] || die "bin/ballast.js missing"
  [ -d "$ROOT/node_modules" ] || die "node_modules missing (run npm ci first)"
  mkdir -p "$stage/deploy"
  cp "$ROOT/package.json" "$ROOT/package-lock.json" "$stage/"
  cp -a "$ROOT/bin" "$stage/bin"
  # Compiled tests and configs stay out of the image.
  tar -C "$ROOT" --exclude='dist/test' --exclude='dist/vitest*' -c dist | tar -C "$stage" -x
  cp "$ROOT/deploy/demo-backend.mjs" "$ROOT/deploy/healthcheck.mjs" "$stage/deploy/"
  # Hard links make the copy instant; prune only unlinks, and the one file npm would rewrite in
  # place (the hidden lockfile) is unlinked first so the checkout's tree is never touched.
  # A node_modules that is a symlink (a shared install) is resolved first: copying the link itself
  # would make the rm and prune below act on the shared tree.
  local modules
  modules=$(readlink -f "$ROOT/node_modules")
  cp -al "$modules" "$stage/node_modules" 2>/dev/null || { rm -rf "$stage/node_modules"; cp -a "$modules" "$stage/node_modules"; }
  rm -f "$stage/node_modules/.package-lock.json"
  (cd "$stage" && npm prune --omit=dev --offline --ignore-scripts --no-audit --no-fund --silent) || die "npm prune failed"
  rm -rf "$stage/node_modules/.cache" "$stage/node_modules/.package-lock.json"
  # BuildKit is not here (no buildx); the classic builder's deprecation notice is kept out of the log.
  if ! DOCKER_BUILDKIT=0 docker build -f "$ROOT/deploy/Dockerfile" --build-arg BASE=ballast-base:local \
    --label ballast.image="$name" -t "$name" "$stage" >"$WORK/node-build.log" 2>&1; then
    cat "$WORK/node-build.log" >&2
    die "docker build of $name failed"
  fi
  log "$name built ($(image_size "$name"), production node_modules $(du -sh "$stage/node_modules" | cut -f1))"
}

for image in $IMAGES; do
  case $image in
    base) build_base ;;
    etcd) build_etcd ;;
    bird) build_bird ;;
    node) build_node ;;
    *) die "unknown image $image (base, etcd, bird, node)" ;;
  esac
done
# Re-imports leave the previous image untagged; drop those (only ours, only dangling).
docker image prune -f --filter label=ballast.image >/dev/null
log "done: $IMAGES"
