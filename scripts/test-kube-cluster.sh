#!/usr/bin/env bash
# kubelet runs our CNI: a real Kubernetes cluster (scripts/kube-cluster: kube-apiserver + etcd,
# scheduler, controller-manager, and a node with containerd + kubelet in namespaces of its own)
# whose pods are networked by our calico + calico-ipam in Kubernetes-datastore mode.
#   - The seed's experiment 1: its two IPPools applied with `calico-ipam pool apply -f` and
#     listed (`pool list -o wide`).
#   - The seed's experiment 3: its dual-stack pod (busybox, sleep 3600; named dual-stack-pod,
#     imagePullPolicy IfNotPresent added) becomes Running; `kubectl get pod -o
#     jsonpath='{.status.podIPs}'` holds one IPv4 address from 10.244.0.0/16 and one IPv6 address
#     from fd00:10:244::/48, the ones our IPAM recorded for that pod; a second pod pings both
#     (kubectl exec); `ip -6 route` in the pod shows the default route via fe80::1; the pod's
#     annotations carry podIP, podIPs and containerID. Deleting the pods leaves no veth, route
#     or allocation, and `calico-ipam ipam check` is clean.
#   - A component that fails to start (a kubelet with a bad flag) makes `kube-cluster up` fail
#     with its log tail and leaves nothing behind.
#
# usage: scripts/test-kube-cluster.sh [--from DIR]
#   --from DIR   our built binaries (calico-cni, calico-ipam); default target/{debug,release}
# Root; Debian 12; builds the kube-testenv launcher if it is not cached (scripts/kube-testenv).
set -euo pipefail
RT_NAME=test-kube-cluster
source "$(dirname "$0")/lib-runtimes.sh"

rt_client_args "$@"
rt_require_root
FROM=$(rt_binaries_dir "$FROM")
KC=$RT_REPO/scripts/kube-cluster

T=$(mktemp -d /tmp/kct.XXXXXX)
C=$T/c
cleanup() {
  local rc=$?
  set +e
  "$KC" down "$C"
  "$KC" down "$T/broken" 2>/dev/null
  "$KC" down "$T/c2" 2>/dev/null
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kc() { "$KC" kubectl "$C" "$@"; }
kx() { "$KC" exec "$C" node-1 "$@"; }

# in_net CIDR IP: IP lies in CIDR.
in_net() { python3 -c 'import ipaddress, sys; sys.exit(ipaddress.ip_address(sys.argv[2]) not in ipaddress.ip_network(sys.argv[1]))' "$1" "$2"; }

# deployment CLUSTER NAME REPLICAS [spread]: a busybox Deployment (spread over the nodes).
deployment() {
  local spread=''
  [ -z "${4:-}" ] || spread='
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: '"$2"'}}}'
  "$KC" kubectl "$1" apply -f - <<EOF >/dev/null || fail "kubectl apply deployment $2 failed"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $2
spec:
  replicas: $3
  selector:
    matchLabels: {app: $2}
  template:
    metadata:
      labels: {app: $2}
    spec:
      terminationGracePeriodSeconds: 0$spread
      containers:
        - name: sleep
          image: busybox
          imagePullPolicy: IfNotPresent
          command: ["sleep", "36000"]
EOF
}

