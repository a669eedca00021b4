#!/usr/bin/env bash
# Real client #2: containerd 1.6 (Debian) and its CRI plugin, the kubelet's path to CNI, driven by
# crictl. containerd runs inside a throwaway node netns with its own root, state, socket and CNI
# dirs (bin_dir = symlinks to Debian's plugins incl. loopback + our calico and calico-ipam,
# conf_dir = our conflist from scripts/install-cni.sh, with the portMappings capability declared).
# The sandbox image is a static pause built here and imported with ctr.
#   RunPodSandbox (name/namespace/uid metadata, a port mapping) -> containerd calls our ADD with
#   K8S_POD_* CNI_ARGS and capitalised runtimeConfig keys (HostPort); PodSandboxStatus shows the
#   IPv4 address as `ip` and the IPv6 one in `additional_ips`; the host veth in the node netns is
#   cali + sha1("<ns>.<pod>")[:11]. Two pods: they reach the node and each other over both
#   families. StopPodSandbox + RemovePodSandbox -> DEL (twice) for one pod leaves the other
#   intact; after both, nothing is left. A RunPodSandbox whose ADD fails (no IPPool) is followed
#   by containerd's DEL and leaves nothing. containerd is stopped by its pid.
#
# usage: scripts/test-containerd.sh [--from DIR] [--reference] [--cni-version V]
#   --from DIR        our built binaries (calico-cni, calico-ipam); default target/{debug,release}
#   --reference       validate the harness with Debian's ptp + host-local instead of ours
#   --cni-version V   the conflist's cniVersion (default 1.0.0; with 0.3.1, Calico's long-time
#                     default, containerd sends no prevResult on DEL)
# Root; Debian 12. Everything happens in namespaces and temp dirs this script creates.
set -euo pipefail
RT_NAME=test-containerd
source "$(dirname "$0")/lib-runtimes.sh"

rt_client_args "$@"

