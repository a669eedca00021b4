#!/usr/bin/env bash
# etcd round trips and latency per dual-stack pod in the etcdv3 datastore, next to the
# Kubernetes datastore's in the same run: calico-cni + calico-ipam ADD and DEL pods one at a time
# on one node, against scripts/etcd-testenv's three-member TLS cluster started inside the node's
# netns; then scripts/bench-kdd.sh with the same binaries and count. Requests are counted from
# the members' own metrics (grpc_server_handled_total, unary calls, summed over the members;
# scripts/bench/etcd.py), latency is the whole plugin process. Prints both tables and the load
# average (the figures are only comparable on a quiet machine).
#   scripts/bench-etcd.sh [COUNT] [--from DIR]   (default 50 pods; DIR holds calico-cni and
#                                                 calico-ipam, default: scripts/build-release.sh)
# Root. Everything happens in namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-netns.sh
source scripts/lib-bench.sh
bench_init bench-etcd betcd be "$@"
ETCD=$WORK/etcd
cleanup() {
  scripts/etcd-testenv down "$ETCD" >/dev/null 2>&1 || true
  bench_drop
}
trap cleanup EXIT

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
bench_netns
# The cluster runs in the node's netns, so the plugins reach it on the node's loopback.
ip netns exec "$NODE" scripts/etcd-testenv up "$ETCD" 2>"$WORK/up.log" \
  || { cat "$WORK/up.log" >&2; exit 1; }
# shellcheck disable=SC1091
source "$ETCD/env"
ip netns exec "$NODE" env DATASTORE_TYPE=etcdv3 ETCD_ENDPOINTS="$ETCD_ENDPOINTS" \
  ETCD_CA_CERT_FILE="$ETCD_CA_CERT_FILE" ETCD_CERT_FILE="$ETCD_CERT_FILE" ETCD_KEY_FILE="$ETCD_KEY_FILE" \
  "$WORK/bin/calico-ipam" pool apply -f testdata/pools/seed-pools.yaml >/dev/null

jq -nc --arg ep "$ETCD_ENDPOINTS" --arg ca "$ETCD_CA_CERT_FILE" --arg cert "$ETCD_CERT_FILE" \
  --arg key "$ETCD_KEY_FILE" --arg lock "$WORK/run/ipam.lock" '{
  cniVersion: "1.0.0", name: "k8s-pod-network", type: "calico", nodename: "bench-node",
  datastore_type: "etcdv3", etcd_endpoints: $ep, etcd_ca_cert_file: $ca, etcd_cert_file: $cert,
  etcd_key_file: $key, ipam_lock_file: $lock, mtu: 1500,
  ipam: {type: "calico-ipam", assign_ipv4: "true", assign_ipv6: "true"}}' > "$WORK/calico.json"

R=$(python3 scripts/bench/etcd.py "$NODE" "$WORK/bin" "$WORK/calico.json" "$ETCD/env" "$P" "$COUNT")

printf '\netcdv3 datastore (3 members, TLS)\n'
bench_table "etcd requests" "$R"
echo
for phase in add:"a median steady-state ADD" del:"a median DEL" first_add:"the first ADD on the node"; do
  echo "etcd requests of ${phase#*:}: $(jq -r --arg p "${phase%%:*}" '.[$p].median_op | group_by(.) | map("\(.[0]) x\(length)") | join(", ")' <<<"$R")"
done
echo "load average after the etcd run: $(cut -d' ' -f1-3 /proc/loadavg)"
scripts/etcd-testenv down "$ETCD" >/dev/null 2>&1 || true

printf '\nKubernetes datastore (kube-apiserver, same binaries), scripts/bench-kdd.sh %s:\n' "$COUNT"
scripts/bench-kdd.sh "$COUNT" --from "$REL"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
