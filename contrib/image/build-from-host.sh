#!/usr/bin/env bash
# Builds Wharf's runtime image from a binary built on this machine, with no
# base image: a root filesystem holding the binary, the shared libraries it
# links (from ldd), CA certificates, a non-root user and the data folder,
# handed to `docker import`, then runtime.Dockerfile on top of it (health
# check, environment, command) with the classic builder. For machines that cannot pull images (CI, air
# gaps); where a registry is reachable the top-level Dockerfile does the same
# from source.
#
#   contrib/image/build-from-host.sh [BINARY] [TAG]
#   (defaults: target/release/wharf, wharf:local)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/wharf}
tag=${2:-wharf:local}
[ -x "$bin" ] || { echo "build-from-host.sh: $bin not found (cargo build --release)" >&2; exit 2; }

root=$(mktemp -d "${TMPDIR:-/tmp}/wharf-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{usr/local/bin,etc/wharf,etc/ssl/certs,var/lib/wharf,tmp}
# Without the debug info release builds keep for profiling (debug = 1).
objcopy --strip-debug "$bin" "$root/usr/local/bin/wharf"
chmod 0755 "$root/usr/local/bin/wharf"
# The dynamic loader and every library the binary links, at the same paths.
for lib in $(ldd "$bin" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
echo 'wharf:x:10001:10001:wharf:/var/lib/wharf:/nonexistent' >"$root/etc/passwd"
echo 'wharf:x:10001:' >"$root/etc/group"
chown -R 10001:10001 "$root/var/lib/wharf"
chmod 1777 "$root/tmp"

base="wharf-rootfs:$$"
tar -C "$root" --numeric-owner -c . | docker import - "$base" >/dev/null
trap 'rm -rf "$root"; docker rmi "$base" >/dev/null 2>&1 || true' EXIT
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$tag" \
  -f contrib/image/runtime.Dockerfile contrib/image >/dev/null 2>&1 \
  || DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$base" -t "$tag" \
    -f contrib/image/runtime.Dockerfile contrib/image >&2
echo "$tag"
