# shellcheck shell=bash disable=SC2034
# Shared by scripts/test-cnitool.sh, test-containerd.sh and test-podman.sh: real CNI clients
# (cnitool, containerd's CRI, podman) driving our plugins (or Debian's ptp + host-local, the
# reference) inside throwaway network namespaces. Source after `set -euo pipefail`.
#
# Nothing here touches the real host's interfaces, routes, sysctls or iptables: every client runs
# under `ip netns exec NODE`, which also gives it a private mount namespace; the libcni result
# cache (/var/lib/cni, not configurable in cnitool or containerd 1.6) is bind-mounted from a temp
# dir inside that mount namespace only.

RT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib-netns.sh
source "$RT_REPO/scripts/lib-netns.sh" # make_node, make_pod, drop_netns (shared with the demo)

RT_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/calico-rs
RT_GOBIN=$RT_CACHE/bin
CNITOOL_VERSION=${CNITOOL_VERSION:-v1.3.0}
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}
# The seed's pools (testdata/pools/seed-pools.yaml): what our plugin assigns from.
RT_POOL_V4=10.244.0.0/16
RT_POOL_V6=fd00:10:244::/48

rt_now() { date +%s.%N; }
RT_T0=$(rt_now)
rt_elapsed() { awk -v a="$RT_T0" -v b="$(rt_now)" 'BEGIN { printf "%.1f", b - a }'; }

# step MSG: progress line.
step() { echo "[$RT_NAME $(rt_elapsed)s] $*"; }

# fail MSG: loud failure with whatever diagnostics the test registered, then exit 1.
RT_DIAG_FILES=()
fail() {
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! $RT_NAME FAILED: $*"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    local f
    for f in "${RT_DIAG_FILES[@]}"; do
      if [ -s "$f" ]; then
        echo "--- last lines of $f:"
        tail -n 40 "$f"
      fi
    done
  } >&2
  exit 1
}

# show_cmd_output OUT ERR: print captured stdout/stderr of a failed command.
show_cmd_output() {
  echo "--- stdout:"; cat "$1" 2>/dev/null || true
  echo "--- stderr:"; cat "$2" 2>/dev/null || true
}

# has TEXT SUBSTRING: fixed-string containment (no `cmd | grep -q`: with pipefail, grep -q
# quitting early can fail the pipeline with SIGPIPE).
has() { [[ $1 == *"$2"* ]]; }

rt_require_root() {
  [ "$(id -u)" = 0 ] || { echo "$RT_NAME: run as root (it creates network namespaces)" >&2; exit 1; }
}

