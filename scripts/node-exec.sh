#!/usr/bin/env bash
# node-exec.sh: `ip netns exec NODE CMD`, plus a private mount namespace set up for container
# runtimes, so that nothing they write lands in the real host's shared directories.
#
# usage: node-exec.sh --stash DIR NODE [--bind SRC DST]... -- CMD [ARGS...]
#
#   NODE          a network namespace made by `ip netns add` (see make_node in lib-netns.sh)
#   --stash DIR   an empty directory; the cgroup mounts are parked there while `ip netns exec`
#                 remounts /sys (which would otherwise hide /sys/fs/cgroup from runc)
#   --bind S D    bind-mount S on D inside the private mount namespace only (D must exist), e.g.
#                 a temp dir on /var/lib/cni (the libcni result cache) or /run/containerd
#
# The mount namespace is a slave of the host's: nothing mounted in it propagates back, and all its
# mounts vanish with its last process. CMD runs with the node's network namespace and a sysfs that
# shows the node's interfaces, like `ip netns exec`.
set -euo pipefail

if [ "${1:-}" = --inner ]; then
  # Second stage: already inside `ip netns exec NODE` (new mount ns, fresh /sys).
  stash=$2
  shift 2
  mount --rbind "$stash" /sys/fs/cgroup
  while [ "${1:-}" = --bind ]; do
    mount --bind "$2" "$3"
    shift 3
  done
  [ "${1:-}" = -- ] && shift
  exec "$@"
fi

[ "${1:-}" = --stash ] && [ $# -ge 4 ] || {
  sed -n '4,16p' "$0" >&2
  exit 2
}
stash=$2
node=$3
shift 3
[ -d "$stash" ] || { echo "node-exec.sh: stash $stash is not a directory" >&2; exit 2; }
[ -e "/var/run/netns/$node" ] || { echo "node-exec.sh: no network namespace $node" >&2; exit 2; }
self=$(readlink -f "$0")
# First stage: a private (slave) mount namespace in which the cgroup mounts are parked in the stash,
# then `ip netns exec` (which makes another, nested mount namespace and remounts /sys).
exec unshare --mount --propagation slave -- bash -c '
  set -e
  mount --rbind /sys/fs/cgroup "$1"
  exec ip netns exec "$2" "$3" --inner "$1" "${@:4}"
' node-exec "$stash" "$node" "$self" "$@"
