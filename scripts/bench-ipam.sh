#!/usr/bin/env bash
# Whole-process ADD and DEL latency of calico-ipam (local store, dual-stack) beside Debian's
# host-local doing the same dual-stack ranges, in the same run; then calico-ipam's ADD again once
# the store holds 5,000 blocks claimed by simulated nodes. Prints medians and ratios, the syncs
# (fsync, fdatasync, sync_file_range, syncfs) per ADD and per DEL counted with strace in separate
# runs, and the disk's sync cost. host-local and calico-ipam are interleaved in ROUNDS rounds
# (default 5), so that the load of a shared machine drifts over both alike. The stores live on the
# real disk: BENCH_DIR (default /var/tmp), never a tmpfs.
#   scripts/bench-ipam.sh [COUNT]      (default 200 pods per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-200}
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
REL=${FROM:-$(scripts/build-release.sh)}   # FROM=DIR: binaries built already (as bench-kdd.sh)
IPAM=$REL/calico-ipam
HOSTLOCAL=/usr/lib/cni/host-local
SYNCS=${SYNCS:-20}   # runs per sync count
ROUNDS=${ROUNDS:-5}
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-ipam.XXXX")
trap 'rm -rf "$WORK"' EXIT
FS=$(stat -f -c %T "$WORK")   # "tmpfs", or "ext2/ext3" for ext4 and the like
[ "$FS" != tmpfs ] || { echo "bench-ipam.sh: $WORK is on tmpfs; set BENCH_DIR to a disk" >&2; exit 1; }
T=scripts/bench/timer.py
CNIENV=(CNI_NETNS=/var/run/netns/bench CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni)

DATASTORE_TYPE=local DATASTORE_PATH=$WORK/store "$IPAM" pool apply -f testdata/pools/bench-pools.yaml >/dev/null

calico_conf() { # calico_conf NODE
  jq -nc --arg store "$WORK/store" --arg lock "$WORK/ipam.lock" --arg node "$1" '{
    cniVersion: "1.0.0", name: "k8s-pod-network", type: "calico",
    datastore_type: "local", datastore_path: $store, ipam_lock_file: $lock, nodename: $node,
    ipam: {type: "calico-ipam", assign_ipv4: "true", assign_ipv6: "true"}}'
}
calico_conf bench-node > "$WORK/calico.json"
jq -nc --arg dir "$WORK/host-local" '{
  cniVersion: "1.0.0", name: "k8s-pod-network", type: "ptp",
  ipam: {type: "host-local", dataDir: $dir,
         ranges: [[{subnet: "10.0.0.0/12"}], [{subnet: "fd00:10:244::/48"}]]}}' > "$WORK/host-local.json"

run() { # run LABEL BIN CONF VERB PREFIX
  STDIN_FILE=$3 ID_PREFIX=$5 python3 $T "$1" "$COUNT" -- CNI_COMMAND="$4" "${CNIENV[@]}" "$2"
}
# interleaved KEY-A BIN-A CONF-A PREFIX-A KEY-B BIN-B CONF-B PREFIX-B VERB: ROUNDS rounds of a
# slice of the runs of each, A first in even rounds, B first in odd ones; samples in $WORK/samples.KEY.
interleaved() {
  local r start n side
  for r in $(seq 0 $((ROUNDS - 1))); do
    start=$((r * COUNT / ROUNDS)); n=$(((r + 1) * COUNT / ROUNDS - start))
    [ "$n" -gt 0 ] || continue
    for side in $((r % 2)) $((1 - r % 2)); do
      local args=("${@:$((1 + side * 4)):4}")
      STDIN_FILE=${args[2]} ID_PREFIX=${args[3]} ID_START=$start SAMPLES_FILE=$WORK/samples.${args[0]} \
        python3 $T "${args[0]}" "$n" -- CNI_COMMAND="$9" "${CNIENV[@]}" "${args[1]}"
    done
  done
}
summary() { python3 $T --summary "$1" "$WORK/samples.$2"; }

