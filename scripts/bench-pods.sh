#!/usr/bin/env bash
# Pods per second through kubelet: N pods created at once (one `kubectl apply` of N Pod objects)
# on a one-node scripts/kube-cluster, with our calico + calico-ipam (Kubernetes datastore) and
# with Debian's ptp + host-local (--cni ptp), in the same run. For each: the time from creation
# (just before the apply) to the pod's being Ready with both podIPs (seen on a watch), p50, p99
# and max; and the CNI ADD's share of it: the main plugin's ADD (calico with its IPAM, ptp with
# host-local; portmap after it not counted) timed by a wrapper put in its place in the node's
# CNI bin dir, summed over the pods and divided by the sum of their creation-to-Ready times.
#
# usage: scripts/bench-pods.sh [N] [--from DIR] [--only ours|ptp]   (N default 10)
# Root; Debian 12. Prints a Markdown table row per CNI.
set -euo pipefail
RT_NAME=bench-pods
source "$(dirname "$0")/lib-runtimes.sh"

N=10 FROM='' ONLY=''
while [ $# -gt 0 ]; do
  case $1 in
    --from) FROM=$2; shift ;;
    --only) ONLY=$2; shift ;;
    [0-9]*) N=$1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench-pods: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
rt_require_root
FROM=$(rt_binaries_dir "$FROM")
KC=$RT_REPO/scripts/kube-cluster
T=$(mktemp -d /tmp/kcb.XXXXXX)
trap '"$KC" down "$T/c" >/dev/null 2>&1; rm -rf "$T"' EXIT

# bench CNI: one cluster, N pods, the numbers as a table row.
bench() {
  local cni=$1 c=$T/c bin main real i
  step "$cni: kube-cluster up"
  "$KC" up "$c" --cni "$cni" --from "$FROM" >"$T/up.log" 2>&1 || { cat "$T/up.log" >&2; fail "kube-cluster up --cni $cni failed"; }
  bin=$c/nodes/node-1/bin
  if [ "$cni" = ours ]; then main=calico; else main=ptp; fi
  real=$(readlink -f "$bin/$main")
  cp "$real" "$bin/.$main-real" 2>/dev/null || true
  # The timing wrapper: CNI_COMMAND, the pod's name, start and end (ns) of the real plugin.
  cat >"$bin/$main.tmp" <<EOF
#!/bin/bash
s=\$(date +%s%N)
"$bin/.$main-real" "\$@"
rc=\$?
e=\$(date +%s%N)
p=\${CNI_ARGS##*K8S_POD_NAME=}
echo "\$CNI_COMMAND \${p%%;*} \$s \$e \$rc" >>"$T/cni-times"
exit \$rc
EOF
  chmod +x "$bin/$main.tmp"
  mv -f "$bin/$main.tmp" "$bin/$main"
  : >"$T/cni-times"
  for i in $(seq "$N"); do
    printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: b-%s\n  labels: {app: bench}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n    - name: s\n      image: busybox\n      imagePullPolicy: IfNotPresent\n      command: ["sleep", "36000"]\n---\n' "$i"
  done >"$T/pods.yaml"
  # Ready with both addresses, as a watch sees it (timestamped on arrival).
  "$KC" kubectl "$c" get pods -l app=bench --watch -o \
    jsonpath='{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.status.podIPs[*].ip}{"\n"}' 2>/dev/null |
    python3 -u -c '
import sys, time
for line in sys.stdin:
    print("%.6f %s" % (time.time(), line.strip()), flush=True)
' >"$T/watch" &
  local wpid=$!
  sleep 2
  step "$cni: creating $N pods"
  local t0
  t0=$(date +%s.%N)
  "$KC" kubectl "$c" apply -f "$T/pods.yaml" >/dev/null || fail "kubectl apply failed"
  local deadline=$((SECONDS + 600))
  while :; do
    [ "$(awk 'NF >= 4 && $3 == "True" { print $2 }' "$T/watch" | sort -u | wc -l)" -ge "$N" ] && break
    [ $SECONDS -lt $deadline ] || fail "$cni: not all $N pods Ready within 600 s"
    sleep 0.5
  done
  kill "$wpid" 2>/dev/null || true
  python3 - "$t0" "$T/watch" "$T/cni-times" "$N" "$cni" <<'PY'
import sys
t0, watch, times, n, cni = float(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
ready = {}
for line in open(watch):
    f = line.split()
    if len(f) >= 5 and f[2] == "True" and f[1] not in ready:
        ready[f[1]] = float(f[0]) - t0
add = {}
for line in open(times):
    f = line.split()
    if len(f) == 5 and f[0] == "ADD" and f[4] == "0":
        add[f[1]] = (int(f[3]) - int(f[2])) / 1e9
lat = sorted(ready.values())
def pct(p):
    return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]
adds = sorted(add.values())
share = sum(add.get(p, 0) for p in ready) / sum(lat)
label = "ours (calico + calico-ipam, KDD)" if cni == "ours" else "ptp + host-local"
print(f"| {label} | {n} | {pct(50):.2f} | {pct(99):.2f} | {lat[-1]:.2f} | {adds[len(adds) // 2] * 1000:.0f} | {share * 100:.1f} % |")
PY
  step "$cni: kube-cluster down"
  "$KC" down "$c"
}

echo "| CNI | pods | p50 creation→Ready (s) | p99 (s) | max (s) | ADD p50 (ms) | ADD share |"
echo "|---|---|---|---|---|---|---|"
for cni in ours ptp; do
  [ -z "$ONLY" ] || [ "$ONLY" = "$cni" ] || continue
  bench "$cni"
done
