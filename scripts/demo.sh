#!/usr/bin/env bash
# The main job, end to end on one machine with no cluster: build, make a node netns and two pod
# netns, apply the seed's two IPPools to the embedded local store, ADD both pods through a
# conflist like /etc/cni/net.d's, show what they got, ping IPv4 and IPv6 both ways, DEL, clean up.
# Run as root on Debian 12. Everything happens inside namespaces this script creates.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-netns.sh

[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== build"
REL=$(scripts/build-release.sh)
BIN=$(mktemp -d /tmp/calico-demo-bin.XXXX)
STATE=$(mktemp -d /tmp/calico-demo-state.XXXX)
cp "$REL/calico-cni" "$BIN/calico"
cp "$REL/calico-ipam" "$BIN/calico-ipam"

NODE=calico-demo-node-$$
POD1=calico-demo-pod1-$$
POD2=calico-demo-pod2-$$
CONF=$STATE/10-calico.conflist
sed "s|@STATE@|$STATE|g" testdata/demo/10-calico.conflist > "$CONF"
PLUGIN=$(plugin_conf "$CONF" 0)

cni() { # cni VERB POD NAMESPACE-PATH
  ip netns exec "$NODE" env CNI_COMMAND="$1" CNI_CONTAINERID="demo-$2" CNI_NETNS="$3" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2" \
    "$BIN/calico" <<<"$PLUGIN"
}
cleanup() {
  for p in pod1 pod2; do cni DEL "$p" "/var/run/netns/calico-demo-$p-$$" >/dev/null 2>&1 || true; done
  drop_netns "$POD1" "$POD2" "$NODE"
  rm -rf "$BIN" "$STATE"
}
trap cleanup EXIT

echo "== namespaces: node $NODE, pods $POD1 $POD2"
make_node "$NODE"
make_pod "$POD1"
make_pod "$POD2"

echo "== apply the seed's IPPools to the local store"
export DATASTORE_TYPE=local DATASTORE_PATH=$STATE/ipam
"$BIN/calico-ipam" pool apply -f testdata/pools/seed-pools.yaml
"$BIN/calico-ipam" pool list -o wide

echo "== ADD pod1 and pod2 ($CONF)"
R1=$(cni ADD pod1 "/var/run/netns/$POD1")
R2=$(cni ADD pod2 "/var/run/netns/$POD2")
echo "$R1" | jq .
echo "$R2" | jq -c .
P1V4=$(jq -r '.ips[0].address' <<<"$R1" | cut -d/ -f1); P1V6=$(jq -r '.ips[1].address' <<<"$R1" | cut -d/ -f1)
P2V4=$(jq -r '.ips[0].address' <<<"$R2" | cut -d/ -f1); P2V6=$(jq -r '.ips[1].address' <<<"$R2" | cut -d/ -f1)

echo "== pod1: addresses and routes"
ip -n "$POD1" -br addr show eth0
ip -n "$POD1" route
ip -n "$POD1" -6 route
echo "== node: pod routes"
ip -n "$NODE" route | grep cali || true
ip -n "$NODE" -6 route | grep cali || true

echo "== ping"
ip netns exec "$POD1" ping -c1 -W2 "$P2V4" >/dev/null && echo "pod1 -> pod2 $P2V4 ok"
ip netns exec "$POD2" ping -c1 -W2 "$P1V4" >/dev/null && echo "pod2 -> pod1 $P1V4 ok"
ip netns exec "$POD1" ping -6 -c1 -W2 "$P2V6" >/dev/null && echo "pod1 -> pod2 $P2V6 ok"
ip netns exec "$POD2" ping -6 -c1 -W2 "$P1V6" >/dev/null && echo "pod2 -> pod1 $P1V6 ok"
ip netns exec "$NODE" ping -c1 -W2 "$P1V4" >/dev/null && echo "node -> pod1 $P1V4 ok"
ip netns exec "$NODE" ping -6 -c1 -W2 "$P1V6" >/dev/null && echo "node -> pod1 $P1V6 ok"

echo "== IPAM usage"
"$BIN/calico-ipam" show --show-blocks

echo "== DEL both pods"
cni DEL pod1 "/var/run/netns/$POD1"
cni DEL pod2 "/var/run/netns/$POD2"
"$BIN/calico-ipam" check
"$BIN/calico-ipam" show
echo "== done"
