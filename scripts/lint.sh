#!/usr/bin/env bash
# The layering rules of the workspace, checked by grep (see libipam/DESIGN.md and the README):
#   - netlink is spoken only in calico-cni/src/dataplane/linux*;
#   - namespaces are entered only in calico-cni/src/dataplane;
#   - the kube crate is used only by libipam's kubernetes datastore and calico-cni/src/k8s.rs;
#   - the etcd client crate is used only by libipam's etcd datastore;
#   - libipam's pure core (model, names, selector, validate, alloc, cni) knows no backend.
# Prints every violation and exits 1 if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
# only_in PATTERN ALLOWED-REGEX DESCRIPTION: PATTERN may appear in source files matching ALLOWED only.
only_in() {
  local hits
  hits=$(grep -rlE "$1" --include='*.rs' libipam/src calico-cni/src calico-ipam/src | grep -vE "$2" || true)
  if [ -n "$hits" ]; then
    echo "layering: $3:" >&2
    echo "$hits" | sed 's/^/  /' >&2
    status=1
  fi
}

only_in 'rtnetlink|netlink_packet|netlink_sys|netlink_proto' '^calico-cni/src/dataplane/linux' \
  "netlink outside calico-cni/src/dataplane/linux"
only_in '\b(setns|unshare)\b' '^calico-cni/src/dataplane/' \
  "namespace switching outside calico-cni/src/dataplane"
only_in '^\s*use (kube|k8s_openapi)\b|\b(kube|k8s_openapi)::(api|core|config|Client|Config|Error)\b' \
  '^(libipam/src/datastore/kube/|calico-cni/src/k8s\.rs)' \
  "the kube crate outside libipam/src/datastore/kube and calico-cni/src/k8s.rs"
only_in '\betcd_client\b' '^libipam/src/datastore/etcd/' \
  "the etcd client crate outside libipam/src/datastore/etcd"
core=(libipam/src/model libipam/src/names.rs libipam/src/selector.rs libipam/src/validate.rs
      libipam/src/alloc libipam/src/cni)
hits=$(grep -rlE 'datastore::(local|kube|etcd|memory)|LocalStore|KubeStore|EtcdStore|MemoryStore|tokio' "${core[@]}" || true)
if [ -n "$hits" ]; then
  echo "layering: libipam's core names a backend or the runtime:" >&2
  echo "$hits" | sed 's/^/  /' >&2
  status=1
fi
[ "$status" = 0 ] && echo "layering: ok"
exit "$status"