echo "# $COUNT dual-stack allocations per measurement, whole process, one at a time, in $ROUNDS interleaved rounds" >&2
interleaved hl_add "$HOSTLOCAL" "$WORK/host-local.json" hl ca_add "$IPAM" "$WORK/calico.json" ca ADD
interleaved hl_del "$HOSTLOCAL" "$WORK/host-local.json" hl ca_del "$IPAM" "$WORK/calico.json" ca DEL
R_HL_ADD=$(summary "host-local ADD" hl_add)
R_CA_ADD=$(summary "calico-ipam ADD (empty store)" ca_add)
R_HL_DEL=$(summary "host-local DEL" hl_del)
R_CA_DEL=$(summary "calico-ipam DEL" ca_del)

# Syncs, counted in runs of their own (strace slows every system call).
syncs() { # syncs LABEL BIN CONF VERB PREFIX
  STDIN_FILE=$3 ID_PREFIX=$5 COUNT_SYNCS=1 python3 $T "$1" "$SYNCS" -- CNI_COMMAND="$4" "${CNIENV[@]}" "$2" | jq .syncs_per_run
}
S_HL_ADD=$(syncs "host-local ADD" "$HOSTLOCAL" "$WORK/host-local.json" ADD hls)
S_HL_DEL=$(syncs "host-local DEL" "$HOSTLOCAL" "$WORK/host-local.json" DEL hls)
S_CA_ADD=$(syncs "calico-ipam ADD" "$IPAM" "$WORK/calico.json" ADD cas)
S_CA_DEL=$(syncs "calico-ipam DEL" "$IPAM" "$WORK/calico.json" DEL cas)
SYNC_COST=$(python3 scripts/bench/synccost.py "$WORK")

# 5,000 blocks: 2,500 simulated nodes each claim one IPv4 /26 and one IPv6 /122 block.
echo "# filling the store with 5,000 blocks from 2,500 simulated nodes" >&2
for i in $(seq 0 2499); do
  calico_conf "sim-node-$i" > "$WORK/sim.json"
  CNI_COMMAND=ADD CNI_CONTAINERID="sim$i" CNI_NETNS=/var/run/netns/bench CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    "$IPAM" < "$WORK/sim.json" > /dev/null 2> "$WORK/sim.err" || { cat "$WORK/sim.err" >&2; exit 1; }
done
BLOCKS=$(DATASTORE_TYPE=local DATASTORE_PATH=$WORK/store "$IPAM" show --show-blocks -o json | jq '.blocks | length')
R_CA_ADD_FULL=$(run "calico-ipam ADD (5,000-block store)" "$IPAM" "$WORK/calico.json" ADD full)

median() { jq -r .median_ms <<<"$1"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
printf '\n%-40s %10s %10s %10s %8s\n' "measurement" "median ms" "p10 ms" "p90 ms" "syncs"
row() { # row RESULT SYNCS
  jq -r --arg s "$2" '[.label, .median_ms, .p10_ms, .p90_ms, $s] | @tsv' <<<"$1" |
    awk -F'\t' '{printf "%-40s %10s %10s %10s %8s\n", $1, $2, $3, $4, $5}'
}
row "$R_HL_ADD" "$S_HL_ADD"
row "$R_CA_ADD" "$S_CA_ADD"
row "$R_CA_ADD_FULL" ""
row "$R_HL_DEL" "$S_HL_DEL"
row "$R_CA_DEL" "$S_CA_DEL"
echo
echo "syncs: fsync+fdatasync+sync_file_range+syncfs per operation, all processes, mean of $SYNCS (strace -c -f)"
echo "store: $WORK ($(df --output=fstype,source "$WORK" | tail -1 | xargs))"
echo "sync cost of that disk, medians: $(jq -r '"4 KiB overwrite + fdatasync \(.overwrite_fdatasync_ms) ms, 4 KiB append + fdatasync \(.append_fdatasync_ms) ms, durable file replace (write, fsync, rename, fsync dir) \(.durable_replace_ms) ms"' <<<"$SYNC_COST")"
echo "blocks in the filled store: $BLOCKS"
echo "ADD: calico-ipam / host-local = $(ratio "$(median "$R_CA_ADD")" "$(median "$R_HL_ADD")") (goal <= 0.5)"
echo "DEL: calico-ipam / host-local = $(ratio "$(median "$R_CA_DEL")" "$(median "$R_HL_DEL")")"
echo "ADD: 5,000-block store / empty store = $(ratio "$(median "$R_CA_ADD_FULL")" "$(median "$R_CA_ADD")")"
