#!/usr/bin/env bash
# Real client #1: cnitool (libcni v1.3.0) drives our plugins, installed by scripts/install-cni.sh
# into a temp bin dir and a temp conf dir, chained with Debian's `tuning` so prevResult flows
# through the chain. Inside a throwaway node netns:
#   add -> dual-stack result (IPv4 /32 + IPv6 /128, gateways 169.254.1.1 and fe80::1), tuning's
#   sysctl applied, pod reaches the node over both families; check passes; delete the pod's
#   default route -> check fails; del, del again -> nothing left (no cali link, store clean,
#   no cache file); then add, delete the pod netns, del -> addresses released.
#
# usage: scripts/test-cnitool.sh [--from DIR] [--reference] [--cni-version V]
#   --from DIR        our built binaries (calico-cni, calico-ipam); default target/{debug,release}
#   --reference       validate the harness with Debian's ptp + host-local instead of ours
#   --cni-version V   the conflist's cniVersion (default 1.0.0; 0.4.0 and 0.3.1 results carry
#                     ips[].version; below 0.4.0 libcni refuses CHECK, so the check steps are skipped)
# Root; Debian 12. Everything happens in namespaces and temp dirs this script creates.
set -euo pipefail
RT_NAME=test-cnitool
source "$(dirname "$0")/lib-runtimes.sh"

rt_client_args "$@"

rt_require_root
ensure_apt containernetworking-plugins jq iproute2 iputils-ping iptables
CNITOOL=$(ensure_go_tool cnitool "github.com/containernetworking/cni/cnitool@$CNITOOL_VERSION")
[ "$MODE" = reference ] || FROM=$(rt_binaries_dir "$FROM")

T=$(mktemp -d "/tmp/calico-cnitool.$$.XXXXXX")
BIN=$T/bin CONF=$T/net.d STATE=$T/state CACHE=$T/cache
NODE=cnit-node-$$ POD=cnit-pod-$$ POD2=cnit-pod2-$$
NETNS_DIR=/var/run/netns
PODNAME=cnitool-pod-$$ POD2NAME=cnitool-pod2-$$
mkdir -p "$STATE" "$CACHE" "$T/stash"
RT_DIAG_FILES=("$STATE/cni.log") # what fail() shows
IPT_BEFORE=$(iptables_cni_chains)

cleanup() {
  local rc=$?
  set +e
  # DEL whatever may still be attached (state is in temp dirs, but be a well-behaved runtime).
  for p in "$POD" "$POD2"; do
    if [ -e "$NETNS_DIR/$p" ] && [ -e "$NETNS_DIR/$NODE" ]; then
      cni del "$p" >/dev/null 2>&1
    fi
  done
  drop_netns "$POD" "$POD2" "$NODE"
  rm -rf "$T"
  rt_release_mountpoints
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cni VERB POD: cnitool VERB on pod netns POD, from inside the node netns, with the
# result cache in $CACHE. Output in $T/out, $T/err; returns cnitool's status.
cni() {
  local verb=$1 pod=$2 name
  name=$([ "$pod" = "$POD" ] && echo "$PODNAME" || echo "$POD2NAME")
  node_exec "$T/stash" "$NODE" --bind "$CACHE" /var/lib/cni -- env NETCONFPATH="$CONF" CNI_PATH="$BIN:/usr/lib/cni" CNI_IFNAME=eth0 \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$name" \
    CAP_ARGS='{"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}]}' \
    "$CNITOOL" "$verb" k8s-pod-network "$NETNS_DIR/$pod" >"$T/out" 2>"$T/err"
}
must_cni() { # must_cni VERB POD WHAT
  cni "$1" "$2" || { show_cmd_output "$T/out" "$T/err" >&2; fail "cnitool $1 ($3) exited non-zero"; }
}

