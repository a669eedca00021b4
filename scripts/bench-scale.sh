#!/usr/bin/env bash
# Cluster-scale cost of IPAM in the Kubernetes datastore (issue 17): NODES simulated nodes (the
# IPAM plugin only, no dataplane) against one real kube-apiserver (scripts/kube-testenv, started
# here, audit log on). Every node's first dual-stack ADD, then PODS_PER_NODE - 1 steady-state
# ADDs per node, every DEL, then one node's 64 concurrent ADDs. Prints one JSON line per phase:
# API requests in all and per pod by verb and resource (audit log, user calico-cni), 409s,
# latency p50/p99, wall time, apiserver CPU seconds and peak RSS (see scripts/bench/scale.py).
#   scripts/bench-scale.sh NODES PODS_PER_NODE [--ipam PATH] [--concurrency N]
# --ipam: any binary that speaks Calico's IPAM netconf (default: our release calico-ipam).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,9p "$0" >&2; exit 2; }
NODES=$1 PODS=$2
shift 2
IPAM= CONC=16
while [ $# -gt 0 ]; do
  case "$1" in
    --ipam) IPAM=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    *) echo "bench-scale.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
export PATH="$HOME/.cargo/bin:$PATH:/usr/local/go/bin"
if [ -z "$IPAM" ]; then
  IPAM="$(scripts/build-release.sh)/calico-ipam"
fi
KUBE=$(mktemp -d /tmp/bench-scale-kube.XXXX)
trap 'scripts/kube-testenv down "$KUBE" >/dev/null 2>&1 || true' EXIT
scripts/kube-testenv up "$KUBE" >&2
python3 scripts/bench/scale.py "$KUBE" "$IPAM" "$NODES" "$PODS" "$CONC"
