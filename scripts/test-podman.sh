#!/usr/bin/env bash
# Real client #3: podman 4.3 (Debian) with its CNI backend, inside a throwaway node netns.
# Nothing system-wide is used: containers.conf via CONTAINERS_CONF (runc, lowered default ulimits,
# network_backend "cni", cni_plugin_dirs = our bin dir + /usr/lib/cni, a temp network_config_dir
# holding our conflist from scripts/install-cni.sh, temp tmp/static/volume dirs), storage via
# CONTAINERS_STORAGE_CONF (vfs in a temp dir), and the libcni cache, /run/netns, /run/runc and
# /dev/shm (podman's lock) bind-mounted from temp dirs in the private mount namespace.
#   podman network ls -> our network; podman run --rm --network k8s-pod-network --rootfs DIR
#   (busybox-static) -> podman VERSION-probes and ADDs through our plugin: eth0 has the IPv4 /32 and
#   IPv6 /128 with default routes via 169.254.1.1 and fe80::1, and the container pings the node
#   over both families; on exit podman DELs -> nothing left.
#
# usage: scripts/test-podman.sh [--from DIR] [--reference]
#   --from DIR     our built binaries (calico-cni, calico-ipam); default target/{debug,release}
#   --reference    validate the harness with Debian's ptp + host-local instead of ours
# Root; Debian 12. Everything happens in namespaces and temp dirs this script creates.
set -euo pipefail
RT_NAME=test-podman
source "$(dirname "$0")/lib-runtimes.sh"

rt_client_args "$@"

rt_require_root
ensure_apt podman runc conmon catatonit busybox-static containernetworking-plugins jq iproute2 iptables
[ "$MODE" = reference ] || FROM=$(rt_binaries_dir "$FROM")

T=$(mktemp -d "/tmp/calico-podman.$$.XXXXXX")
NODE=podm-node-$$
CTR=podm-ctr-$$
CGPARENT=calico-rs-test-podman-$$
BIN=$T/bin CONF=$T/net.d STATE=$T/state CACHE=$T/cache ROOTFS=$T/rootfs
mkdir -p "$STATE" "$CACHE" "$T/stash" "$T/netns" "$T/runc" "$T/shm"
RT_DIAG_FILES=("$STATE/cni.log") # what fail() shows
IPT_BEFORE=$(iptables_cni_chains)

# podman ARGS...: podman with our configuration, in the node netns and a private mount namespace.
podman_in_node() {
  CONTAINERS_CONF=$T/containers.conf CONTAINERS_STORAGE_CONF=$T/storage.conf \
    "$RT_REPO/scripts/node-exec.sh" --stash "$T/stash" "$NODE" \
    --bind "$CACHE" /var/lib/cni --bind "$T/netns" /run/netns --bind "$T/runc" /run/runc \
    --bind "$T/shm" /dev/shm -- podman "$@"
}

cleanup() {
  local rc=$?
  set +e
  if [ -e "/var/run/netns/$NODE" ] && [ -f "$T/containers.conf" ]; then
    podman_in_node rm -a -f -t 1 >/dev/null 2>&1
  fi
  # conmon daemonizes inside the mount namespaces node-exec.sh made; none should outlive podman,
  # but if one does (a failure mid-run), end it by its pid.
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/conmon ] && has "$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" "$T/"; then
      kill -KILL "${p#/proc/}" 2>/dev/null
    fi
  done
  rt_finish "$rc"
}
rt_on_exit cleanup

# ---------------------------------------------------------------------------------------------
step "mode $MODE, $(podman --version), $(runc --version | head -n1)"

step "rootfs (busybox-static + applet symlinks)"
mkdir -p "$ROOTFS"/{bin,proc,sys,dev,etc,tmp,run}
cp /bin/busybox "$ROOTFS/bin/busybox"
for a in $(/bin/busybox --list); do
  [ -e "$ROOTFS/bin/$a" ] || ln -s busybox "$ROOTFS/bin/$a"
done

step "CNI bin dir, conf dir, podman configuration"
if [ "$MODE" = ours ]; then
  install_ours "$FROM" "$BIN" "$CONF" "$STATE" "$NODE"
else
  mkdir -p "$BIN" "$CONF"
  write_reference_conflist "$CONF/10-calico.conflist" "$STATE"
