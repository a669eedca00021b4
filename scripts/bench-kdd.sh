#!/usr/bin/env bash
# API requests and latency per dual-stack pod in the Kubernetes datastore: calico-cni +
# calico-ipam (policy k8s, as Calico's manifests configure it) ADD and DEL pods one at a time on
# one node, against a real kube-apiserver (scripts/kube-testenv) started inside the node's
# netns. Requests are counted from the apiserver's audit log (user calico-cni), latency is the
# whole plugin process. Prints a small table; Calico's own figure for a steady-state dual-stack
# ADD is about 26 requests (reference/calico.md 4.17).
#   scripts/bench-kdd.sh [COUNT] [--from DIR]   (default 50 pods; DIR holds calico-cni and
#                                                calico-ipam, default: scripts/build-release.sh)
# Root. Everything happens in namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-netns.sh
source scripts/lib-bench.sh
bench_init bench-kdd bkdd bk "$@"
KUBE=$WORK/kube
cleanup() {
  scripts/kube-testenv down "$KUBE" >/dev/null 2>&1 || true
  bench_drop
}
trap cleanup EXIT

bench_netns
# The apiserver runs in the node's netns, so the plugins reach it on the node's loopback.
ip netns exec "$NODE" scripts/kube-testenv up "$KUBE" 2>"$WORK/up.log" \
  || { cat "$WORK/up.log" >&2; exit 1; }

{
  printf 'apiVersion: v1\nkind: Node\nmetadata:\n  name: bench-node\n---\n'
  for i in $(seq 0 "$COUNT"); do
    printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: default}\nspec:\n  nodeName: bench-node\n  containers: [{name: c, image: pause}]\n---\n' "$P$i"
  done
} > "$WORK/objects.yaml"
ip netns exec "$NODE" scripts/kube-testenv apply "$KUBE" "$WORK/objects.yaml" >/dev/null
ip netns exec "$NODE" env DATASTORE_TYPE=kubernetes KUBECONFIG="$KUBE/kubeconfig-cni" \
  "$WORK/bin/calico-ipam" pool apply -f testdata/pools/seed-pools.yaml >/dev/null

jq -nc --arg kc "$KUBE/kubeconfig-cni" --arg lock "$WORK/run/ipam.lock" '{
  cniVersion: "1.0.0", name: "k8s-pod-network", type: "calico", nodename: "bench-node",
  datastore_type: "kubernetes", kubernetes: {kubeconfig: $kc}, policy: {type: "k8s"},
  ipam_lock_file: $lock, mtu: 1500,
  ipam: {type: "calico-ipam", assign_ipv4: "true", assign_ipv6: "true"}}' > "$WORK/calico.json"

R=$(python3 scripts/bench/kdd.py "$NODE" "$WORK/bin" "$WORK/calico.json" "$KUBE/audit.log" \
  default "$P" "$COUNT")

echo
bench_table "API requests" "$R"
echo
echo "requests of a median steady-state ADD:"
jq -r '.add.median_op[] | "  " + .' <<<"$R"
echo "requests of a median DEL:"
jq -r '.del.median_op[] | "  " + .' <<<"$R"
echo "requests of the first ADD on the node:"
jq -r '.first_add.median_op[] | "  " + .' <<<"$R"
echo
echo "Calico (reference/calico.md 4.17): ~26 requests per steady-state dual-stack ADD."
