#!/usr/bin/env bash
# Tests of scripts/install-cni.sh in temp dirs: layout and modes, the conflist's fields, the
# kubeconfig built from a service-account dir, idempotency (a re-run changes no inode or mtime),
# atomic replacement, bad flags changing nothing, and --uninstall removing exactly what was
# installed (other files and pre-existing directories stay).
#
# usage: scripts/test-install-cni.sh [--from DIR] [--apiserver]
#   --from DIR     binaries to install (calico-cni, calico-ipam); default: stand-ins made from
#                  Debian's ptp and host-local (the installer only copies them and asks VERSION)
#   --apiserver    also check the generated kubeconfig and the DaemonSet against a real
#                  kube-apiserver (scripts/kube-testenv; builds it once, which takes minutes)
set -euo pipefail
RT_NAME=test-install-cni
source "$(dirname "$0")/lib-runtimes.sh"

FROM=
APISERVER=0
while [ $# -gt 0 ]; do
  case $1 in
    --from) FROM=$2; shift ;;
    --apiserver) APISERVER=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "$RT_NAME: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

T=$(mktemp -d "/tmp/calico-install-test.$$.XXXXXX")
KT=
cleanup() {
  local rc=$?
  set +e
  [ -n "$KT" ] && "$RT_REPO/scripts/kube-testenv" down "$KT" >/dev/null 2>&1
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

INSTALL=$RT_REPO/scripts/install-cni.sh
if [ -z "$FROM" ]; then
  FROM=$T/from
  mkdir -p "$FROM"
  cp /usr/lib/cni/ptp "$FROM/calico-cni" || fail "no /usr/lib/cni/ptp (containernetworking-plugins) for stand-in binaries"
  cp /usr/lib/cni/host-local "$FROM/calico-ipam"
fi
snap() { find "$@" -printf '%p %m %i %T@ %s\n' 2>/dev/null | LC_ALL=C sort; }
ok() { echo "  ok - $*"; }

# ---------------------------------------------------------------------------------------------
step "local datastore: fresh install into missing directories"
B=$T/host/opt/cni/bin C=$T/host/etc/cni/net.d
NODENAME=node-a "$INSTALL" -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --datastore-path /var/lib/calico/ipam-test || fail "install failed"
for f in "$B/calico:755" "$B/calico-ipam:755" "$C/10-calico.conflist:644"; do
  [ "$(stat -c %a "${f%:*}")" = "${f##*:}" ] || fail "${f%:*} is not mode ${f##*:}"
done
cmp -s "$FROM/calico-cni" "$B/calico" || fail "bin/calico is not a copy of calico-cni"
cmp -s "$FROM/calico-ipam" "$B/calico-ipam" || fail "bin/calico-ipam is not a copy of calico-ipam"
[ ! -e "$C/calico-kubeconfig" ] || fail "local datastore wrote a kubeconfig"
jq -e '
  .name == "k8s-pod-network" and .cniVersion == "1.0.0" and (.plugins | length) == 1 and
  (.plugins[0] | .type == "calico" and .datastore_type == "local" and
     .datastore_path == "/var/lib/calico/ipam-test" and .nodename == "node-a" and
     .log_file_path == "/var/log/calico/cni/cni.log" and
     .ipam == {type: "calico-ipam", assign_ipv4: "true", assign_ipv6: "true"} and
     has("kubernetes") == false)' "$C/10-calico.conflist" >/dev/null ||
  fail "unexpected conflist: $(cat "$C/10-calico.conflist")"
ok "binaries 0755, conflist 0644 with the expected fields, no kubeconfig"

step "re-running changes nothing"
before=$(snap "$T/host")
NODENAME=node-a "$INSTALL" --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --datastore-path /var/lib/calico/ipam-test >"$T/rerun.out" || fail "re-run failed"
[ "$before" = "$(snap "$T/host")" ] || fail "re-run changed files: $(diff <(echo "$before") <(snap "$T/host"))"
has "$(cat "$T/rerun.out")" "nothing changed" || fail "re-run did not say nothing changed: $(cat "$T/rerun.out")"
ok "same inodes, modes, sizes and mtimes"

step "a changed setting replaces only the conflist, by rename"
ino_conf=$(stat -c %i "$C/10-calico.conflist") ino_bin=$(stat -c %i "$B/calico")
NODENAME=node-a "$INSTALL" -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --datastore-path /var/lib/calico/ipam-test --cni-version 0.3.1 --mtu 1440 || fail "install failed"
[ "$(stat -c %i "$C/10-calico.conflist")" != "$ino_conf" ] || fail "conflist rewritten in place, not renamed"
[ "$(stat -c %i "$B/calico")" = "$ino_bin" ] || fail "unchanged binary was rewritten"
jq -e '.cniVersion == "0.3.1" and .plugins[0].mtu == 1440' "$C/10-calico.conflist" >/dev/null || fail "new settings not written"
[ -z "$(find "$T/host" -name '.*.tmp.*')" ] || fail "temporary files left: $(find "$T/host" -name '.*.tmp.*')"
ok "new inode for the conflist, same inode for the binaries, no temp files"

step "bad flags change nothing"
before=$(snap "$T/host")
for bad in "--datastore-type etcd" "--cni-version one" "--network-name bad/name" "--mtu x" \
  "--capabilities {broken" "--from $T/nowhere"; do
  # shellcheck disable=SC2086
  if NODENAME=node-a "$INSTALL" -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" $bad 2>"$T/bad.err"; then
    fail "install accepted $bad"
  fi
done
[ "$before" = "$(snap "$T/host")" ] || fail "a failed install changed files"
ok "each rejected, nothing written"

step "uninstall removes exactly what was installed"
echo keep >"$B/portmap"
echo keep >"$C/99-other.conflist"
"$INSTALL" -q --uninstall --conf-dir "$C" || fail "uninstall failed"
left=$(cd "$T/host" && find . | LC_ALL=C sort | tr '\n' ' ')
[ "$left" = ". ./etc ./etc/cni ./etc/cni/net.d ./etc/cni/net.d/99-other.conflist ./opt ./opt/cni ./opt/cni/bin ./opt/cni/bin/portmap " ] ||
  fail "after uninstall: $left"
rm "$B/portmap" "$C/99-other.conflist"
"$INSTALL" -q --uninstall --conf-dir "$C" || fail "second uninstall failed"
ok "others' files and the dirs holding them stay; a second uninstall is a no-op"
mkdir -p "$T/pre/bin" "$T/pre/net.d"
NODENAME=node-a "$INSTALL" -q --from "$FROM" --bin-dir "$T/pre/bin" --conf-dir "$T/pre/net.d" || fail "install failed"
"$INSTALL" -q --uninstall --conf-dir "$T/pre/net.d" || fail "uninstall failed"
[ -d "$T/pre/bin" ] && [ -d "$T/pre/net.d" ] && [ -z "$(find "$T/pre" -mindepth 1 ! -type d)" ] ||
  fail "uninstall removed pre-existing directories or left files: $(ls -lA "$T/pre" "$T/pre/bin" "$T/pre/net.d" 2>&1)"
rm -rf "$T/host" "$T/pre"
ok "pre-existing directories are kept, ones it created are removed"

step "kubernetes datastore: kubeconfig from the service account"
SA=$T/sa
mkdir -p "$SA"
printf 'test-token-123\n' >"$SA/token"
printf -- '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n' >"$SA/ca.crt"
if KUBERNETES_SERVICE_HOST='' NODENAME=node-b "$INSTALL" -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --datastore-type kubernetes --serviceaccount-dir "$SA" 2>"$T/k.err"; then
  fail "kubernetes install without an API server host succeeded"
fi
[ ! -e "$T/host" ] || fail "a failed kubernetes install wrote files: $(find "$T/host")"
KUBERNETES_SERVICE_HOST=fd00:96::1 KUBERNETES_SERVICE_PORT=6443 NODENAME=node-b "$INSTALL" -q \
  --from "$FROM" --bin-dir "$B" --conf-dir "$C" --host-conf-dir /etc/cni/net.d \
  --datastore-type kubernetes --serviceaccount-dir "$SA" || fail "kubernetes install failed"
K=$C/calico-kubeconfig
[ "$(stat -c %a "$K")" = 600 ] || fail "kubeconfig is not mode 0600"
has "$(cat "$K")" "server: https://[fd00:96::1]:6443" || fail "kubeconfig server wrong: $(cat "$K")"
has "$(cat "$K")" 'token: "test-token-123"' || fail "kubeconfig token wrong"
has "$(cat "$K")" "certificate-authority-data: \"$(base64 -w0 <"$SA/ca.crt")\"" || fail "kubeconfig CA wrong"
jq -e '.plugins[0] | .datastore_type == "kubernetes" and .nodename == "node-b" and
  .kubernetes.kubeconfig == "/etc/cni/net.d/calico-kubeconfig" and .policy.type == "k8s" and
  has("datastore_path") == false' "$C/10-calico.conflist" >/dev/null ||
  fail "unexpected kubernetes conflist: $(cat "$C/10-calico.conflist")"
ok "kubeconfig 0600 (server, token, CA), conflist points at the host path"
printf 'rotated-token-456\n' >"$SA/token"
ino_conf=$(stat -c %i "$C/10-calico.conflist")
KUBERNETES_SERVICE_HOST=fd00:96::1 KUBERNETES_SERVICE_PORT=6443 NODENAME=node-b "$INSTALL" -q \
  --from "$FROM" --bin-dir "$B" --conf-dir "$C" --host-conf-dir /etc/cni/net.d \
  --datastore-type kubernetes --serviceaccount-dir "$SA" || fail "re-install failed"
has "$(cat "$K")" 'token: "rotated-token-456"' || fail "rotated token not written"
[ "$(stat -c %i "$C/10-calico.conflist")" = "$ino_conf" ] || fail "token rotation rewrote the conflist"
ok "a rotated token rewrites only the kubeconfig"
"$INSTALL" -q --uninstall --conf-dir "$C" || fail "uninstall failed"
[ ! -e "$T/host" ] || fail "uninstall left: $(find "$T/host")"
ok "uninstall removes the kubeconfig too"

step "--config-template with Calico's placeholders"
cat >"$T/template.json" <<'EOF'
{"name": "__NETWORK_NAME__", "cniVersion": "__CNI_VERSION__", "plugins": [
  {"type": "calico", "nodename": "__KUBERNETES_NODE_NAME__", "mtu": __CNI_MTU__,
   "datastore_type": "__DATASTORE_TYPE__", "log_file_path": "__LOG_FILE_PATH__",
   "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}},
  {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}]}
EOF
NODENAME='node"q' "$INSTALL" -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" --mtu 1400 \
  --config-template "$T/template.json" || fail "template install failed"
jq -e '.name == "k8s-pod-network" and .plugins[0].nodename == "node\"q" and .plugins[0].mtu == 1400 and
  .plugins[1].type == "portmap"' "$C/10-calico.conflist" >/dev/null || fail "template not rendered: $(cat "$C/10-calico.conflist")"
"$INSTALL" -q --uninstall --conf-dir "$C"
ok "placeholders substituted (JSON-escaped)"

if [ "$APISERVER" = 1 ]; then
  step "a real kube-apiserver: the generated kubeconfig authenticates, the DaemonSet is accepted"
  KT=$T/kube
  "$RT_REPO/scripts/kube-testenv" up "$KT" >"$T/kube-up.log" 2>&1 || { tail -20 "$T/kube-up.log" >&2; fail "kube-testenv up failed"; }
  mkdir -p "$T/sa2"
  cp "$KT/calico-cni.token" "$T/sa2/token"
  cp "$KT/ca.crt" "$T/sa2/ca.crt"
  port=$(grep -o 'https://127.0.0.1:[0-9]*' "$KT/kubeconfig" | head -n1 | cut -d: -f3)
  KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=$port NODENAME=node-c "$INSTALL" -q \
    --from "$FROM" --bin-dir "$B" --conf-dir "$C" --datastore-type kubernetes --serviceaccount-dir "$T/sa2" ||
    fail "install against kube-testenv failed"
  LAUNCHER=$("$RT_REPO/scripts/kube-testenv" build)
  "$LAUNCHER" get --kubeconfig "$C/calico-kubeconfig" /apis/crd.projectcalico.org/v1/clusterinformations default >/dev/null ||
    fail "the generated kubeconfig cannot read ClusterInformation default"
  "$RT_REPO/scripts/kube-testenv" apply "$KT" "$RT_REPO/calico-cni/manifests/install/daemonset.yaml" >/dev/null ||
    fail "the API server rejected calico-cni/manifests/install/daemonset.yaml"
  "$RT_REPO/scripts/kube-testenv" get "$KT" /apis/apps/v1/namespaces/kube-system/daemonsets calico-cni |
    jq -e '.spec.template.spec.hostNetwork == true and .spec.template.spec.serviceAccountName == "calico-cni"' >/dev/null ||
    fail "the stored DaemonSet is not what we applied"
  "$RT_REPO/scripts/kube-testenv" down "$KT" >/dev/null 2>&1
  KT=
  ok "kubeconfig works as user calico-cni; DaemonSet stored"
fi

step "PASS in $(rt_elapsed)s"