step "mode $MODE, cniVersion $VERSION, cnitool $CNITOOL_VERSION ($CNITOOL)"
TUNING='{"type":"tuning","sysctl":{"net.core.somaxconn":"512"}}'
if [ "$MODE" = ours ]; then
  install_ours "$FROM" "$BIN" "$CONF" "$STATE" "cnit-node-$$" --cni-version "$VERSION" \
    --capabilities '{"portMappings":true}' --chain "$TUNING"
  # A second run must change nothing.
  before=$(find "$BIN" "$CONF" -printf '%p %m %i %T@\n' | sort)
  "$RT_REPO/scripts/install-cni.sh" -q --from "$FROM" --bin-dir "$BIN" --conf-dir "$CONF" \
    --datastore-type local --datastore-path "$STATE/ipam" --ipam-lock-file "$STATE/ipam.lock" \
    --log-file-path "$STATE/cni.log" --log-level debug --nodename "cnit-node-$$" --cni-version "$VERSION" \
    --capabilities '{"portMappings":true}' --chain "$TUNING"
  after=$(find "$BIN" "$CONF" -printf '%p %m %i %T@\n' | sort)
  [ "$before" = "$after" ] || fail "re-running install-cni.sh changed files:
$(diff <(echo "$before") <(echo "$after"))"
else
  mkdir -p "$BIN" "$CONF"
  write_reference_conflist "$CONF/10-calico.conflist" "$STATE" "$TUNING" "$VERSION"
fi
jq -e '.plugins[1].type == "tuning"' "$CONF/10-calico.conflist" >/dev/null || fail "conflist is not chained with tuning"

step "namespaces: node $NODE, pods $POD $POD2"
rt_mountpoint /var/lib/cni
make_node "$NODE"
make_pod "$POD"
make_pod "$POD2"

# ---------------------------------------------------------------------------------------------
step "cnitool add"
must_cni add "$POD" "first ADD"
RESULT=$(cat "$T/out")
echo "$RESULT" | jq -c . || fail "cnitool add printed no JSON: $RESULT"
[ "$(jq -r .cniVersion <<<"$RESULT")" = "$VERSION" ] || fail "result cniVersion is not $VERSION: $RESULT"
if [ "$VERSION" = 1.0.0 ]; then
  jq -e 'all(.ips[]; has("version") | not)' <<<"$RESULT" >/dev/null || fail "a 1.0.0 result has ips[].version: $RESULT"
else
  jq -e 'all(.ips[]; .version == (if (.address | contains(":")) then "6" else "4" end))' <<<"$RESULT" >/dev/null ||
    fail "a $VERSION result needs ips[].version \"4\"/\"6\": $RESULT"
fi
jq -e '[.ips[] | select(.address | contains(":") | not)] | length == 1' <<<"$RESULT" >/dev/null || fail "not exactly one IPv4 address: $RESULT"
jq -e '[.ips[] | select(.address | contains(":"))] | length == 1' <<<"$RESULT" >/dev/null || fail "not exactly one IPv6 address: $RESULT"
V4=$(jq -r '.ips[] | select(.address | contains(":") | not) | .address' <<<"$RESULT")
V6=$(jq -r '.ips[] | select(.address | contains(":")) | .address' <<<"$RESULT")
GW4=$(jq -r '.ips[] | select(.address | contains(":") | not) | .gateway // empty' <<<"$RESULT")
GW6=$(jq -r '.ips[] | select(.address | contains(":")) | .gateway // empty' <<<"$RESULT")
jq -e --arg ns "$NETNS_DIR/$POD" '.interfaces | any(.name == "eth0" and .sandbox == $ns)' <<<"$RESULT" >/dev/null ||
  fail "result has no eth0 interface in sandbox $NETNS_DIR/$POD: $RESULT"
HOSTIF=$(jq -r '.interfaces[] | select((.sandbox // "") == "") | .name' <<<"$RESULT" | head -n1)
[ -n "$HOSTIF" ] || fail "result names no host-side interface: $RESULT"
if [ "$MODE" = ours ]; then
  [[ $V4 == 10.244.*/32 ]] || fail "IPv4 $V4 is not a /32 from $RT_POOL_V4"
  [[ $V6 == fd00:10:244:*/128 ]] || fail "IPv6 $V6 is not a /128 from $RT_POOL_V6"
  [ "$GW4" = 169.254.1.1 ] || fail "IPv4 gateway is '$GW4', want 169.254.1.1"
  [ "$GW6" = fe80::1 ] || fail "IPv6 gateway is '$GW6', want fe80::1"
  WANT_IF=$(veth_name default "$PODNAME")
  [ "$HOSTIF" = "$WANT_IF" ] || fail "host interface is $HOSTIF, want $WANT_IF = cali + sha1(default.$PODNAME)[:11]"
  has "$(ip -n "$POD" -4 route show default)" 'via 169.254.1.1' || fail "pod has no IPv4 default via 169.254.1.1: $(ip -n "$POD" -4 route)"
  has "$(ip -n "$POD" -6 route show default)" 'via fe80::1' || fail "pod has no IPv6 default via fe80::1: $(ip -n "$POD" -6 route)"
