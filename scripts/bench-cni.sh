#!/usr/bin/env bash
# Sequential ADD and DEL of dual-stack pods through the whole plugin, calico-cni + calico-ipam
# (local store) twice, with its IPAM in-process (the default) and with calico-ipam started as a
# binary ("ipam_in_process": false), beside Debian's ptp + host-local doing the same, in one node
# netns, in the same run; plus the kernel's floor: two `ip -batch` runs doing the same links,
# addresses and routes, and a bare `ip link del` of the same veth. The measurements are
# interleaved in ROUNDS rounds (default 5), so that the load of a shared machine drifts over all
# of them alike. Prints medians and ratios, the syncs (fsync, fdatasync, sync_file_range, syncfs)
# per ADD and per DEL counted with strace in separate runs, and the disk's sync cost. The stores
# live on the real disk: BENCH_DIR (default /var/tmp), never a tmpfs.
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
ROUNDS=${ROUNDS:-5}
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
  for i in $(seq 0 $((COUNT - 1))); do drop_netns "bc-$$-$i" "be-$$-$i" "bp-$$-$i" "bf-$$-$i"; done
  for i in $(seq "$COUNT" $((COUNT + SYNCS - 1))); do drop_netns "bc-$$-$i" "be-$$-$i" "bp-$$-$i"; done
  drop_netns "$NODE"
  rm -rf "$WORK"
}
trap cleanup EXIT

make_node "$NODE"
for i in $(seq 0 $((COUNT - 1))); do
  make_pod "bc-$$-$i"; make_pod "be-$$-$i"; make_pod "bp-$$-$i"; make_pod "bf-$$-$i"
done
for i in $(seq "$COUNT" $((COUNT + SYNCS - 1))); do make_pod "bc-$$-$i"; make_pod "be-$$-$i"; make_pod "bp-$$-$i"; done
# One store each for calico-cni with its IPAM in-process and with calico-ipam started.
for s in store store-exec; do
  DATASTORE_TYPE=local DATASTORE_PATH=$WORK/$s "$WORK/bin/calico-ipam" pool apply -f testdata/pools/seed-pools.yaml >/dev/null
done

jq -nc --arg store "$WORK/store" --arg lock "$WORK/ipam.lock" '{
  cniVersion: "1.0.0", name: "k8s-pod-network", type: "calico", nodename: "bench-node",
  datastore_type: "local", datastore_path: $store, ipam_lock_file: $lock, mtu: 1500,
  ipam: {type: "calico-ipam", assign_ipv4: "true", assign_ipv6: "true"}}' > "$WORK/calico.json"
jq -c --arg store "$WORK/store-exec" --arg lock "$WORK/ipam-exec.lock" \
  '.datastore_path = $store | .ipam_lock_file = $lock | .ipam_in_process = false' \
  "$WORK/calico.json" > "$WORK/calico-exec.json"
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
# tm KEY START N [ENV=VAL...] CMD...: pods START..START+N-1 of measurement KEY, samples kept.
tm() {
  local key=$1 start=$2 n=$3
  shift 3
  ID_START=$start SAMPLES_FILE=$WORK/samples.$key in_node python3 "$T" "$key" "$n" -- "$@"
}
m_ca_add() { STDIN_FILE=$WORK/calico.json ID_PREFIX=c tm ca_add "$@" \
  CNI_COMMAND=ADD "CNI_NETNS=/var/run/netns/bc-$$-{i}" "${cni_env[@]}" "$WORK/bin/calico"; }
m_ce_add() { STDIN_FILE=$WORK/calico-exec.json ID_PREFIX=e tm ce_add "$@" \
  CNI_COMMAND=ADD "CNI_NETNS=/var/run/netns/be-$$-{i}" "${cni_env[@]}" "$WORK/bin/calico"; }
m_ptp_add() { STDIN_FILE=$WORK/ptp.json ID_PREFIX=p tm ptp_add "$@" \
  CNI_COMMAND=ADD "CNI_NETNS=/var/run/netns/bp-$$-{i}" "${cni_env[@]}" "$WORK/bin/ptp"; }
m_fl_add() { tm fl_add "$@" \
  ip -batch "$WORK/floor-{i}.node" "&&" ip -n "bf-$$-{i}" -batch "$WORK/floor-{i}.pod"; }
m_ca_del() { STDIN_FILE=$WORK/calico.json ID_PREFIX=c tm ca_del "$@" \
  CNI_COMMAND=DEL "CNI_NETNS=/var/run/netns/bc-$$-{i}" "${cni_env[@]}" "$WORK/bin/calico"; }
m_ce_del() { STDIN_FILE=$WORK/calico-exec.json ID_PREFIX=e tm ce_del "$@" \
  CNI_COMMAND=DEL "CNI_NETNS=/var/run/netns/be-$$-{i}" "${cni_env[@]}" "$WORK/bin/calico"; }
m_ptp_del() { STDIN_FILE=$WORK/ptp.json ID_PREFIX=p tm ptp_del "$@" \
  CNI_COMMAND=DEL "CNI_NETNS=/var/run/netns/bp-$$-{i}" "${cni_env[@]}" "$WORK/bin/ptp"; }