# ensure_apt PKG...: install the Debian packages that are missing.
ensure_apt() {
  local p missing=()
  for p in "$@"; do
    has "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_go_tool NAME MODULE/PATH@VERSION: the Go tool in the cache bin dir (go install once).
ensure_go_tool() {
  local name=$1 pkg=$2 stamp="$RT_GOBIN/.$1.version"
  if [ -x "$RT_GOBIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    echo "$RT_GOBIN/$name"
    return
  fi
  command -v go >/dev/null || fail "go is not installed: cannot go install $pkg"
  mkdir -p "$RT_GOBIN"
  echo "go install $pkg (into $RT_GOBIN)" >&2
  GOTOOLCHAIN=local GOBIN=$RT_GOBIN GOFLAGS=-buildvcs=false go install "$pkg" >&2 ||
    fail "go install $pkg failed"
  echo "$pkg" >"$stamp"
  echo "$RT_GOBIN/$name"
}

# rt_binaries_dir [DIR]: where our built calico-cni and calico-ipam are.
rt_binaries_dir() {
  local d
  for d in "$@" "${CARGO_TARGET_DIR:-$RT_REPO/target}/debug" "${CARGO_TARGET_DIR:-$RT_REPO/target}/release"; do
    if [ -n "$d" ] && [ -x "$d/calico-cni" ] && [ -x "$d/calico-ipam" ]; then
      (cd "$d" && pwd)
      return
    fi
  done
  fail "no built calico-cni + calico-ipam (looked in: $* ${CARGO_TARGET_DIR:-$RT_REPO/target}/{debug,release}); build with cargo build --bins or pass --from DIR"
}

# Mount points. The libcni result cache (/var/lib/cni: not configurable in cnitool or containerd
# 1.6) and runtime state dirs with hard-coded paths (/run/containerd for containerd's shim
# sockets) are bind-mounted from temp dirs, inside the client's private mount namespace only
# (scripts/node-exec.sh). A mount point must exist on the host: create it if missing and remove it
# on cleanup if it is still empty.
RT_CREATED_MOUNTPOINTS=()
rt_mountpoint() {
  if [ ! -d "$1" ]; then
    mkdir -p "$1"
    RT_CREATED_MOUNTPOINTS+=("$1")
  fi
}
rt_release_mountpoints() {
  local i
  for ((i = ${#RT_CREATED_MOUNTPOINTS[@]} - 1; i >= 0; i--)); do
    rmdir "${RT_CREATED_MOUNTPOINTS[$i]}" 2>/dev/null || true
  done
  RT_CREATED_MOUNTPOINTS=()
}

# rt_finish RC: the end every runtime test's cleanup shares, once the runtime's own processes
# are gone: its cgroup (CGPARENT), node netns (NODE), temp dir (T) and the mount points it
# created; exits RC.
rt_finish() {
  rm_cgroup "$CGPARENT"
  drop_netns "$NODE"
  rm -rf "$T"
  rt_release_mountpoints
  exit "$1"
}

# rt_on_exit FN: FN runs when the script exits, also after INT or TERM (status 130).
rt_on_exit() {
  # shellcheck disable=SC2064
  trap "$1" EXIT
  trap 'exit 130' INT TERM
}

# node_exec STASH NODE [--bind SRC DST]... -- CMD...: CMD in netns NODE with a private mount
# namespace (see scripts/node-exec.sh).
node_exec() {
  local stash=$1
  shift
  "$RT_REPO/scripts/node-exec.sh" --stash "$stash" "$@"
}

# mntns_pids INODE: the processes whose mount namespace is mnt:[INODE].
mntns_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "mnt:[$1]" ] && echo "${p#/proc/}"
  done
  return 0
}

# kill_mntns INODE: TERM, then KILL, every process in that mount namespace (one we created).
kill_mntns() {
  local ino=$1 pids i
  [ -n "$ino" ] || return 0
  pids=$(mntns_pids "$ino")
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 50); do
    pids=$(mntns_pids "$ino")
    [ -z "$pids" ] && return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
}

# rm_cgroup NAME: remove the (empty) cgroup NAME we told the runtime to use as parent, in every
# hierarchy, deepest first.
rm_cgroup() {
  local d
  for d in /sys/fs/cgroup/*/"$1" /sys/fs/cgroup/"$1"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

# veth_name NAMESPACE POD: Calico's host-side interface name.
veth_name() {
  printf 'cali%s' "$(printf '%s.%s' "$1" "$2" | sha1sum | cut -c1-11)"
}

# host_links NODE: the links in the node netns other than lo and the uplink pair.
host_links() {
  ip -n "$1" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -vxE 'lo|uplink0|uplink1' || true
}

# write_reference_conflist FILE STATE [EXTRA_PLUGIN_JSON [CNI_VERSION]]: Debian's ptp +
# host-local, same shape as ours (network k8s-pod-network, portMappings capability declared).
write_reference_conflist() {
  local file=$1 state=$2 extra=${3:-} version=${4:-1.0.0}
  jq -n --arg data "$state/host-local" --arg v "$version" --argjson extra "${extra:-null}" '{
    cniVersion: $v, name: "k8s-pod-network",
    plugins: ([{
      type: "ptp", ipMasq: false, capabilities: {portMappings: true},
      ipam: { type: "host-local", dataDir: $data,
              ranges: [[{subnet: "10.244.77.0/24"}], [{subnet: "fd00:10:244:77::/64"}]],
              routes: [{dst: "0.0.0.0/0"}, {dst: "::/0"}] } }]
      + (if $extra == null then [] else [$extra] end)) }' >"$file"
}

# install_ours FROM BIN CONF STATE NODENAME [install-cni flags...]: our plugins and conflist via
# scripts/install-cni.sh, state (datastore, lock, log) under STATE.
install_ours() {
  local from=$1 bin=$2 conf=$3 state=$4 nodename=$5
  shift 5
  "$RT_REPO/scripts/install-cni.sh" -q --from "$from" --bin-dir "$bin" --conf-dir "$conf" \
    --datastore-type local --datastore-path "$state/ipam" --ipam-lock-file "$state/ipam.lock" \
    --log-file-path "$state/cni.log" --log-level debug --nodename "$nodename" "$@" ||
    fail "scripts/install-cni.sh failed"
  DATASTORE_TYPE=local DATASTORE_PATH=$state/ipam "$bin/calico-ipam" pool apply \
    -f "$RT_REPO/testdata/pools/seed-pools.yaml" >"$state/pool-apply.out" 2>&1 || {
    cat "$state/pool-apply.out" >&2
    fail "calico-ipam pool apply failed"
  }
}

# assert_ipam_clean BIN STATE: the local store agrees with itself and holds no allocation.
assert_ipam_clean() {
  local bin=$1 state=$2 out
  out=$(DATASTORE_TYPE=local DATASTORE_PATH=$state/ipam "$bin/calico-ipam" check 2>&1) ||
    fail "calico-ipam check is not clean: $out"
  out=$(DATASTORE_TYPE=local DATASTORE_PATH=$state/ipam "$bin/calico-ipam" show -o json 2>&1) ||
    fail "calico-ipam show -o json failed: $out"
  jq -e '(.pools | length) > 0 and all(.pools[]; .inUse == 0)' >/dev/null <<<"$out" ||
    fail "addresses still in use after DEL: $out"
}

# assert_reference_ipam_clean STATE: host-local holds no allocation.
assert_reference_ipam_clean() {
  local left
  left=$(find "$1/host-local" -type f ! -name 'last_reserved_ip.*' ! -name lock 2>/dev/null || true)
  [ -z "$left" ] || fail "host-local still holds: $left"
}

# iptables_cni_chains: the CNI-* chains in the current netns (to prove nobody created any).
iptables_cni_chains() {
  { iptables -S 2>/dev/null; iptables -t nat -S 2>/dev/null; ip6tables -S 2>/dev/null; ip6tables -t nat -S 2>/dev/null; } |
    grep -E '^-N (CNI-|cni-|CNI_)' | sort || true
}

# assert_nothing_left: after the last DEL of a client test (globals NODE, MODE, BIN, STATE,
# CACHE, IPT_BEFORE): no pod link in the node netns (the kernel removes the host end of a dead
# netns's veth a little later, so wait up to 2 s), the IPAM holds nothing, libcni's result cache
# is empty and no CNI iptables chain appeared.
assert_nothing_left() {
  local left
  for _ in $(seq 20); do
    left=$(host_links "$NODE")
    [ -z "$left" ] && break
    sleep 0.1
  done
  [ -z "$left" ] || fail "links left in the node netns: $left"
  if [ "$MODE" = ours ]; then
    assert_ipam_clean "$BIN" "$STATE"
  else
    assert_reference_ipam_clean "$STATE"
  fi
  [ -z "$(ls -A "$CACHE/results" 2>/dev/null)" ] || fail "libcni cache not empty: $(ls "$CACHE/results")"
  [ "$(iptables_cni_chains)" = "$IPT_BEFORE" ] || fail "CNI iptables chains appeared in the host netns"
}

# rt_client_args ARGS...: the flags every client test takes, into globals FROM (--from DIR),
# MODE (ours, or reference with --reference) and VERSION (--cni-version, default 1.0.0);
# -h prints the script's header comment.
rt_client_args() {
  FROM= MODE=ours VERSION=1.0.0
  while [ $# -gt 0 ]; do
    case $1 in
      --from) FROM=$2; shift ;;
      --cni-version) VERSION=$2; shift ;;
      --reference) MODE=reference ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
      *) echo "$RT_NAME: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
  done
}

# ---- containerd (Debian's 1.6) in a node netns -------------------------------------------------
# Shared by scripts/test-containerd.sh (its CRI plugin, driven by crictl) and test-image.sh (ctr
# run). One containerd per test, everything under a temp dir DIR: root (DIR/root), state
# (DIR/state-containerd), socket (DIR/containerd.sock), opt (DIR/opt), /run/containerd (bound
# from DIR/run-containerd inside its mount namespace only: shim sockets, runc's default root) and
# its log (DIR/containerd.log). Images go through the native snapshotter (no overlay mounts).
# Globals: CTRD_DIR, CTRD_SOCK, CTRD_PID (containerd's own pid), CTRD_MNT (its mount namespace's
# inode: its shims and containers live there too).
CTRD_DIR='' CTRD_SOCK='' CTRD_PID='' CTRD_MNT=''

# ctrd_config DIR [--no-cri]: write DIR/config.toml (the layout above); append the CRI plugin's
# table after it (`cat >>DIR/config.toml`), or pass --no-cri to disable that plugin.
ctrd_config() {
  local dir=$1 top=''
  [ "${2:-}" != --no-cri ] || top='disabled_plugins = ["io.containerd.grpc.v1.cri"]'
  mkdir -p "$dir/run-containerd"
  cat >"$dir/config.toml" <<CONFIG
version = 2
root = "$dir/root"
state = "$dir/state-containerd"
$top
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
CONFIG
}

# ctrd_start DIR NODE STASH [--bind SRC DST]...: containerd with DIR/config.toml in netns NODE,
# in a private mount namespace (scripts/node-exec.sh; STASH an empty dir) with /run/containerd
# and the given binds; returns once it answers on DIR/containerd.sock. Fails loudly otherwise.
ctrd_start() {
  local dir=$1 node=$2 stash=$3
  shift 3
  CTRD_DIR=$dir CTRD_SOCK=$dir/containerd.sock
  rt_mountpoint /run/containerd
  # A plain command in the background: $! is containerd's own pid (node-exec.sh, unshare, ip
  # netns exec and the inner stage all exec).
  "$RT_REPO/scripts/node-exec.sh" --stash "$stash" "$node" --bind "$dir/run-containerd" /run/containerd "$@" \
    -- containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 100); do
    [ -S "$CTRD_SOCK" ] && ctr --address "$CTRD_SOCK" version >/dev/null 2>&1 && break
    kill -0 "$CTRD_PID" 2>/dev/null || fail "containerd exited at start-up"
    sleep 0.1
  done
  ctr --address "$CTRD_SOCK" version >/dev/null 2>&1 || fail "containerd does not answer on $CTRD_SOCK"
  CTRD_MNT=$(readlink "/proc/$CTRD_PID/ns/mnt" | tr -dc 0-9)
  [ "$(readlink "/proc/$CTRD_PID/ns/net")" = "$(ip netns exec "$node" readlink /proc/self/ns/net)" ] ||
    fail "containerd is not in the node netns"
  [ "$(basename "$(readlink "/proc/$CTRD_PID/exe")")" = containerd ] || fail "pid $CTRD_PID is not containerd"
}

# ctrd_ctr ARGS...: ctr against this containerd, in the k8s.io namespace (the CRI's).
ctrd_ctr() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }

# ctrd_run ARGS...: `ctr run` with the native snapshotter and the IO fifos in DIR/fifo (ctr makes
# them where the shim, in containerd's mount namespace, finds them too; not /run/containerd).
ctrd_run() {
  mkdir -p "$CTRD_DIR/fifo"
  ctrd_ctr run --snapshotter native --fifo-dir "$CTRD_DIR/fifo" "$@"
}

# ctrd_import TAR: import an image archive (OCI layout or docker save) with the native snapshotter.
ctrd_import() {
  ctrd_ctr images import --snapshotter native "$1" >"$CTRD_DIR/import.log" 2>&1 ||
    { cat "$CTRD_DIR/import.log" >&2; fail "ctr images import $1 failed"; }
}

# ctrd_stop: stop containerd with SIGTERM, as a node would; fails if it does not stop within
# 10 s or leaves a process (shim, container) in its mount namespace.
ctrd_stop() {
  local leftover
  kill -TERM "$CTRD_PID"
  for _ in $(seq 100); do kill -0 "$CTRD_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$CTRD_PID" 2>/dev/null; then fail "containerd did not stop on SIGTERM"; fi
  wait "$CTRD_PID" 2>/dev/null || true
  leftover=$(mntns_pids "$CTRD_MNT")
  [ -z "$leftover" ] || fail "processes left in containerd's mount namespace: $leftover"
  CTRD_PID=
}

# ctrd_kill: for cleanup traps: containerd (SIGTERM, then SIGKILL after 5 s) and every process
# left in its mount namespace. Never fails.
ctrd_kill() {
  if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
    kill -TERM "$CTRD_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$CTRD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CTRD_PID" 2>/dev/null
  fi
  kill_mntns "$CTRD_MNT"
  wait 2>/dev/null
  CTRD_PID=
  return 0
}

# rt_pause_image: the path of the static pause image (localhost/pause:cni-test, an OCI archive
# for ctr images import), built once into the cache (gcc -static scripts/pause.c).
rt_pause_image() {
  local dir=$RT_CACHE/images key tar tmp
  key=$(cat "$RT_REPO/scripts/pause.c" "$RT_REPO/scripts/make-pause-image.py" | sha256sum | cut -c1-16)
  tar=$dir/pause-$key.tar
  if [ ! -s "$tar" ]; then
    mkdir -p "$dir"
    tmp=$(mktemp -d "/tmp/calico-pause.XXXXXX")
    gcc -static -Os -o "$tmp/pause" "$RT_REPO/scripts/pause.c" ||
      { rm -rf "$tmp"; fail "gcc -static pause.c failed (is libc6-dev installed?)"; }
    strip "$tmp/pause" 2>/dev/null || true
    python3 "$RT_REPO/scripts/make-pause-image.py" "$tmp/pause" "$tar.tmp.$$" localhost/pause:cni-test ||
      { rm -rf "$tmp" "$tar.tmp.$$"; fail "make-pause-image.py failed"; }
    mv "$tar.tmp.$$" "$tar"
    rm -rf "$tmp"
  fi
  echo "$tar"
}