# settle CLUSTER NAME REPLICAS [TIMEOUT]: wait until the Deployment has exactly REPLICAS pods, all
# Ready with two podIPs, and no other pod of it exists (terminating ones gone).
settle() {
  local c=$1 name=$2 want=$3 deadline=$((SECONDS + ${4:-300})) out n ready
  while :; do
    out=$("$KC" kubectl "$c" get pods -l "app=$name" -o json 2>/dev/null) || out='{"items":[]}'
    n=$(jq '.items | length' <<<"$out")
    ready=$(jq '[.items[] | select(.metadata.deletionTimestamp == null and (.status.podIPs // [] | length) == 2
                 and any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length' <<<"$out")
    [ "$n" = "$want" ] && [ "$ready" = "$want" ] && break
    if [ $SECONDS -gt "$deadline" ]; then
      jq -r '.items[] | "\(.metadata.name) \(.spec.nodeName) \(.status.phase) \(.metadata.deletionTimestamp) \(.status.podIPs)"' <<<"$out" | head -n 20
      "$KC" kubectl "$c" get events --sort-by=.lastTimestamp | tail -n 20
      fail "deployment $name: $n pods, $ready ready with two addresses, want $want"
    fi
    sleep 1
  done
}

# check_addresses CLUSTER NAME: every pod of the Deployment has one IPv4 and one IPv6 address,
# all unique, each from a block affine to the pod's node; our IPAM holds exactly those addresses
# (2 per pod), each for its pod, and `ipam check` is clean.
check_addresses() {
  local c=$1 name=$2 pods affs bad inuse want out pod ip
  pods=$("$KC" kubectl "$c" get pods -l "app=$name" -o json | jq -c '[.items[] | {name: .metadata.name, node: .spec.nodeName, ips: [.status.podIPs[].ip]}]')
  affs=$("$KC" kubectl "$c" get blockaffinities.crd.projectcalico.org -o json | jq -c '[.items[] | select(.spec.state == "confirmed") | {node: .spec.node, cidr: .spec.cidr}]')
  bad=$(python3 -c '
import ipaddress, json, sys
pods, affs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
seen = {}
for p in pods:
    ips = [ipaddress.ip_address(i) for i in p["ips"]]
    if sorted(i.version for i in ips) != [4, 6]:
        print(p["name"], "podIPs", p["ips"], "are not one IPv4 and one IPv6 address")
    for ip in ips:
        if ip in seen:
            print(ip, "given to both", seen[ip], "and", p["name"])
        seen[ip] = p["name"]
        owners = [a["node"] for a in affs if ip in ipaddress.ip_network(a["cidr"])]
        if owners != [p["node"]]:
            print(p["name"], "on", p["node"], ":", ip, "is not from a block affine to its node; blocks of", owners)
' "$pods" "$affs")
  [ -z "$bad" ] || fail "addresses of deployment $name: $bad"
  # Our IPAM holds the addresses of every pod in the cluster and nothing else (kubelet tears the
  # sandboxes of deleted pods down after their objects are gone: wait up to 120 s for that).
  for _ in $(seq 120); do
    want=$("$KC" kubectl "$c" get pods -A -o json | jq '[.items[] | select(.metadata.deletionTimestamp == null) | .status.podIPs[]?] | length')
    out=$("$KC" exec "$c" node-1 calico-ipam ipam show -o json) || fail "calico-ipam ipam show failed: $out"
    inuse=$(jq '[.pools[].inUse] | add' <<<"$out")
    [ "$inuse" = "$want" ] && break
    sleep 1
  done
  [ "$inuse" = "$want" ] || fail "our IPAM holds $inuse addresses, the pods $want"
  out=$("$KC" exec "$c" node-1 calico-ipam ipam check) || fail "calico-ipam ipam check is not clean: $out"
  if [ "${3:-}" = owners ]; then
    while read -r pod ip; do
      out=$("$KC" exec "$c" node-1 calico-ipam ipam show --ip="$ip" -o json)
      jq -e --arg p "$pod" '.inUse and .attributes.pod == $p' <<<"$out" >/dev/null ||
        fail "$ip of $pod: our IPAM says $out"
    done < <(jq -r '.[] | .name as $n | .ips[] | "\($n) \(.)"' <<<"$pods")
  fi
}

# check_node_clean NETNS: no pod veth or route left in a node's network namespace.
check_node_clean() {
  local ns=$1 left routes
  for _ in $(seq 600); do
    left=$(host_links "$ns")
    [ -z "$left" ] && break
    sleep 0.2
  done
  [ -z "$left" ] || fail "links left in $ns: $left"
  routes=$(ip -n "$ns" -4 route show; ip -n "$ns" -6 route show)
  ! grep -q cali <<<"$routes" || fail "routes to pods left in $ns: $routes"
}

# check_ipam_empty CLUSTER: no address in use (kubelet tears sandboxes down after the pod
# objects are gone: wait up to 120 s), `ipam check` clean.
check_ipam_empty() {
  local out
  for _ in $(seq 120); do
    out=$("$KC" exec "$1" node-1 calico-ipam ipam show -o json) || fail "calico-ipam ipam show failed: $out"
    jq -e 'all(.pools[]; .inUse == 0)' <<<"$out" >/dev/null && break
    sleep 1
  done
  jq -e 'all(.pools[]; .inUse == 0)' <<<"$out" >/dev/null || fail "addresses still in use: $out"
  out=$("$KC" exec "$1" node-1 calico-ipam ipam check) || fail "calico-ipam ipam check is not clean: $out"
}

# drop_torn_cni_cache NODE: remove result-cache files containerd left unparseable when it died.
# libcni writes that cache by truncate-then-write (os.WriteFile), so a kill -9 in between leaves an
# empty file; the libcni inside Debian's containerd 1.6 (< 1.2) then fails every DEL of that
# sandbox before running any plugin ("failed to get network ... cached result: decoding version
# from network config: unexpected end of JSON input", containernetworking/cni#1055) and the pod
# never terminates. libcni 1.2 drops such a file and runs DEL without prevResult (cni#1072); this
# does the same, so the test measures our plugin (whose DEL then has no prevResult), not that bug.
drop_torn_cni_cache() {
  local f
  for f in "$C/nodes/$1/cni-cache/results"/*; do
    [ -f "$f" ] || continue
    # (jq accepts an empty file: no value, exit 0)
    [ -s "$f" ] && jq -e . "$f" >/dev/null 2>&1 && continue
    echo "    containerd left a torn libcni cache file, dropped as libcni >= 1.2 would: ${f##*/}"
    rm -f "$f"
  done
}

# kill9 NODE containerd|kubelet [SECONDS]: kill -9 that component, start it again after SECONDS,
# and wait until it serves again (a kubelet that starts while containerd is down exits, as on a
# real node, where systemd would start it again).
kill9() {
  local pid f
  pid=$(cat "$C/nodes/$1/$2.pid")
  kill -KILL "$pid" 2>/dev/null || fail "$2 ($pid) was not running"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  echo "    kill -9 $2 ($pid)"
  if [ "$2" = containerd ] && [ -n "${TEAR_ONE_CACHE:-}" ]; then
    f=$(ls "$C/nodes/$1/cni-cache/results" | grep -m 1 "^k8s-pod-network-" || true)
    [ -n "$f" ] || fail "no libcni result cache to tear"
    : >"$C/nodes/$1/cni-cache/results/$f"
    echo "    tore $f as a kill mid-write would"
  fi
  [ "$2" != containerd ] || drop_torn_cni_cache "$1"
  sleep "${3:-0}"
  "$KC" restart "$C" "$1" "$2" || fail "kube-cluster restart $2 failed"
  for _ in $(seq 300); do
    case $2 in
      kubelet) "$KC" exec "$C" "$1" curl -fsS http://127.0.0.1:10248/healthz >/dev/null 2>&1 && return 0 ;;
      containerd) "$KC" exec "$C" "$1" crictl version >/dev/null 2>&1 && return 0 ;;
    esac
    kill -0 "$(cat "$C/nodes/$1/$2.pid")" 2>/dev/null || fail "$2 exited after its restart"
    sleep 0.2
  done
  fail "$2 does not serve 60 s after its restart"
}