m_fl_del() { tm fl_del "$@" ip link del "bfl{i}"; }
# rounds KEY...: ROUNDS rounds, each a slice of the pods of every measurement, the order
# rotated from round to round.
rounds() {
  local keys=("$@") r j start n
  for r in $(seq 0 $((ROUNDS - 1))); do
    start=$((r * COUNT / ROUNDS)); n=$(((r + 1) * COUNT / ROUNDS - start))
    [ "$n" -gt 0 ] || continue
    for j in $(seq 0 $((${#keys[@]} - 1))); do
      "m_${keys[$(((j + r) % ${#keys[@]}))]}" "$start" "$n"
    done
  done
}
summary() { python3 "$T" --summary "$1" "$WORK/samples.$2"; }
echo "# $COUNT dual-stack pods per measurement, whole process, one at a time, inside node netns $NODE," \
  "in $ROUNDS interleaved rounds" >&2
rounds ca_add ce_add ptp_add fl_add
rounds ca_del ce_del ptp_del fl_del
R_CA_ADD=$(summary "calico-cni ADD, IPAM in-process" ca_add)
R_CE_ADD=$(summary "calico-cni ADD, calico-ipam exec'd" ce_add)
R_PTP_ADD=$(summary "ptp+host-local ADD" ptp_add)
R_FL_ADD=$(summary "ip -batch (kernel floor) ADD" fl_add)
R_CA_DEL=$(summary "calico-cni DEL, IPAM in-process" ca_del)
R_CE_DEL=$(summary "calico-cni DEL, calico-ipam exec'd" ce_del)
R_PTP_DEL=$(summary "ptp+host-local DEL" ptp_del)
R_FL_DEL=$(summary "ip link del (kernel floor) DEL" fl_del)

# Syncs, counted on pods of their own (strace slows every system call).
syncs() { # syncs LABEL CONF PREFIX NETNS-PREFIX VERB BIN
  STDIN_FILE=$2 ID_PREFIX=$3 ID_START=$COUNT COUNT_SYNCS=1 in_node python3 $T "$1" "$SYNCS" -- \
    CNI_COMMAND="$5" "CNI_NETNS=/var/run/netns/$4-$$-{i}" "${cni_env[@]}" "$6" | jq .syncs_per_run
}
S_CA_ADD=$(syncs "calico-cni ADD" "$WORK/calico.json" c bc ADD "$WORK/bin/calico")
S_CA_DEL=$(syncs "calico-cni DEL" "$WORK/calico.json" c bc DEL "$WORK/bin/calico")
S_CE_ADD=$(syncs "calico-cni ADD, exec'd" "$WORK/calico-exec.json" e be ADD "$WORK/bin/calico")
S_CE_DEL=$(syncs "calico-cni DEL, exec'd" "$WORK/calico-exec.json" e be DEL "$WORK/bin/calico")
S_PTP_ADD=$(syncs "ptp+host-local ADD" "$WORK/ptp.json" p bp ADD "$WORK/bin/ptp")
S_PTP_DEL=$(syncs "ptp+host-local DEL" "$WORK/ptp.json" p bp DEL "$WORK/bin/ptp")
SYNC_COST=$(python3 scripts/bench/synccost.py "$WORK")

median() { jq -r .median_ms <<<"$1"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
printf '\n%-38s %10s %10s %10s %8s\n' "measurement" "median ms" "p10 ms" "p90 ms" "syncs"
row() { # row RESULT SYNCS
  jq -r --arg s "$2" '[.label, .median_ms, .p10_ms, .p90_ms, $s] | @tsv' <<<"$1" |
    awk -F'\t' '{printf "%-38s %10s %10s %10s %8s\n", $1, $2, $3, $4, $5}'
}
row "$R_CA_ADD" "$S_CA_ADD"
row "$R_CE_ADD" "$S_CE_ADD"
row "$R_PTP_ADD" "$S_PTP_ADD"
row "$R_FL_ADD" ""
row "$R_CA_DEL" "$S_CA_DEL"
row "$R_CE_DEL" "$S_CE_DEL"
row "$R_PTP_DEL" "$S_PTP_DEL"
row "$R_FL_DEL" ""
echo
echo "syncs: fsync+fdatasync+sync_file_range+syncfs per operation, all processes, mean of $SYNCS (strace -c -f)"
echo "stores: $WORK/store, $WORK/store-exec ($(df --output=fstype,source "$WORK" | tail -1 | xargs))"
echo "sync cost of that disk, medians: $(jq -r '"4 KiB overwrite + fdatasync \(.overwrite_fdatasync_ms) ms, 4 KiB append + fdatasync \(.append_fdatasync_ms) ms, durable file replace (write, fsync, rename, fsync dir) \(.durable_replace_ms) ms"' <<<"$SYNC_COST")"
echo "ADD: calico-cni in-process / ip -batch floor = $(ratio "$(median "$R_CA_ADD")" "$(median "$R_FL_ADD")")x (goal <= 1.5x)"
echo "ADD: calico-cni exec'd / ip -batch floor = $(ratio "$(median "$R_CE_ADD")" "$(median "$R_FL_ADD")")x"
echo "ADD: calico-cni in-process / exec'd = $(ratio "$(median "$R_CA_ADD")" "$(median "$R_CE_ADD")")x"
echo "ADD: ptp+host-local / calico-cni in-process = $(ratio "$(median "$R_PTP_ADD")" "$(median "$R_CA_ADD")")x"
echo "DEL: calico-cni in-process / ip link del = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_FL_DEL")")x"
echo "DEL: calico-cni exec'd / ip link del = $(ratio "$(median "$R_CE_DEL")" "$(median "$R_FL_DEL")")x"
echo "DEL: calico-cni in-process / exec'd = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_CE_DEL")")x"
echo "DEL: calico-cni in-process / ptp+host-local = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_PTP_DEL")")x"
