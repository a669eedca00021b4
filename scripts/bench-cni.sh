#!/usr/bin/env bash
# Sequential ADD and DEL of dual-stack pods through the whole plugin, calico-cni + calico-ipam
# (local store) beside Debian's ptp + host-local doing the same, in one node netns, in the same
# run; plus the kernel's floor: two `ip -batch` runs doing the same links, addresses and routes,
# and a bare `ip link del` of the same veth. Prints medians and ratios.
#   scripts/bench-cni.sh [COUNT]     (default 50 pods per plugin)
# Root. Everything happens in namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-netns.sh
COUNT=${1:-50}
[ "$(id -u)" = 0 ] || { echo "bench-cni.sh: run as root" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
REL=$(scripts/build-release.sh)

WORK=$(mktemp -d /tmp/bench-cni.XXXX)
NODE=bcni-node-$$
T=$PWD/scripts/bench/timer.py
mkdir "$WORK/bin"
cp "$REL/calico-cni" "$WORK/bin/calico"
cp "$REL/calico-ipam" "$WORK/bin/calico-ipam"
ln -s /usr/lib/cni/host-local /usr/lib/cni/ptp "$WORK/bin/"
cleanup() {
  for i in $(seq 0 $((COUNT - 1))); do drop_netns "bc-$$-$i" "bp-$$-$i" "bf-$$-$i"; done
  drop_netns "$NODE"
  rm -rf "$WORK"
}
trap cleanup EXIT

make_node "$NODE"
for i in $(seq 0 $((COUNT - 1))); do make_pod "bc-$$-$i"; make_pod "bp-$$-$i"; make_pod "bf-$$-$i"; done
DATASTORE_TYPE=local DATASTORE_PATH=$WORK/store "$WORK/bin/calico-ipam" pool apply -f testdata/pools/seed-pools.yaml >/dev/null

jq -nc --arg store "$WORK/store" --arg lock "$WORK/ipam.lock" '{
  cniVersion: "1.0.0", name: "k8s-pod-network", type: "calico", nodename: "bench-node",
  datastore_type: "local", datastore_path: $store, ipam_lock_file: $lock, mtu: 1500,
  ipam: {type: "calico-ipam", assign_ipv4: "true", assign_ipv6: "true"}}' > "$WORK/calico.json"
jq -nc --arg dir "$WORK/host-local" '{
  cniVersion: "1.0.0", name: "k8s-pod-network", type: "ptp", mtu: 1500,
  ipam: {type: "host-local", dataDir: $dir, routes: [{dst: "0.0.0.0/0"}, {dst: "::/0"}],
         ranges: [[{subnet: "10.244.0.0/16"}], [{subnet: "fd00:10:244::/48"}]]}}' > "$WORK/ptp.json"

# The floor: the same links, addresses and routes with iproute2, one batch per namespace.
for i in $(seq 0 $((COUNT - 1))); do
  a4="10.250.$((i / 250)).$((i % 250 + 1))"; a6="fd00:250::$((i + 1))"
  cat > "$WORK/floor-$i.node" <<B
link add bfl$i type veth peer name eth0 netns bf-$$-$i
link set bfl$i address ee:ee:ee:ee:ee:ee
link set bfl$i up
addr add fe80::1/64 dev bfl$i nodad
route add $a4/32 dev bfl$i scope link
route add $a6/128 dev bfl$i
B
  cat > "$WORK/floor-$i.pod" <<B
link set eth0 up
addr add $a4/32 dev eth0
addr add $a6/128 dev eth0 nodad
route add 169.254.1.1 dev eth0 scope link
route add default via 169.254.1.1 dev eth0
route add default via fe80::1 dev eth0
B
done

in_node() { ip netns exec "$NODE" "$@"; }
cni_env=(CNI_IFNAME=eth0 "CNI_PATH=$WORK/bin" "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod{i}")
echo "# $COUNT dual-stack pods per measurement, whole process, one at a time, inside node netns $NODE" >&2
R_CA_ADD=$(STDIN_FILE=$WORK/calico.json ID_PREFIX=c in_node python3 $T "calico-cni ADD" "$COUNT" -- \
  CNI_COMMAND=ADD "CNI_NETNS=/var/run/netns/bc-$$-{i}" "${cni_env[@]}" "$WORK/bin/calico")
R_PTP_ADD=$(STDIN_FILE=$WORK/ptp.json ID_PREFIX=p in_node python3 $T "ptp+host-local ADD" "$COUNT" -- \
  CNI_COMMAND=ADD "CNI_NETNS=/var/run/netns/bp-$$-{i}" "${cni_env[@]}" "$WORK/bin/ptp")
R_FL_ADD=$(in_node python3 $T "ip -batch (kernel floor) ADD" "$COUNT" -- \
  ip -batch "$WORK/floor-{i}.node" "&&" ip -n "bf-$$-{i}" -batch "$WORK/floor-{i}.pod")
R_CA_DEL=$(STDIN_FILE=$WORK/calico.json ID_PREFIX=c in_node python3 $T "calico-cni DEL" "$COUNT" -- \
  CNI_COMMAND=DEL "CNI_NETNS=/var/run/netns/bc-$$-{i}" "${cni_env[@]}" "$WORK/bin/calico")
R_PTP_DEL=$(STDIN_FILE=$WORK/ptp.json ID_PREFIX=p in_node python3 $T "ptp+host-local DEL" "$COUNT" -- \
  CNI_COMMAND=DEL "CNI_NETNS=/var/run/netns/bp-$$-{i}" "${cni_env[@]}" "$WORK/bin/ptp")
R_FL_DEL=$(in_node python3 $T "ip link del (kernel floor) DEL" "$COUNT" -- ip link del "bfl{i}")

median() { jq -r .median_ms <<<"$1"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
printf '\n%-34s %10s %10s %10s\n' "measurement" "median ms" "p10 ms" "p90 ms"
for r in "$R_CA_ADD" "$R_PTP_ADD" "$R_FL_ADD" "$R_CA_DEL" "$R_PTP_DEL" "$R_FL_DEL"; do
  jq -r '[.label, .median_ms, .p10_ms, .p90_ms] | @tsv' <<<"$r" | awk -F'\t' '{printf "%-34s %10s %10s %10s\n", $1, $2, $3, $4}'
done
echo
echo "ADD: ptp+host-local / calico-cni = $(ratio "$(median "$R_PTP_ADD")" "$(median "$R_CA_ADD")")x"
echo "ADD: calico-cni / ip -batch floor = $(ratio "$(median "$R_CA_ADD")" "$(median "$R_FL_ADD")")x"
echo "DEL: calico-cni / ip link del = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_FL_DEL")")x"
echo "DEL: calico-cni / ptp+host-local = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_PTP_DEL")")x"