# pod_ips CLUSTER NAME: "pod uid ip ip" lines of the Deployment's live pods, sorted.
pod_ips() {
  "$KC" kubectl "$1" get pods -l "app=$2" -o json |
    jq -r '.items[] | select(.metadata.deletionTimestamp == null) | "\(.metadata.name) \(.metadata.uid) \([.status.podIPs[]?.ip] | join(" "))"' | sort
}

step "kube-cluster up (1 node, our CNI)"
"$KC" up "$C" --from "$FROM" || fail "kube-cluster up failed"
eval "$("$KC" env "$C" | grep -E '^KC_(ID|NET)=')"
NODE=$KC_ID-node-1
RT_DIAG_FILES=("$C/nodes/node-1/kubelet.log" "$C/nodes/node-1/containerd.log" "$C/nodes/node-1/cni/cni.log")
kc get nodes -o wide

# ---------------------------------------------------------------------------------------------
step "seed experiment 1: the two IPPools applied with calico-ipam pool apply -f, then listed"
kx calico-ipam pool apply -f - <<'EOF' || fail "calico-ipam pool apply -f (ipv4-pool) failed"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ipv4-pool
spec:
  cidr: 10.244.0.0/16
  blockSize: 26
  vxlanMode: CrossSubnet
  natOutgoing: true
EOF
kx calico-ipam pool apply -f - <<'EOF' || fail "calico-ipam pool apply -f (ipv6-pool) failed"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ipv6-pool
spec:
  cidr: fd00:10:244::/48
  blockSize: 122
  vxlanMode: CrossSubnet
  natOutgoing: true
EOF
pools=$(kx calico-ipam pool list -o wide) || fail "calico-ipam pool list failed"
echo "$pools"
grep -Eq '^ipv4-pool +10\.244\.0\.0/16 +true +Never +CrossSubnet +false +false +all\(\)' <<<"$pools" ||
  fail "pool list -o wide does not show ipv4-pool as applied"
