#!/usr/bin/env bash
# Sequential ADD and DEL of dual-stack pods through the whole plugin, calico-cni + calico-ipam
# (local store) beside Debian's ptp + host-local doing the same, in one node netns, in the same
# run; plus the kernel's floor: two `ip -batch` runs doing the same links, addresses and routes,
# and a bare `ip link del` of the same veth. Prints medians and ratios, the syncs (fsync,
# fdatasync, sync_file_range, syncfs) per ADD and per DEL counted with strace in separate runs,
# and the disk's sync cost. The store lives on the real disk: BENCH_DIR (default /var/tmp),
# never a tmpfs.
#   scripts/bench-cni.sh [COUNT]     (default 50 pods per plugin)
# Root. Everything happens in namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-netns.sh
COUNT=${1:-50}
[ "$(id -u)" = 0 ] || { echo "bench-cni.sh: run as root" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
REL=${FROM:-$(scripts/build-release.sh)}   # FROM=DIR: binaries built already (as bench-kdd.sh)

SYNCS=${SYNCS:-10}   # pods per sync count
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-cni.XXXX")
FS=$(stat -f -c %T "$WORK")   # "tmpfs", or "ext2/ext3" for ext4 and the like
[ "$FS" != tmpfs ] || { echo "bench-cni.sh: $WORK is on tmpfs; set BENCH_DIR to a disk" >&2; rm -rf "$WORK"; exit 1; }
NODE=bcni-node-$$
T=$PWD/scripts/bench/timer.py
mkdir "$WORK/bin"
cp "$REL/calico-cni" "$WORK/bin/calico"
cp "$REL/calico-ipam" "$WORK/bin/calico-ipam"
ln -s /usr/lib/cni/host-local /usr/lib/cni/ptp "$WORK/bin/"
cleanup() {
  for i in $(seq 0 $((COUNT - 1))); do drop_netns "bc-$$-$i" "bp-$$-$i" "bf-$$-$i"; done
  for i in $(seq "$COUNT" $((COUNT + SYNCS - 1))); do drop_netns "bc-$$-$i" "bp-$$-$i"; done
  drop_netns "$NODE"
  rm -rf "$WORK"
}
trap cleanup EXIT

make_node "$NODE"
for i in $(seq 0 $((COUNT - 1))); do make_pod "bc-$$-$i"; make_pod "bp-$$-$i"; make_pod "bf-$$-$i"; done
for i in $(seq "$COUNT" $((COUNT + SYNCS - 1))); do make_pod "bc-$$-$i"; make_pod "bp-$$-$i"; done
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

# Syncs, counted on pods of their own (strace slows every system call).
syncs() { # syncs LABEL CONF PREFIX NETNS-PREFIX VERB BIN
  STDIN_FILE=$2 ID_PREFIX=$3 ID_START=$COUNT COUNT_SYNCS=1 in_node python3 $T "$1" "$SYNCS" -- \
    CNI_COMMAND="$5" "CNI_NETNS=/var/run/netns/$4-$$-{i}" "${cni_env[@]}" "$6" | jq .syncs_per_run
}
S_CA_ADD=$(syncs "calico-cni ADD" "$WORK/calico.json" c bc ADD "$WORK/bin/calico")
S_CA_DEL=$(syncs "calico-cni DEL" "$WORK/calico.json" c bc DEL "$WORK/bin/calico")
S_PTP_ADD=$(syncs "ptp+host-local ADD" "$WORK/ptp.json" p bp ADD "$WORK/bin/ptp")
S_PTP_DEL=$(syncs "ptp+host-local DEL" "$WORK/ptp.json" p bp DEL "$WORK/bin/ptp")
SYNC_COST=$(python3 scripts/bench/synccost.py "$WORK")

median() { jq -r .median_ms <<<"$1"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
printf '\n%-34s %10s %10s %10s %8s\n' "measurement" "median ms" "p10 ms" "p90 ms" "syncs"
row() { # row RESULT SYNCS
  jq -r --arg s "$2" '[.label, .median_ms, .p10_ms, .p90_ms, $s] | @tsv' <<<"$1" |
    awk -F'\t' '{printf "%-34s %10s %10s %10s %8s\n", $1, $2, $3, $4, $5}'
}
row "$R_CA_ADD" "$S_CA_ADD"
row "$R_PTP_ADD" "$S_PTP_ADD"
row "$R_FL_ADD" ""
row "$R_CA_DEL" "$S_CA_DEL"
row "$R_PTP_DEL" "$S_PTP_DEL"
row "$R_FL_DEL" ""
echo
echo "syncs: fsync+fdatasync+sync_file_range+syncfs per operation, all processes, mean of $SYNCS (strace -c -f)"
echo "store: $WORK/store ($(df --output=fstype,source "$WORK" | tail -1 | xargs))"
echo "sync cost of that disk, medians: $(jq -r '"4 KiB overwrite + fdatasync \(.overwrite_fdatasync_ms) ms, 4 KiB append + fdatasync \(.append_fdatasync_ms) ms, durable file replace (write, fsync, rename, fsync dir) \(.durable_replace_ms) ms"' <<<"$SYNC_COST")"
echo "ADD: ptp+host-local / calico-cni = $(ratio "$(median "$R_PTP_ADD")" "$(median "$R_CA_ADD")")x"
echo "ADD: calico-cni / ip -batch floor = $(ratio "$(median "$R_CA_ADD")" "$(median "$R_FL_ADD")")x"
echo "DEL: calico-cni / ip link del = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_FL_DEL")")x"
echo "DEL: calico-cni / ptp+host-local = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_PTP_DEL")")x"
