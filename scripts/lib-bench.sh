# shellcheck shell=bash
# What the one-node datastore benchmarks (bench-kdd.sh, bench-etcd.sh) share: their arguments,
# the release binaries, a node netns with a pod netns per pod and their removal, and the table
# of the three phases. Source it from the repository root after lib-netns.sh.

# bench_init NAME NODE_PREFIX POD_PREFIX [COUNT] [--from DIR]: root check, dependencies, and
# COUNT (default 50), REL (DIR, default scripts/build-release.sh), WORK (a new directory whose
# bin/ holds calico and calico-ipam), NODE and P (the node's and the pods' netns names).
bench_init() {
  local name=$1 from=''
  NODE=$2-node-$$
  P=$3$$p
  shift 3
  COUNT=50
  while [ $# -gt 0 ]; do
    case "$1" in
      --from) from=$2; shift 2 ;;
      *) COUNT=$1; shift ;;
    esac
  done
  [ "$(id -u)" = 0 ] || { echo "$name.sh: run as root" >&2; exit 1; }
  export PATH="$HOME/.cargo/bin:$PATH:/usr/local/go/bin"
  scripts/install-deps.sh
  REL=${from:-$(scripts/build-release.sh)}
  WORK=$(mktemp -d "/tmp/$name.XXXX")
  mkdir "$WORK/bin"
  cp "$REL/calico-cni" "$WORK/bin/calico"
  cp "$REL/calico-ipam" "$WORK/bin/calico-ipam"
}

# bench_netns: the node netns and COUNT + 1 pod netns.
bench_netns() {
  make_node "$NODE"
  for i in $(seq 0 "$COUNT"); do make_pod "$P$i"; done
}

# bench_drop: removes what bench_netns made and WORK (call it from the script's EXIT trap).
bench_drop() {
  for i in $(seq 0 "$COUNT"); do drop_netns "$P$i"; done
  drop_netns "$NODE"
  rm -rf "$WORK"
}

# bench_table WHAT JSON: one line per phase of scripts/bench/{kdd,etcd}.py's answer: latency
# median, p10, p90 and the requests (WHAT: what was counted) per operation.
bench_table() {
  local phase label
  printf '%-34s %9s %9s %9s   %-24s\n' "dual-stack pod, $COUNT pods" "median ms" "p10 ms" "p90 ms" "$1 min/med/max (mean)"
  for phase in first_add add del; do
    label=$(case $phase in first_add) echo "first ADD on the node";; add) echo "ADD (steady state)";; del) echo "DEL";; esac)
    jq -r --arg p "$phase" --arg l "$label" '.[$p] | [$l, .latency_ms.median, .latency_ms.p10, .latency_ms.p90,
        "\(.requests.min)/\(.requests.median)/\(.requests.max) (\(.requests.mean))"] | @tsv' <<<"$2" |
      awk -F'\t' '{printf "%-34s %9s %9s %9s   %s\n", $1, $2, $3, $4, $5}'
  done
}