grep -Eq '^ipv6-pool +fd00:10:244::/48 +true +Never +CrossSubnet +false +false +all\(\)' <<<"$pools" ||
  fail "pool list -o wide does not show ipv6-pool as applied"
json=$(kx calico-ipam pool list -o json)
jq -e '[.items[] | {n: .metadata.name, b: .spec.blockSize}] | sort_by(.n) == [{n: "ipv4-pool", b: 26}, {n: "ipv6-pool", b: 122}]' \
  <<<"$json" >/dev/null || fail "pool list -o json: $json"

# ---------------------------------------------------------------------------------------------
step "seed experiment 3: the dual-stack pod, created with kubectl"
kc apply -f - <<'EOF' || fail "kubectl apply dual-stack-pod failed"
apiVersion: v1
kind: Pod
metadata:
  name: dual-stack-pod
spec:
  containers:
    - name: test
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
EOF
kc apply -f - <<'EOF' || fail "kubectl apply pinger failed"
apiVersion: v1
kind: Pod
metadata:
  name: pinger
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: ping
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
EOF
kc wait --for=condition=Ready pod/dual-stack-pod pod/pinger --timeout=180s ||
  { kc describe pod dual-stack-pod pinger; fail "the pods did not become Ready"; }
phase=$(kc get pod dual-stack-pod -o jsonpath='{.status.phase}')
[ "$phase" = Running ] || fail "dual-stack-pod is $phase, not Running"
podips=$(kc get pod dual-stack-pod -o jsonpath='{.status.podIPs}')
echo "    kubectl get pod dual-stack-pod -o jsonpath='{.status.podIPs}': $podips"
[ "$(jq length <<<"$podips")" = 2 ] || fail "status.podIPs does not hold two addresses: $podips"
IP4=$(jq -r '.[0].ip' <<<"$podips") IP6=$(jq -r '.[1].ip' <<<"$podips")
in_net 10.244.0.0/16 "$IP4" || fail "the first podIP $IP4 is not an IPv4 address from 10.244.0.0/16"
in_net fd00:10:244::/48 "$IP6" || fail "the second podIP $IP6 is not an IPv6 address from fd00:10:244::/48"
[ "$(kc get pod dual-stack-pod -o jsonpath='{.status.podIP}')" = "$IP4" ] || fail "status.podIP is not $IP4"

step "what our IPAM recorded for dual-stack-pod"
ann=$(kc get pod dual-stack-pod -o json | jq -c '.metadata.annotations')
echo "    annotations: $ann"
cid=$(jq -r '."cni.projectcalico.org/containerID" // empty' <<<"$ann")
[[ $cid =~ ^[0-9a-f]{64}$ ]] || fail "no cni.projectcalico.org/containerID annotation: $ann"
[ "$(jq -r '."cni.projectcalico.org/podIP"' <<<"$ann")" = "$IP4/32" ] || fail "annotation podIP is not $IP4/32: $ann"
[ "$(jq -r '."cni.projectcalico.org/podIPs"' <<<"$ann")" = "$IP4/32,$IP6/128" ] || fail "annotation podIPs is not $IP4/32,$IP6/128: $ann"
sandbox=$(kx crictl pods --name dual-stack-pod -q)
[ "$sandbox" = "$cid" ] || fail "the containerID annotation $cid is not the pod's sandbox $sandbox"
for ip in "$IP4" "$IP6"; do
  owner=$(kx calico-ipam ipam show --ip="$ip" -o json) || fail "calico-ipam ipam show --ip=$ip failed"
  echo "    $owner"
  jq -e --arg h "k8s-pod-network.$cid" '.inUse and .handle == $h and .attributes.pod == "dual-stack-pod"
      and .attributes.namespace == "default" and .attributes.node == "node-1" and .affinity == "host:node-1"' \
    <<<"$owner" >/dev/null || fail "our IPAM does not record $ip for default/dual-stack-pod on node-1: $owner"
done
handle=$(kc get ipamhandles.crd.projectcalico.org "k8s-pod-network.$cid" -o json) ||
  fail "no IPAMHandle k8s-pod-network.$cid"
[ "$(jq '[.spec.block[]] | add' <<<"$handle")" = 2 ] || fail "the pod's handle holds other than 2 addresses: $(jq -c .spec <<<"$handle")"

step "kubectl exec pinger -- ping / ping6 the dual-stack pod"
kc exec pinger -- ping -c 3 -W 2 "$IP4" || fail "pinger cannot ping $IP4"
kc exec pinger -- ping6 -c 3 -W 2 "$IP6" || fail "pinger cannot ping6 $IP6"