rt_require_root
ensure_apt containerd runc containernetworking-plugins gcc libc6-dev python3 jq iproute2 iputils-ping iptables
CRICTL=$(ensure_go_tool crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION")
[ "$MODE" = reference ] || FROM=$(rt_binaries_dir "$FROM")

T=$(mktemp -d "/tmp/calico-containerd.$$.XXXXXX")
NODE=ctrd-node-$$
PODNAME=ctrd-pod-$$ PODNS=default PODUID=ctrd-uid-$$
CGPARENT=calico-rs-test-ctrd-$$
BIN=$T/cnibin CONF=$T/net.d STATE=$T/state CACHE=$T/cache SOCK=$T/containerd.sock
mkdir -p "$BIN" "$STATE" "$CACHE" "$T/stash" "$T/run-containerd" "$T/netns" "$T/podlogs"
RT_DIAG_FILES=("$T/containerd.log" "$STATE/cni.log") # what fail() shows
IPT_BEFORE=$(iptables_cni_chains)

printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n' "$SOCK" "$SOCK" >"$T/crictl.yaml"
crictl() { "$CRICTL" --config "$T/crictl.yaml" "$@"; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
    # Stop and remove every sandbox (so the plugin DELs) before containerd goes.
    for id in $(crictl pods -q 2>/dev/null); do
      crictl stopp "$id" >/dev/null 2>&1
      crictl rmp "$id" >/dev/null 2>&1
    done
  fi
  # containerd by its pid, then the shims and pause processes in its private mount namespace.
  ctrd_kill
  rt_finish "$rc"
}
rt_on_exit cleanup

# ---------------------------------------------------------------------------------------------
step "mode $MODE, cniVersion $VERSION, $(containerd --version | cut -d' ' -f1-3), $(runc --version | head -n1), crictl $CRICTL_VERSION"

step "pause image"
PAUSE_TAR=$(rt_pause_image) || fail "no pause image"

step "CNI bin dir (Debian's plugins + ours) and conf dir"
for f in /usr/lib/cni/*; do ln -s "$f" "$BIN/"; done
[ -e "$BIN/loopback" ] || fail "no loopback plugin in /usr/lib/cni (containernetworking-plugins)"
if [ "$MODE" = ours ]; then
  rm -f "$BIN/calico" "$BIN/calico-ipam"
  install_ours "$FROM" "$BIN" "$CONF" "$STATE" "$NODE" --cni-version "$VERSION" --capabilities '{"portMappings":true}'
else
  mkdir -p "$CONF"
  write_reference_conflist "$CONF/10-calico.conflist" "$STATE" "" "$VERSION"
fi
jq -e '.plugins[0].capabilities.portMappings == true' "$CONF/10-calico.conflist" >/dev/null ||
  fail "conflist does not declare the portMappings capability"

ctrd_config "$T"
cat >>"$T/config.toml" <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:cni-test"
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$T/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$BIN"
    conf_dir = "$CONF"
    max_conf_num = 1
EOF

step "node netns $NODE; containerd inside it"
make_node "$NODE"
rt_mountpoint /var/lib/cni
ctrd_start "$T" "$NODE" "$T/stash" --bind "$CACHE" /var/lib/cni --bind "$T/netns" /run/netns
for _ in $(seq 50); do
  crictl version >/dev/null 2>&1 && break
  sleep 0.1
done
crictl version >/dev/null 2>&1 || fail "containerd's CRI does not answer on $SOCK"
crictl info 2>/dev/null | jq -e 'any(.status.conditions[]; .type == "NetworkReady" and .status == true)' >/dev/null ||
  fail "CRI reports the network not ready: $(crictl info 2>&1 | jq -c .status)"

ctrd_import "$PAUSE_TAR"

# ---------------------------------------------------------------------------------------------
# run_pod N NAME UID HOSTPORT: RunPodSandbox and check what the CNI ADD did; fills ID[N], IP4[N],
# IP6[N], PID[N] (the pause process), HOSTIF[N], RESULTFILE[N].
declare -A ID IP4 IP6 PID HOSTIF RESULTFILE
run_pod() {
  local n=$1 name=$2 uid=$3 port=$4 status result args kv k v want
  step "RunPodSandbox $PODNS/$name (uid $uid, port $port->80)"
  jq -n --arg name "$name" --arg ns "$PODNS" --arg uid "$uid" --arg logs "$T/podlogs" \
    --arg cg "/$CGPARENT" --argjson port "$port" '{
      metadata: {name: $name, namespace: $ns, uid: $uid, attempt: 0},
      hostname: $name, log_directory: $logs,
      port_mappings: [{protocol: 0, container_port: 80, host_port: $port}],
      linux: {cgroup_parent: $cg}}' >"$T/pod$n.json"
  ID[$n]=$(crictl runp "$T/pod$n.json" 2>"$T/runp.err") || { cat "$T/runp.err" >&2; fail "RunPodSandbox $name failed"; }
  echo "    sandbox ${ID[$n]}"
  status=$(crictl inspectp -o json "${ID[$n]}" 2>/dev/null) || fail "PodSandboxStatus failed"
  [ "$(jq -r .status.state <<<"$status")" = SANDBOX_READY ] || fail "sandbox not ready: $(jq -c .status <<<"$status")"
  IP4[$n]=$(jq -r '.status.network.ip // empty' <<<"$status")
  IP6[$n]=$(jq -r '.status.network.additionalIps[0].ip // empty' <<<"$status")
  echo "    PodSandboxStatus network: $(jq -c .status.network <<<"$status")"
  [[ ${IP4[$n]} =~ ^[0-9.]+$ ]] || fail "sandbox ip is '${IP4[$n]}', want the IPv4 address"
  [[ ${IP6[$n]} == *:* ]] || fail "sandbox additional_ips[0] is '${IP6[$n]}', want the IPv6 address"
  if [ "$MODE" = ours ]; then
    [[ ${IP4[$n]} == 10.244.* ]] || fail "IPv4 ${IP4[$n]} is not from $RT_POOL_V4"
    [[ ${IP6[$n]} == fd00:10:244:* ]] || fail "IPv6 ${IP6[$n]} is not from $RT_POOL_V6"
  fi
  PID[$n]=$(jq -r '.info.pid' <<<"$status")
  [[ ${PID[$n]} =~ ^[0-9]+$ ]] || fail "no pause pid in the sandbox info"

  RESULTFILE[$n]=$CACHE/results/k8s-pod-network-${ID[$n]}-eth0
  [ -f "${RESULTFILE[$n]}" ] || fail "no libcni cache file ${RESULTFILE[$n]}: $(ls "$CACHE/results" 2>&1)"
  args=$(jq -c '.cniArgs' "${RESULTFILE[$n]}")
  for kv in "K8S_POD_NAMESPACE=$PODNS" "K8S_POD_NAME=$name" "K8S_POD_INFRA_CONTAINER_ID=${ID[$n]}" "K8S_POD_UID=$uid"; do
    k=${kv%%=*} v=${kv#*=}
    jq -e --arg k "$k" --arg v "$v" 'any(.[]; .[0] == $k and .[1] == $v)' <<<"$args" >/dev/null ||
      fail "containerd did not pass $k=$v in CNI_ARGS: $args"
  done
  jq -e --argjson port "$port" '.capabilityArgs.portMappings[0].HostPort == $port' "${RESULTFILE[$n]}" >/dev/null ||
    fail "containerd did not send portMappings with capitalised HostPort: $(jq -c .capabilityArgs "${RESULTFILE[$n]}")"
  echo "    runtimeConfig sent: $(jq -c .capabilityArgs "${RESULTFILE[$n]}")"
  result=$(jq -c .result "${RESULTFILE[$n]}")
  echo "    CNI result: $result"
  [ "$(jq -r .cniVersion <<<"$result")" = "$VERSION" ] || fail "cached result is not cniVersion $VERSION"
  HOSTIF[$n]=$(jq -r '.interfaces[] | select((.sandbox // "") == "") | .name' <<<"$result" | head -n1)
  if [ "$MODE" = ours ]; then
    want=$(veth_name "$PODNS" "$name")
    [ "${HOSTIF[$n]}" = "$want" ] || fail "host interface in the result is '${HOSTIF[$n]}', want $want = cali + sha1($PODNS.$name)[:11]"
    jq -e '[.ips[].gateway] | sort == ["169.254.1.1", "fe80::1"]' <<<"$result" >/dev/null ||
      fail "gateways are not 169.254.1.1 and fe80::1: $result"
  fi
  ip -n "$NODE" link show "${HOSTIF[$n]}" >/dev/null 2>&1 ||
    fail "host interface ${HOSTIF[$n]} is not in the node netns: $(host_links "$NODE")"
  local addrs
  addrs=$(nsenter -t "${PID[$n]}" -n ip -o addr show eth0)
  has "$addrs" "inet ${IP4[$n]}/" || fail "pod eth0 lacks ${IP4[$n]}: $addrs"
  has "$addrs" "inet6 ${IP6[$n]}/" || fail "pod eth0 lacks ${IP6[$n]}: $addrs"
}

# pings N WHAT DST4 DST6: pod N reaches DST4 and DST6 (a few tries: IPv6 DAD on the reference).
pings() {
  local n=$1 what=$2 ok4=0 ok6=0
  for _ in $(seq 10); do
    [ $ok4 = 1 ] || { nsenter -t "${PID[$n]}" -n ping -c1 -W1 "$3" >/dev/null 2>&1 && ok4=1; }
    [ $ok6 = 1 ] || { nsenter -t "${PID[$n]}" -n ping -6 -c1 -W1 "$4" >/dev/null 2>&1 && ok6=1; }
    [ $ok4$ok6 = 11 ] && break
    sleep 0.5
  done
  [ $ok4 = 1 ] || fail "pod $n cannot ping $what $3 over IPv4"
  [ $ok6 = 1 ] || fail "pod $n cannot ping $what $4 over IPv6"
}

# stop_remove N: StopPodSandbox (DEL with prevResult for >= 0.4.0) and RemovePodSandbox (DEL
# again, without), checking the pod's host interface and cache entry are gone.
stop_remove() {
  local n=$1
  step "StopPodSandbox + RemovePodSandbox pod $n"
  crictl stopp "${ID[$n]}" >/dev/null 2>"$T/stopp.err" || { cat "$T/stopp.err" >&2; fail "StopPodSandbox failed"; }
  if ip -n "$NODE" link show "${HOSTIF[$n]}" >/dev/null 2>&1; then
    fail "host interface ${HOSTIF[$n]} still exists after StopPodSandbox"
  fi
  [ ! -e "${RESULTFILE[$n]}" ] || fail "libcni cache file still there after StopPodSandbox"
  crictl rmp "${ID[$n]}" >/dev/null 2>"$T/rmp.err" || { cat "$T/rmp.err" >&2; fail "RemovePodSandbox failed"; }
}

run_pod 1 "$PODNAME" "$PODUID" 18081
run_pod 2 "$PODNAME-b" "$PODUID-b" 18082
[ "${IP4[1]}" != "${IP4[2]}" ] && [ "${IP6[1]}" != "${IP6[2]}" ] || fail "the two pods got the same address"
step "pod 1 -> node, pod 1 -> pod 2, over IPv4 and IPv6"
pings 1 "the node" 192.0.2.10 2001:db8::10
pings 1 "pod 2" "${IP4[2]}" "${IP6[2]}"
stop_remove 1
step "pod 2 unaffected"
ip -n "$NODE" link show "${HOSTIF[2]}" >/dev/null 2>&1 || fail "pod 2's host interface went away with pod 1"
pings 2 "the node" 192.0.2.10 2001:db8::10
stop_remove 2
[ -z "$(crictl pods -q 2>/dev/null)" ] || fail "sandboxes left: $(crictl pods 2>&1)"

if [ "$MODE" = ours ]; then
  step "a failed ADD (no IPPool) -> containerd DELs, nothing leaks"
  ipam_cli() { DATASTORE_TYPE=local DATASTORE_PATH=$STATE/ipam "$BIN/calico-ipam" "$@"; }
  ipam_cli pool delete ipv4-pool >/dev/null && ipam_cli pool delete ipv6-pool >/dev/null || fail "calico-ipam pool delete failed"
  jq -n --arg ns "$PODNS" --arg uid "$PODUID-c" --arg cg "/$CGPARENT" \
    '{metadata: {name: "nopool", namespace: $ns, uid: $uid, attempt: 0}, linux: {cgroup_parent: $cg}}' >"$T/pod3.json"
  if crictl runp "$T/pod3.json" >/dev/null 2>"$T/runp.err"; then fail "RunPodSandbox succeeded without IPPools"; fi
  has "$(cat "$T/runp.err")" 'calico\" failed (add)' || fail "unexpected RunPodSandbox error: $(cat "$T/runp.err")"
  echo "    $(grep -o 'failed to setup network.*' "$T/runp.err" | head -n1 | cut -c1-220)"
  [ -z "$(crictl pods -q 2>/dev/null)" ] || fail "a failed sandbox was left: $(crictl pods 2>&1)"
  ipam_cli pool apply -f "$RT_REPO/testdata/pools/seed-pools.yaml" >/dev/null || fail "re-applying the pools failed"
fi

step "nothing left"
assert_nothing_left
[ -z "$(ls -A "$T/netns")" ] || fail "sandbox netns left: $(ls "$T/netns")"

step "stop containerd (pid $CTRD_PID)"
ctrd_stop

step "PASS ($MODE) in $(rt_elapsed)s"
