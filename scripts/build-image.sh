#!/usr/bin/env bash
# build-image.sh: the calico-rs/cni image (what the Dockerfile builds), without a container
# engine: the root filesystem from scripts/image-rootfs.sh (our static binaries, the installer,
# Debian's bash-static, busybox-static, curl and jq), written as an OCI image archive by
# scripts/oci-image.py. Prints the archive's path; load it with
#   ctr -n k8s.io images import OUT        (containerd: the kubelet's namespace)
#   podman load -i OUT    or    docker load -i OUT (Docker >= 25)
#
# usage: scripts/build-image.sh [--from DIR] [--out FILE] [--name REF] [--allow-dynamic]
#   --from DIR       calico-cni and calico-ipam to put in (default: scripts/build-release.sh
#                    builds them, statically linked)
#   --out FILE       the archive (default: <target>/image/calico-rs-cni-<version>.oci.tar)
#   --name REF       the image reference (default docker.io/calico-rs/cni:<version from
#                    Cargo.toml>, which Kubernetes spells calico-rs/cni:<version>)
#   --allow-dynamic  accept dynamically linked binaries (the image has glibc, for curl)
#
# Reproducible: the same binaries and the same Debian packages give the same archive, byte for
# byte (every file time SOURCE_DATE_EPOCH, by default the last commit's; owner root; sorted
# entries).
# Needs Debian 12 with bash-static, busybox-static, curl, jq and python3 (scripts/install-deps.sh
# installs them), and root (the rootfs is checked by running the installer in it with chroot).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "build-image.sh: $*" >&2; exit 1; }

FROM= OUT= NAME= ALLOW_DYNAMIC=0
while [ $# -gt 0 ]; do
  case $1 in
    --from) [ $# -ge 2 ] || die "--from needs a directory"; FROM=$2; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a file"; OUT=$2; shift ;;
    --name) [ $# -ge 2 ] || die "--name needs an image reference"; NAME=$2; shift ;;
    --allow-dynamic) ALLOW_DYNAMIC=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

VERSION=$(awk '/^\[workspace\.package\]/ { p = 1; next } /^\[/ { p = 0 }
  p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$REPO/Cargo.toml")
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "no [workspace.package] version in Cargo.toml"
NAME=${NAME:-docker.io/calico-rs/cni:$VERSION}

if [ -z "$FROM" ]; then
  FROM=$("$REPO/scripts/build-release.sh") || die "scripts/build-release.sh failed"
fi
for b in calico-cni calico-ipam; do
  [ -x "$FROM/$b" ] || die "no $FROM/$b"
  if [ "$ALLOW_DYNAMIC" = 0 ] && ! [[ $(ldd "$FROM/$b" 2>&1 || true) =~ statically\ linked|not\ a\ dynamic\ executable ]]; then
    die "$FROM/$b is dynamically linked (scripts/build-release.sh builds static ones; or --allow-dynamic)"
  fi
done
OUT=${OUT:-${CARGO_TARGET_DIR:-$REPO/target}/image/calico-rs-cni-$VERSION.oci.tar}
mkdir -p "$(dirname "$OUT")"

WORK=$(mktemp -d /tmp/calico-rs-image.XXXXXX)
trap 'rm -rf -- "$WORK"' EXIT
"$REPO/scripts/image-rootfs.sh" "$FROM" "$WORK/rootfs" >&2 || die "scripts/image-rootfs.sh failed"

COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
# Every file's time and the image's creation time: the last commit's, unless set.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
python3 "$REPO/scripts/oci-image.py" "$WORK/rootfs" "$OUT" --name "$NAME" \
  --entrypoint '["/usr/local/bin/install-cni.sh", "--from=/opt/calico-rs/bin"]' \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --label org.opencontainers.image.title=calico-rs-cni \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.revision=$COMMIT" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label org.opencontainers.image.description="calico-rs CNI plugins (calico, calico-ipam) and their installer" \
  >"$WORK/digest" || die "scripts/oci-image.py failed"
echo "build-image.sh: $NAME (manifest $(cat "$WORK/digest"), $(du -h "$OUT" | cut -f1))" >&2
echo "$OUT"