step "kubectl exec dual-stack-pod -- ip -6 route"
routes=$(kc exec dual-stack-pod -- ip -6 route) || fail "kubectl exec ip -6 route failed"
echo "$routes" | sed 's/^/    /'
grep -Eq '^default via fe80::1 dev eth0' <<<"$routes" || fail "no default route via fe80::1 in the pod: $routes"

step "delete the pods: no veth, route or allocation left, ipam check clean"
kc delete pod dual-stack-pod pinger --grace-period=1 --wait=true --timeout=120s || fail "kubectl delete pods failed"
check_node_clean "$NODE"
check_ipam_empty "$C"
[ "$(kc get ipamhandles.crd.projectcalico.org -o name | wc -l)" = 0 ] || fail "IPAM handles left: $(kc get ipamhandles.crd.projectcalico.org -o name)"

step "a Deployment of 50 replicas on node-1"
t0=$SECONDS
deployment "$C" many 50
settle "$C" many 50 400
step "    50 pods Ready with both addresses in $((SECONDS - t0))s"
check_addresses "$C" many
[ "$(host_links "$NODE" | wc -l)" = 50 ] || fail "node-1 has $(host_links "$NODE" | wc -l) pod veths, want 50"

step "scale to 0: every veth, host route and allocation gone, ipam check clean"
kc scale deployment many --replicas=0 >/dev/null
settle "$C" many 0 300
check_node_clean "$NODE"
check_ipam_empty "$C"

# ---------------------------------------------------------------------------------------------
step "kill -9 kubelet, then containerd, under 10 live pods: they keep their addresses"
deployment "$C" live 10
settle "$C" live 10 300
before=$(pod_ips "$C" live)
kill9 node-1 kubelet 2
# One pod's result cache torn as well: its DEL later runs without prevResult and must still
# remove its veth, routes and addresses (checked when the live pods are gone).
TEAR_ONE_CACHE=1 kill9 node-1 containerd 2
sleep 5
settle "$C" live 10 300
after=$(pod_ips "$C" live)
[ "$before" = "$after" ] || fail "the live pods' addresses changed over the restarts: before
$before
after
$after"
check_addresses "$C" live owners

step "kill -9 kubelet and containerd while pods are created and deleted"
deployment "$C" churn 12
sleep 3
kill9 node-1 kubelet 1
kc scale deployment churn --replicas=4 >/dev/null
kc delete pod -l app=live --wait=false >/dev/null # replaced by the Deployment: new pods, new addresses
sleep 2
kill9 node-1 containerd 1
kc scale deployment churn --replicas=15 >/dev/null
sleep 3
kill9 node-1 kubelet 0
kill9 node-1 containerd 0
settle "$C" churn 15 400
settle "$C" live 10 300
[ -z "$(comm -12 <(echo "$before" | cut -d' ' -f2 | sort) <(pod_ips "$C" live | cut -d' ' -f2 | sort))" ] ||
  fail "a deleted live pod is still there"
# Every live pod's addresses are its own and unique; everything else is free again.
pods=$(kc get pods -o json | jq -c '[.items[] | select(.metadata.deletionTimestamp == null)]')
[ "$(jq length <<<"$pods")" = 25 ] || fail "$(jq length <<<"$pods") pods, want 25: $(kc get pods)"
check_addresses "$C" churn owners
check_addresses "$C" live owners
out=$(kx calico-ipam ipam show -o json)
[ "$(jq '[.pools[].inUse] | add' <<<"$out")" = 50 ] || fail "our IPAM holds $(jq '[.pools[].inUse] | add' <<<"$out") addresses, the 25 pods 50"
kx calico-ipam ipam check >/dev/null || fail "calico-ipam ipam check is not clean after the restarts: $(kx calico-ipam ipam check)"
kc delete deployment churn live --wait=true >/dev/null
settle "$C" churn 0 300
settle "$C" live 0 300
check_node_clean "$NODE"
check_ipam_empty "$C"

# ---------------------------------------------------------------------------------------------
step "a pod whose pool is exhausted: the CNI error in its events, nothing left behind"
kx calico-ipam pool apply -f - <<'EOF' >/dev/null || fail "applying the tiny pool failed"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: tiny
spec:
  cidr: 10.245.0.0/31
  blockSize: 31
EOF
for p in tiny-1 tiny-2 tiny-3; do
  kc apply -f - <<EOF >/dev/null || fail "kubectl apply $p failed"