else
  [ -n "$GW4" ] && [ -n "$GW6" ] || fail "result lacks gateways: $RESULT"
fi
ip -n "$NODE" link show "$HOSTIF" >/dev/null 2>&1 || fail "host interface $HOSTIF is not in the node netns"
has "$(ip -n "$POD" -o addr show eth0)" "inet ${V4} " || fail "pod eth0 lacks $V4: $(ip -n "$POD" -o addr)"
has "$(ip -n "$POD" -o addr show eth0)" "inet6 ${V6} " || fail "pod eth0 lacks $V6: $(ip -n "$POD" -o addr)"
[ "$(ip netns exec "$POD" cat /proc/sys/net/core/somaxconn)" = 512 ] ||
  fail "the chained tuning plugin did not run (net.core.somaxconn in the pod is $(ip netns exec "$POD" cat /proc/sys/net/core/somaxconn))"
ls "$CACHE"/results/k8s-pod-network-cnitool-*-eth0 >/dev/null 2>&1 || fail "no libcni result cache file in $CACHE/results"
jq -e '.result.ips | length == 2' "$CACHE"/results/k8s-pod-network-cnitool-*-eth0 >/dev/null || fail "cached result is not the dual-stack result"

step "pod -> node over IPv4 and IPv6"
ok4=0 ok6=0
for _ in 1 2 3 4 5 6 7 8 9 10; do
  [ $ok4 = 1 ] || { ip netns exec "$POD" ping -c1 -W1 192.0.2.10 >/dev/null 2>&1 && ok4=1; }
  [ $ok6 = 1 ] || { ip netns exec "$POD" ping -6 -c1 -W1 2001:db8::10 >/dev/null 2>&1 && ok6=1; }
  [ $ok4$ok6 = 11 ] && break
  sleep 0.5
done
[ $ok4 = 1 ] || fail "pod cannot ping the node 192.0.2.10 over IPv4"
[ $ok6 = 1 ] || fail "pod cannot ping the node 2001:db8::10 over IPv6"

if [ "$VERSION" = 0.3.0 ] || [ "$VERSION" = 0.3.1 ]; then
  step "no CHECK below 0.4.0 (libcni refuses it)"
else
  step "cnitool check (healthy)"
  must_cni check "$POD" "CHECK after ADD"

  step "cnitool check after deleting the pod's IPv4 default route"
  ip -n "$POD" -4 route del default || fail "could not delete the pod's default route"
  if cni check "$POD"; then
    show_cmd_output "$T/out" "$T/err" >&2
    fail "cnitool check succeeded although the pod's default route is gone"
  fi
  echo "    check failed as it should: $(head -c 300 "$T/err")"
fi

step "cnitool del, twice"
must_cni del "$POD" "first DEL"
must_cni del "$POD" "second DEL"
if ip -n "$NODE" link show "$HOSTIF" >/dev/null 2>&1; then fail "host interface $HOSTIF still exists after DEL"; fi
ip -n "$POD" -o link show eth0 >/dev/null 2>&1 && fail "pod eth0 still exists after DEL"
[ -z "$(ls -A "$CACHE/results" 2>/dev/null)" ] || fail "libcni cache not empty after DEL: $(ls "$CACHE/results")"

step "add, delete the pod netns, del"
must_cni add "$POD2" "ADD of pod 2"
ip netns del "$POD2"
must_cni del "$POD2" "DEL after the netns is gone"

step "nothing left"
assert_nothing_left

if [ "$MODE" = ours ]; then
  step "install-cni.sh --uninstall"
  "$RT_REPO/scripts/install-cni.sh" -q --uninstall --conf-dir "$CONF"
  [ -z "$(ls -A "$BIN" 2>/dev/null)" ] && [ ! -e "$CONF" ] || fail "uninstall left: $(ls -A "$BIN" "$CONF" 2>&1)"
fi

drop_netns "$POD" "$POD2" "$NODE"
step "PASS ($MODE) in $(rt_elapsed)s"