fi
cat >"$T/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = ["$BIN", "/usr/lib/cni"]
network_config_dir = "$CONF"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "$T/libpod-tmp"
static_dir = "$T/storage/libpod"
volume_path = "$T/volumes"
EOF
cat >"$T/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$T/storage-run"
graphroot = "$T/storage"
EOF

step "node netns $NODE"
make_node "$NODE"
rt_mountpoint /var/lib/cni
rt_mountpoint /run/runc

step "podman network ls"
podman_in_node network ls --format '{{.Name}} {{.Driver}}' >"$T/netls.out" 2>"$T/netls.err" ||
  { show_cmd_output "$T/netls.out" "$T/netls.err" >&2; fail "podman network ls failed"; }
cat "$T/netls.out"
WANT_DRIVER=$([ "$MODE" = ours ] && echo calico || echo ptp)
has "$(cat "$T/netls.out")" "k8s-pod-network $WANT_DRIVER" || fail "podman does not list k8s-pod-network with driver $WANT_DRIVER"

step "podman run --rm --network k8s-pod-network"
# All flags before --rootfs (it is a boolean flag: what follows it is the rootfs, then the command).
SCRIPT='ip -o addr show eth0; echo "== route"; ip route; echo "== route6"; ip -6 route
ok4=0; ok6=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  [ $ok4 = 1 ] || { ping -c1 -W1 192.0.2.10 >/dev/null 2>&1 && ok4=1; }
  [ $ok6 = 1 ] || { ping -6 -c1 -W1 2001:db8::10 >/dev/null 2>&1 && ok6=1; }
  [ $ok4$ok6 = 11 ] && break
  sleep 0.5
done
echo "== ping4 $ok4"; echo "== ping6 $ok6"'
podman_in_node run --rm --name "$CTR" --network k8s-pod-network --cap-add NET_RAW \
  --cgroup-parent "/$CGPARENT" --rootfs "$ROOTFS" /bin/sh -c "$SCRIPT" >"$T/run.out" 2>"$T/run.err" ||
  { show_cmd_output "$T/run.out" "$T/run.err" >&2; fail "podman run failed"; }
OUT=$(cat "$T/run.out")
echo "$OUT" | sed 's/^/    /'
ADDRS=$(sed -n '1,/^== route$/p' <<<"$OUT")
ROUTES4=$(sed -n '/^== route$/,/^== route6$/p' <<<"$OUT")
ROUTES6=$(sed -n '/^== route6$/,/^== ping4/p' <<<"$OUT")
V4=$(awk '$3 == "inet" {print $4}' <<<"$ADDRS" | head -n1)
V6=$(awk '$3 == "inet6" && $6 == "global" {print $4}' <<<"$ADDRS" | head -n1)
[ -n "$V4" ] || fail "the container's eth0 has no IPv4 address"
[ -n "$V6" ] || fail "the container's eth0 has no global IPv6 address"
if [ "$MODE" = ours ]; then
  [[ $V4 == 10.244.*/32 ]] || fail "IPv4 $V4 is not a /32 from $RT_POOL_V4"
  [[ $V6 == fd00:10:244:*/128 ]] || fail "IPv6 $V6 is not a /128 from $RT_POOL_V6"
  has "$ROUTES4" "default via 169.254.1.1" || fail "no IPv4 default route via 169.254.1.1"
  has "$ROUTES6" "default via fe80::1" || fail "no IPv6 default route via fe80::1"
else
  has "$ROUTES4" "default via" || fail "no IPv4 default route"
  has "$ROUTES6" "default via" || fail "no IPv6 default route"
fi
has "$OUT" "== ping4 1" || fail "the container cannot ping the node 192.0.2.10 over IPv4"
has "$OUT" "== ping6 1" || fail "the container cannot ping the node 2001:db8::10 over IPv6"

step "nothing left"
podman_in_node ps -a --format '{{.Names}}' >"$T/ps.out" 2>&1 || { cat "$T/ps.out" >&2; fail "podman ps failed"; }
[ ! -s "$T/ps.out" ] || fail "containers left: $(cat "$T/ps.out")"
assert_nothing_left
[ -z "$(ls -A "$T/netns")" ] || fail "container netns left: $(ls "$T/netns")"

step "PASS ($MODE) in $(rt_elapsed)s"