apiVersion: v1
kind: Pod
metadata:
  name: $p
  labels: {app: tiny}
  annotations:
    cni.projectcalico.org/ipv4pools: '["tiny"]'
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: s
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sleep", "36000"]
EOF
  [ $p = tiny-3 ] || kc wait --for=condition=Ready "pod/$p" --timeout=120s >/dev/null || fail "$p did not become Ready"
done
for _ in $(seq 60); do
  events=$(kc get events --field-selector involvedObject.name=tiny-3,reason=FailedCreatePodSandBox -o json | jq -r '.items[].message')
  [ -n "$events" ] && break
  sleep 1
done
describe=$(kc describe pod tiny-3)
echo "$describe" | grep -A2 FailedCreatePodSandBox | head -n 3 | cut -c1-400 | sed 's/^/    /'
grep -q 'plugin type="calico" failed (add)' <<<"$describe" || fail "kubectl describe pod shows no CNI error: $describe"
grep -qi 'exhausted\|no more free\|no free\|could not find' <<<"$describe" || fail "the CNI error does not say the pool is exhausted: $describe"
[ "$(kc get pod tiny-3 -o jsonpath='{.status.phase}')" = Pending ] || fail "tiny-3 is not Pending"
kc delete pod tiny-1 tiny-2 tiny-3 --wait=true >/dev/null
check_node_clean "$NODE"
check_ipam_empty "$C"
kx calico-ipam delete ippool tiny >/dev/null || fail "deleting the tiny pool failed"

step "kube-cluster down"
"$KC" down "$C" || fail "kube-cluster down failed"
[ ! -e "/run/netns/$NODE" ] && [ ! -e "/run/netns/$KC_NET" ] || fail "namespaces left after down"
[ -z "$(ls -d /sys/fs/cgroup/*/"$NODE" 2>/dev/null)" ] || fail "cgroups left after down"
[ ! -e "$C" ] || fail "$C left after down"

# ---------------------------------------------------------------------------------------------
step "--nodes 2: each node's pods get addresses from blocks affine to that node"
C2=$T/c2
"$KC" up "$C2" --nodes 2 --from "$FROM" || fail "kube-cluster up --nodes 2 failed"
RT_DIAG_FILES=("$C2/nodes/node-2/kubelet.log" "$C2/nodes/node-2/cni/cni.log")
deployment "$C2" two 8 spread
settle "$C2" two 8 300
"$KC" kubectl "$C2" get pods -o wide
[ "$("$KC" kubectl "$C2" get pods -l app=two -o json | jq '[.items[].spec.nodeName] | unique | length')" = 2 ] ||
  fail "the pods are not on both nodes"
check_addresses "$C2" two owners
"$KC" kubectl "$C2" get blockaffinities.crd.projectcalico.org -o custom-columns=NODE:.spec.node,CIDR:.spec.cidr,STATE:.spec.state
"$KC" kubectl "$C2" scale deployment two --replicas=0 >/dev/null
settle "$C2" two 0 300
check_ipam_empty "$C2"
"$KC" down "$C2" || fail "kube-cluster down failed"

# ---------------------------------------------------------------------------------------------
step "a kubelet that fails to start: up fails with its log tail, nothing left"
if KC_KUBELET_V=not-a-number "$KC" up "$T/broken" --from "$FROM" >"$T/broken.out" 2>&1; then
  fail "kube-cluster up succeeded with a broken kubelet"
fi
tail -n 5 "$T/broken.out" | sed 's/^/    /'
grep -q 'up failed: node-1 kubelet exited' "$T/broken.out" || fail "up did not name the kubelet: $(tail -n 20 "$T/broken.out")"
grep -q -- '--- last 40 lines of node-1 kubelet log' "$T/broken.out" || fail "up did not show the kubelet's log"
grep -q 'not-a-number' "$T/broken.out" || fail "the kubelet's log tail does not show its error"
[ ! -e "$T/broken" ] || fail "$T/broken left after a failed up"
bid=kc$(sha1sum <<<"$T/broken" | cut -c1-6)
[ -z "$(ip netns list | grep "^$bid-")" ] || fail "namespaces left after a failed up: $(ip netns list | grep "^$bid-")"
[ -z "$(ls -d /sys/fs/cgroup/*/"$bid"-* 2>/dev/null)" ] || fail "cgroups left after a failed up"
[ -z "$(pgrep -f "$T/broken/" || true)" ] || fail "processes left after a failed up: $(pgrep -af "$T/broken/")"

step "PASS in $(rt_elapsed)s"
