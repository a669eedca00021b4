#!/usr/bin/env bash
# Install what the tests, the demo and the benchmarks need on a fresh Debian 12 machine (as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail

# etcd-server, etcd-client: the three-member cluster of scripts/etcd-testenv (etcdv3 datastore
# tests); protobuf-compiler, libprotobuf-dev (its well-known .proto files): the etcd-client
# crate's build script runs protoc; openssl: the cluster's certificates.
packages=(iproute2 iputils-ping jq procps containernetworking-plugins hyperfine strace
  # the image (scripts/build-image.sh): its shell and tools, and the OCI archive writer
  bash-static busybox-static curl python3
  etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's reference plugins (host-local, ptp, tuning) land in /usr/lib/cni.
test -x /usr/lib/cni/host-local
