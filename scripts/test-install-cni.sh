#!/usr/bin/env bash
# Tests of scripts/install-cni.sh in temp dirs: layout and modes, the conflist's fields, idempotency
# (a re-run changes no inode or mtime), atomic replacement, bad settings changing nothing,
# --uninstall removing exactly what was installed; Calico's environment contract (the env names,
# env overridden by flags, CNI_OLD_CONF_NAME, SKIP/UPDATE_CNI_BINARIES, SLEEP, Calico's /host
# layout with its secondary bin dir, every __PLACEHOLDER__), with Calico v3.31.7's own calico-config
# ConfigMap and install-cni env (from /work/shared/calico or CALICO_YAML) producing byte for byte
# the conflist Calico's installer writes (scripts/test-install-cni-calico.py re-states its rules);
# then, against a real kube-apiserver (scripts/kube-testenv): the kubeconfig for calico-cni-plugin
# from a TokenRequest made with the installer's own token, the refusals (403, 401, 404) with their
# messages and nothing written, the refresher's schedule from the token's expiry, its renewals, its
# immediate renewal when the pod's own token rotates, and the DaemonSet accepted.
#
# usage: scripts/test-install-cni.sh [--from DIR] [--no-apiserver]
#   --from DIR       binaries to install (calico-cni, calico-ipam); default: stand-ins made from
#                    Debian's ptp and host-local (the installer only copies them and asks VERSION)
#   --no-apiserver   skip the kube-apiserver part (says so; the default runs it)
set -euo pipefail
RT_NAME=test-install-cni
source "$(dirname "$0")/lib-runtimes.sh"

FROM=
APISERVER=1
while [ $# -gt 0 ]; do
  case $1 in
    --from) FROM=$2; shift ;;
    --no-apiserver) APISERVER=0 ;;
    --apiserver) APISERVER=1 ;; # the default; kept for old command lines
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "$RT_NAME: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

ensure_apt jq curl python3-yaml containernetworking-plugins
PY=/usr/bin/python3 # Debian's, with python3-yaml
CALICO_PY=$RT_REPO/scripts/test-install-cni-calico.py
CALICO_YAML=${CALICO_YAML:-/work/shared/calico/v3.31.7/calico.yaml}
[ -r "$CALICO_YAML" ] || fail "no Calico manifest $CALICO_YAML (set CALICO_YAML to Calico v3.31.7's manifests/calico.yaml)"

T=$(mktemp -d "/tmp/calico-install-test.$$.XXXXXX")
KT=
BG_PIDS=()
cleanup() {
  local rc=$? p
  set +e
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
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
# run_install ENV... -- ARGS...: the installer with exactly these Calico variables set (others unset).
CALICO_VARS=(CNI_CONF_NAME CNI_OLD_CONF_NAME CNI_NET_DIR CNI_MTU CNI_NETWORK_CONFIG CNI_NETWORK_CONFIG_FILE
  SKIP_CNI_BINARIES UPDATE_CNI_BINARIES LOG_LEVEL LOG_FILE_PATH LOG_FILE_MAX_SIZE LOG_FILE_MAX_AGE
  LOG_FILE_MAX_COUNT DATASTORE_TYPE SLEEP KUBERNETES_NODE_NAME NODENAME KUBERNETES_SERVICE_HOST
  KUBERNETES_SERVICE_PORT KUBERNETES_SERVICE_PROTOCOL SKIP_TLS_VERIFY CALICO_CNI_SERVICE_ACCOUNT
  CNI_TOKEN_REFRESH_INTERVAL REQUIRE_MTU_FILE CALICO_API_GROUP ETCD_ENDPOINTS ETCD_DISCOVERY_SRV
  TEST_FILE_PERMISSION TLS_ASSETS_DIR ETCD_CA_CERT_FILE ETCD_CERT_FILE ETCD_KEY_FILE)
unset "${CALICO_VARS[@]}"
run_install() {
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$INSTALL" "$@"
}
# jwt_claims TOKEN: the JSON claims of a JWT.
jwt_claims() {
  "$PY" -c 'import base64,sys; p=sys.argv[1].split(".")[1]; print(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)).decode())' "$1"
}
kubeconfig_token() { sed -n 's/^    token: //p' "$1"; }

# ---------------------------------------------------------------------------------------------
step "local datastore: fresh install into missing directories"
B=$T/host/opt/cni/bin C=$T/host/etc/cni/net.d
run_install NODENAME=node-a -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --datastore-path /var/lib/calico/ipam-test || fail "install failed"
for f in "$B/calico:755" "$B/calico-ipam:755" "$C/10-calico.conflist:600"; do
  [ "$(stat -c %a "${f%:*}")" = "${f##*:}" ] || fail "${f%:*} is not mode ${f##*:}"
done
cmp -s "$FROM/calico-cni" "$B/calico" || fail "bin/calico is not a copy of calico-cni"
cmp -s "$FROM/calico-ipam" "$B/calico-ipam" || fail "bin/calico-ipam is not a copy of calico-ipam"
[ ! -e "$C/calico-kubeconfig" ] || fail "local datastore wrote a kubeconfig"
jq -e '
  .name == "k8s-pod-network" and .cniVersion == "1.0.0" and (.plugins | length) == 1 and
  (.plugins[0] | .type == "calico" and .datastore_type == "local" and .log_level == "info" and
     .datastore_path == "/var/lib/calico/ipam-test" and .nodename == "node-a" and
     .log_file_path == "/var/log/calico/cni/cni.log" and has("mtu") == false and
     .ipam == {type: "calico-ipam", assign_ipv4: "true", assign_ipv6: "true"} and
     has("kubernetes") == false)' "$C/10-calico.conflist" >/dev/null ||
  fail "unexpected conflist: $(cat "$C/10-calico.conflist")"
ok "binaries 0755, conflist 0600 (as Calico) with the expected fields, no kubeconfig"

step "re-running changes nothing"
before=$(snap "$T/host")
run_install NODENAME=node-a -- --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --datastore-path /var/lib/calico/ipam-test >"$T/rerun.out" || fail "re-run failed"
[ "$before" = "$(snap "$T/host")" ] || fail "re-run changed files: $(diff <(echo "$before") <(snap "$T/host"))"
has "$(cat "$T/rerun.out")" "nothing changed" || fail "re-run did not say nothing changed: $(cat "$T/rerun.out")"
ok "same inodes, modes, sizes and mtimes"

step "a changed setting replaces only the conflist, by rename"
ino_conf=$(stat -c %i "$C/10-calico.conflist") ino_bin=$(stat -c %i "$B/calico")
run_install NODENAME=node-a -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --datastore-path /var/lib/calico/ipam-test --cni-version 0.3.1 --mtu 1440 || fail "install failed"
[ "$(stat -c %i "$C/10-calico.conflist")" != "$ino_conf" ] || fail "conflist rewritten in place, not renamed"
[ "$(stat -c %i "$B/calico")" = "$ino_bin" ] || fail "unchanged binary was rewritten"
jq -e '.cniVersion == "0.3.1" and .plugins[0].mtu == 1440' "$C/10-calico.conflist" >/dev/null || fail "new settings not written"
[ -z "$(find "$T/host" -name '.*.tmp.*')" ] || fail "temporary files left: $(find "$T/host" -name '.*.tmp.*')"
ok "new inode for the conflist, same inode for the binaries, no temp files"

step "bad settings change nothing"
before=$(snap "$T/host")
for bad in "--datastore-type etcd" "--cni-version one" "--network-name bad/name" "--mtu x" \
  "--capabilities {broken" "--from $T/nowhere" "--conf-name a/b.conflist" "--conf-name calico.txt"; do
  # shellcheck disable=SC2086
  if run_install NODENAME=node-a -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" $bad 2>"$T/bad.err"; then
    fail "install accepted $bad"
  fi
done
for bad in DATASTORE_TYPE=etcd CNI_MTU=x SLEEP=maybe UPDATE_CNI_BINARIES=perhaps CNI_CONF_NAME=../x.conflist \
  LOG_FILE_MAX_COUNT=ten 'CNI_NETWORK_CONFIG={"missing quote}' 'CNI_NETWORK_CONFIG=[1]' \
  CNI_NETWORK_CONFIG_FILE=$T/nowhere.json; do
  if run_install NODENAME=node-a "$bad" -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" 2>"$T/bad.err"; then
    fail "install accepted $bad"
  fi
  has "$(cat "$T/bad.err")" "error:" || fail "$bad: no error message: $(cat "$T/bad.err")"
done
[ "$before" = "$(snap "$T/host")" ] || fail "a failed install changed files"
ok "each rejected with an error, nothing written"

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
run_install NODENAME=node-a -- -q --from "$FROM" --bin-dir "$T/pre/bin" --conf-dir "$T/pre/net.d" || fail "install failed"
"$INSTALL" -q --uninstall --conf-dir "$T/pre/net.d" || fail "uninstall failed"
[ -d "$T/pre/bin" ] && [ -d "$T/pre/net.d" ] && [ -z "$(find "$T/pre" -mindepth 1 ! -type d)" ] ||
  fail "uninstall removed pre-existing directories or left files: $(ls -lA "$T/pre" "$T/pre/bin" "$T/pre/net.d" 2>&1)"
rm -rf "$T/host" "$T/pre"
ok "pre-existing directories are kept, ones it created are removed"

# A service-account dir as a pod sees it, with a static token (no API server in this part).
SA=$T/sa
mkdir -p "$SA"
printf 'test-token-123' >"$SA/token"
printf 'kube-system' >"$SA/namespace"
printf -- '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n' >"$SA/ca.crt"

step "Calico's environment: the tester's CNI_CONF_NAME=20-calico.conflist CNI_MTU=1440 LOG_LEVEL=debug DATASTORE_TYPE=kubernetes"
mkdir -p "$C"
echo '{"name":"old"}' >"$C/10-calico.conflist" # an earlier Calico install's (CNI_OLD_CONF_NAME)
TESTER=(CNI_CONF_NAME=20-calico.conflist CNI_MTU=1440 LOG_LEVEL=debug DATASTORE_TYPE=kubernetes)
K8S_ENV=(KUBERNETES_SERVICE_HOST=fd00:96::1 KUBERNETES_SERVICE_PORT=6443 KUBERNETES_NODE_NAME=node-b)
run_install "${TESTER[@]}" "${K8S_ENV[@]}" -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --host-conf-dir /etc/cni/net.d --serviceaccount-dir "$SA" --no-token-request || fail "install failed"
[ -f "$C/20-calico.conflist" ] || fail "no 20-calico.conflist: $(ls "$C")"
[ ! -e "$C/10-calico.conflist" ] || fail "the old 10-calico.conflist was not removed (CNI_OLD_CONF_NAME)"
jq -e '.plugins[0] | .mtu == 1440 and .log_level == "debug" and .datastore_type == "kubernetes" and
  .nodename == "node-b" and .kubernetes.kubeconfig == "/etc/cni/net.d/calico-kubeconfig" and
  .policy.type == "k8s" and has("datastore_path") == false' "$C/20-calico.conflist" >/dev/null ||
  fail "the environment was not applied: $(cat "$C/20-calico.conflist")"
[ -f "$C/calico-kubeconfig" ] || fail "no kubeconfig where the conflist points"
ok "20-calico.conflist with mtu 1440, log_level debug, datastore kubernetes; old 10-calico.conflist removed"
run_install "${TESTER[@]}" "${K8S_ENV[@]}" -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --host-conf-dir /etc/cni/net.d --serviceaccount-dir "$SA" --no-token-request \
  --conf-name 30-calico.conflist --mtu 1400 --log-level warning --nodename node-c || fail "install failed"
jq -e '.plugins[0] | .mtu == 1400 and .log_level == "warning" and .nodename == "node-c"' "$C/30-calico.conflist" >/dev/null ||
  fail "flags did not win over the environment: $(cat "$C/30-calico.conflist")"
[ -f "$C/20-calico.conflist" ] || fail "20-calico.conflist removed although CNI_OLD_CONF_NAME is 10-calico.conflist"
ok "flags win over the environment"

step "kubeconfig in Calico's layout (--no-token-request: this pod's own token)"
K=$C/calico-kubeconfig
[ "$(stat -c %a "$K")" = 600 ] || fail "kubeconfig is not mode 0600"
expected_kc="# Kubeconfig file for Calico CNI plugin.
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://[fd00:96::1]:6443
    certificate-authority-data: $(base64 -w0 <"$SA/ca.crt")
users:
- name: calico
  user:
    token: test-token-123
contexts:
- name: calico-context
  context:
    cluster: local
    user: calico
current-context: calico-context"
[ "$(cat "$K"; echo x)" = "${expected_kc}x" ] || fail "kubeconfig differs from Calico's layout: $(diff <(echo "$expected_kc") "$K")"
printf 'rotated-token-456' >"$SA/token"
ino_conf=$(stat -c %i "$C/20-calico.conflist")
run_install "${TESTER[@]}" "${K8S_ENV[@]}" -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --host-conf-dir /etc/cni/net.d --serviceaccount-dir "$SA" --no-token-request || fail "re-install failed"
[ "$(kubeconfig_token "$K")" = rotated-token-456 ] || fail "rotated token not written"
[ "$(stat -c %i "$C/20-calico.conflist")" = "$ino_conf" ] || fail "token rotation rewrote the conflist"
ok "byte for byte Calico's kubeconfig (IPv6 server in brackets); a rotated token rewrites only it"
"$INSTALL" -q --uninstall --conf-dir "$C" || fail "uninstall failed"
[ ! -e "$T/host" ] || [ -z "$(find "$T/host" ! -type d)" ] || fail "uninstall left: $(find "$T/host" ! -type d)"
rm -rf "$T/host"
if run_install KUBERNETES_NODE_NAME=node-b DATASTORE_TYPE=kubernetes -- -q --from "$FROM" --bin-dir "$B" \
  --conf-dir "$C" --serviceaccount-dir "$SA" --no-token-request 2>"$T/k.err"; then
  fail "kubernetes install without an API server host succeeded"
fi
has "$(cat "$T/k.err")" KUBERNETES_SERVICE_HOST || fail "the error does not name KUBERNETES_SERVICE_HOST: $(cat "$T/k.err")"
[ ! -e "$T/host" ] || fail "a failed kubernetes install wrote files: $(find "$T/host")"
ok "no API server host: an error naming KUBERNETES_SERVICE_HOST, nothing written"

# calico_layout DIR: an empty node root with Calico's container mounts under DIR/host.
calico_layout() {
  rm -rf "$1"
  mkdir -p "$1/host/opt/cni/bin" "$1/host/etc/cni/net.d" "$1/host/secondary-bin-dir"
}
# calico_install ROOT NODE VETH_MTU [ENV...] -- [ARGS...]: the installer with Calico v3.31.7's
# install-cni env (calico-config's values, veth_mtu set to VETH_MTU) in Calico's /host layout.
calico_install() {
  local root=$1 node=$2 mtu=$3
  shift 3
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  "$PY" "$CALICO_PY" env "$CALICO_YAML" "$node" "$mtu" >"$T/calico.env" || fail "cannot read Calico's install-cni env from $CALICO_YAML"
  (
    # shellcheck disable=SC1091
    source "$T/calico.env"
    [ ${#envs[@]} -eq 0 ] || export "${envs[@]}"
    exec "$INSTALL" --from "$FROM" --host-root "$root/host" "$@"
  )
}
# calico_expect ROOT VETH_MTU OWN_TOKEN_FILE [ENV...]: what Calico's installer writes for that env.
calico_expect() {
  local mtu=$2 own=$3
  shift 3
  (
    # shellcheck disable=SC1091
    source "$T/calico.env"
    export CNI_MTU="$mtu" "$@"
    "$PY" "$CALICO_PY" expect /etc/cni/net.d/calico-kubeconfig "$own"
  )
}

step "Calico v3.31.7's calico-config ConfigMap and install-cni env, Calico's /host layout"
R=$T/calico-node
for mtu in 0 1440; do
  calico_layout "$R"
  calico_install "$R" node-calico "$mtu" KUBERNETES_SERVICE_HOST=10.96.0.1 KUBERNETES_SERVICE_PORT=443 -- \
    -q --serviceaccount-dir "$SA" --no-token-request || fail "install with Calico's env (veth_mtu $mtu) failed"
  calico_expect "$R" "$mtu" "$SA/token" KUBERNETES_SERVICE_HOST=10.96.0.1 KUBERNETES_SERVICE_PORT=443 >"$T/expected.conflist"
  cmp "$T/expected.conflist" "$R/host/etc/cni/net.d/10-calico.conflist" ||
    fail "veth_mtu $mtu: not what Calico writes: $(diff "$T/expected.conflist" "$R/host/etc/cni/net.d/10-calico.conflist")"
  jq -e --argjson mtu "$mtu" '.plugins[0] | .mtu == $mtu and .nodename == "node-calico" and .log_level == "info" and
    .kubernetes.kubeconfig == "/etc/cni/net.d/calico-kubeconfig"' "$R/host/etc/cni/net.d/10-calico.conflist" >/dev/null ||
    fail "veth_mtu $mtu: unexpected values: $(cat "$R/host/etc/cni/net.d/10-calico.conflist")"
  [ "$(stat -c %a "$R/host/etc/cni/net.d/10-calico.conflist")" = 600 ] || fail "conflist is not 0600 as Calico writes it"
  # /etc/cni/net.d on the host is $R/host/etc/cni/net.d here.
  [ -f "$R/host/etc/cni/net.d/calico-kubeconfig" ] || fail "no kubeconfig at the path the conflist names"
  for d in opt/cni/bin secondary-bin-dir; do
    cmp -s "$FROM/calico-cni" "$R/host/$d/calico" && cmp -s "$FROM/calico-ipam" "$R/host/$d/calico-ipam" ||
      fail "binaries not installed into /host/$d: $(ls -l "$R/host/$d")"
  done
done
ok "byte for byte Calico's conflist (mtu 0 for the stock veth_mtu, 1440 when set); kubeconfig where it points; both bin dirs"

step "every Calico placeholder; CNI_NETWORK_CONFIG_FILE over CNI_NETWORK_CONFIG; --config-template over both"
cat >"$T/all.json" <<'EOF'
{"name": "k8s-pod-network", "cniVersion": "1.0.0", "plugins": [{"type": "calico",
 "log_level": "__LOG_LEVEL__", "log_file_path": "__LOG_FILE_PATH__",
 "log_file_max_size": __LOG_FILE_MAX_SIZE__, "log_file_max_age": __LOG_FILE_MAX_AGE__,
 "log_file_max_count": __LOG_FILE_MAX_COUNT__, "datastore_type": "__DATASTORE_TYPE__",
 "nodename": "__KUBERNETES_NODE_NAME__", "mtu": __CNI_MTU__, "require_mtu_file": __REQUIRE_MTU_FILE__,
 "calico_api_group": "__CALICO_API_GROUP__",
 "etcd_endpoints": "__ETCD_ENDPOINTS__", "etcd_discovery_srv": "__ETCD_DISCOVERY_SRV__",
 "etcd_key_file": "__ETCD_KEY_FILE__", "etcd_cert_file": "__ETCD_CERT_FILE__", "etcd_ca_cert_file": "__ETCD_CA_CERT_FILE__",
 "policy": {"type": "k8s", "k8s_api_root": "https://__KUBERNETES_SERVICE_HOST__:__KUBERNETES_SERVICE_PORT__",
            "k8s_auth_token": "__SERVICEACCOUNT_TOKEN__"},
 "kubernetes": {"kubeconfig": "__KUBECONFIG_FILEPATH__"},
 "ipam": {"type": "calico-ipam"}}]}
EOF
ALL_ENV=(CNI_NETWORK_CONFIG_FILE="$T/all.json" CNI_NETWORK_CONFIG='{"used": "the env text"}'
  LOG_LEVEL=debug LOG_FILE_PATH=/var/log/x.log LOG_FILE_MAX_SIZE=7 LOG_FILE_MAX_AGE=8 LOG_FILE_MAX_COUNT=9
  DATASTORE_TYPE=kubernetes KUBERNETES_NODE_NAME=node-p CNI_MTU=1410 REQUIRE_MTU_FILE=true
  ETCD_ENDPOINTS=http://e:2379 ETCD_DISCOVERY_SRV=srv.example KUBERNETES_SERVICE_HOST=10.96.0.1
  KUBERNETES_SERVICE_PORT=443 CNI_NET_DIR=/etc/kubernetes/cni/net.d)
run_install "${ALL_ENV[@]}" -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" --serviceaccount-dir "$SA" \
  --no-token-request 2>"$T/all.err" || fail "install failed: $(cat "$T/all.err")"
has "$(cat "$T/all.err")" "__SERVICEACCOUNT_TOKEN__" || fail "no warning about the pod's own token in the conflist"
jq -e '(.plugins[0] |
  .log_level == "debug" and .log_file_path == "/var/log/x.log" and .log_file_max_size == 7 and
  .log_file_max_age == 8 and .log_file_max_count == 9 and .datastore_type == "kubernetes" and
  .nodename == "node-p" and .mtu == 1410 and .require_mtu_file == true and
  .calico_api_group == "crd.projectcalico.org/v1" and .etcd_endpoints == "http://e:2379" and
  .etcd_discovery_srv == "srv.example" and .etcd_key_file == "" and .etcd_cert_file == "" and
  .etcd_ca_cert_file == "" and .policy.k8s_api_root == "https://10.96.0.1:443" and
  .policy.k8s_auth_token == "rotated-token-456" and
  .kubernetes.kubeconfig == "/etc/kubernetes/cni/net.d/calico-kubeconfig")' "$C/10-calico.conflist" >/dev/null ||
  fail "placeholders not substituted: $(cat "$C/10-calico.conflist")"
[ -f "$C/calico-kubeconfig" ] || fail "no kubeconfig although the template names __KUBECONFIG_FILEPATH__"
ok "each placeholder replaced (the file's template, not the env text); CNI_NET_DIR in the kubeconfig path"
(export "${ALL_ENV[@]}"; "$PY" "$CALICO_PY" expect /etc/kubernetes/cni/net.d/calico-kubeconfig "$SA/token") >"$T/expected.conflist"
cmp -s "$T/expected.conflist" "$C/10-calico.conflist" || fail "not what Calico writes: $(diff "$T/expected.conflist" "$C/10-calico.conflist")"
ok "byte for byte what Calico's installer writes for the same template and env"
step "etcdv3: ETCD_ENDPOINTS and Calico's TLS assets (TLS_ASSETS_DIR) in the conflist"
S=$T/calico-secrets B3=$T/etcd/opt/cni/bin C3=$T/etcd/etc/cni/net.d
mkdir -p "$S"
for n in etcd-ca etcd-cert etcd-key; do echo "PEM of $n" >"$S/$n"; chmod 644 "$S/$n"; done
ETCD_ENV=(DATASTORE_TYPE=etcdv3 ETCD_ENDPOINTS=https://10.0.0.1:2379,https://10.0.0.2:2379
  TLS_ASSETS_DIR="$S" KUBERNETES_NODE_NAME=node-e CNI_NET_DIR=/etc/cni/net.d)
run_install "${ETCD_ENV[@]}" -- -q --from "$FROM" --bin-dir "$B3" --conf-dir "$C3" || fail "etcdv3 install failed"
jq -e '.plugins[0] | .datastore_type == "etcdv3" and
  .etcd_endpoints == "https://10.0.0.1:2379,https://10.0.0.2:2379" and
  .etcd_ca_cert_file == "/etc/cni/net.d/calico-tls/etcd-ca" and
  .etcd_cert_file == "/etc/cni/net.d/calico-tls/etcd-cert" and
  .etcd_key_file == "/etc/cni/net.d/calico-tls/etcd-key" and .nodename == "node-e" and
  has("kubernetes") == false and has("datastore_path") == false' "$C3/10-calico.conflist" >/dev/null ||
  fail "etcd settings not written: $(cat "$C3/10-calico.conflist")"
for n in etcd-ca etcd-cert etcd-key; do cmp -s "$S/$n" "$C3/calico-tls/$n" || fail "$n not copied"; done
[ "$(stat -c %a "$C3/calico-tls/etcd-key")" = 600 ] || fail "etcd-key is not 0600"
[ "$(stat -c %a "$C3/calico-tls/etcd-ca")" = 644 ] || fail "etcd-ca did not keep its mode"
[ ! -e "$C3/calico-kubeconfig" ] || fail "etcdv3 wrote a kubeconfig"
before=$(snap "$T/etcd")
run_install "${ETCD_ENV[@]}" -- -q --from "$FROM" --bin-dir "$B3" --conf-dir "$C3" || fail "re-run failed"
[ "$before" = "$(snap "$T/etcd")" ] || fail "re-run changed files: $(diff <(echo "$before") <(snap "$T/etcd"))"
ok "endpoints and calico-tls/etcd-{ca,cert,key} (copied, the key 0600) named as the host sees them; a re-run changes nothing"
# Calico's template for etcd mode: its placeholders, byte for byte as Calico's installer fills them.
cat >"$T/etcd.json" <<'EOF'
{"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico",
 "log_level": "__LOG_LEVEL__", "datastore_type": "__DATASTORE_TYPE__", "nodename": "__KUBERNETES_NODE_NAME__",
 "etcd_endpoints": "__ETCD_ENDPOINTS__", "etcd_key_file": "__ETCD_KEY_FILE__",
 "etcd_cert_file": "__ETCD_CERT_FILE__", "etcd_ca_cert_file": "__ETCD_CA_CERT_FILE__",
 "mtu": __CNI_MTU__, "ipam": {"type": "calico-ipam"}}]}
EOF
rm "$S/etcd-ca" # only the files that are there are named
run_install "${ETCD_ENV[@]}" CNI_NETWORK_CONFIG_FILE="$T/etcd.json" -- -q --from "$FROM" --bin-dir "$B3" \
  --conf-dir "$T/etcd-t" || fail "etcd template install failed"
(export "${ETCD_ENV[@]}" CNI_NETWORK_CONFIG_FILE="$T/etcd.json"; "$PY" "$CALICO_PY" expect /etc/cni/net.d/calico-kubeconfig "$SA/token") >"$T/etcd-expected"
cmp -s "$T/etcd-expected" "$T/etcd-t/10-calico.conflist" || fail "not what Calico writes: $(diff "$T/etcd-expected" "$T/etcd-t/10-calico.conflist")"
jq -e '.plugins[0].etcd_ca_cert_file == "" and .plugins[0].etcd_key_file == "/etc/cni/net.d/calico-tls/etcd-key"' \
  "$T/etcd-t/10-calico.conflist" >/dev/null || fail "template: $(cat "$T/etcd-t/10-calico.conflist")"
[ ! -e "$T/etcd-t/calico-tls/etcd-ca" ] || fail "an etcd-ca that is not in TLS_ASSETS_DIR was installed"
ok "Calico's etcd template: byte for byte what Calico's installer writes (a missing asset named \"\")"
# A host install without TLS_ASSETS_DIR: ETCD_*_FILE name the host's own files.
run_install DATASTORE_TYPE=etcdv3 ETCD_ENDPOINTS=https://e:2379 TLS_ASSETS_DIR="$T/none" NODENAME=n \
  ETCD_CA_CERT_FILE=/etc/etcd/ca.pem ETCD_CERT_FILE=/etc/etcd/c.pem ETCD_KEY_FILE=/etc/etcd/k.pem -- \
  -q --from "$FROM" --bin-dir "$B3" --conf-dir "$T/etcd-h" --etcd-key-file /etc/etcd/flag-k.pem || fail "host install failed"
jq -e '.plugins[0] | .etcd_ca_cert_file == "/etc/etcd/ca.pem" and .etcd_cert_file == "/etc/etcd/c.pem" and
  .etcd_key_file == "/etc/etcd/flag-k.pem"' "$T/etcd-h/10-calico.conflist" >/dev/null ||
  fail "ETCD_*_FILE not written: $(cat "$T/etcd-h/10-calico.conflist")"
[ ! -e "$T/etcd-h/calico-tls" ] || fail "calico-tls made without TLS assets"
ok "ETCD_*_FILE (flags over env) written as given when TLS_ASSETS_DIR has none"
# Refused, nothing written: a relative ETCD_*_FILE, etcdv3 without endpoints.
before=$(snap "$T/etcd")
for bad in "ETCD_KEY_FILE=calico-tls/etcd-key:ETCD_KEY_FILE / --etcd-key-file 'calico-tls/etcd-key' is not an absolute path" \
  "ETCD_ENDPOINTS=:needs the etcd endpoints: set ETCD_ENDPOINTS"; do
  if run_install "${ETCD_ENV[@]}" "${bad%%:*}" -- -q --from "$FROM" --bin-dir "$B3" --conf-dir "$C3" 2>"$T/bad.err"; then
    fail "${bad%%:*} accepted"
  fi
  has "$(cat "$T/bad.err")" "${bad#*:}" || fail "${bad%%:*}: unexpected message: $(cat "$T/bad.err")"
done
[ "$before" = "$(snap "$T/etcd")" ] || fail "a refused install changed files"
ok "a relative ETCD_KEY_FILE and missing endpoints are refused, naming the setting; nothing changed"
"$INSTALL" -q --uninstall --conf-dir "$C3" || fail "uninstall failed"
[ ! -e "$C3/calico-tls" ] || fail "uninstall left $(ls -lA "$C3/calico-tls")"
ok "--uninstall removes calico-tls with the assets"
printf '{"name": "__NETWORK_NAME__", "v": "__CNI_VERSION__", "x": "__KUBERNETES_NODE_NAME__"}' >"$T/flag.json"
run_install "${ALL_ENV[@]}" KUBERNETES_NODE_NAME='node"q' -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --serviceaccount-dir "$SA" --no-token-request --config-template "$T/flag.json" || fail "install failed"
[ "$(cat "$C/10-calico.conflist")" = '{"name": "k8s-pod-network", "v": "1.0.0", "x": "node\"q"}' ] ||
  fail "--config-template did not win or values are not JSON-escaped: $(cat "$C/10-calico.conflist")"
run_install CNI_NETWORK_CONFIG='{}' NODENAME=n -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" || fail "install failed"
[ "$(cat "$C/10-calico.conflist"; echo x)" = '{}x' ] || fail "CNI_NETWORK_CONFIG={} not written as it is: $(cat "$C/10-calico.conflist")"
"$INSTALL" -q --uninstall --conf-dir "$C"
rm -rf "$T/host"
ok "--config-template wins; values JSON-escaped; our __NETWORK_NAME__, __CNI_VERSION__; CNI_NETWORK_CONFIG={} written as {} (Calico's own test)"

step "SKIP_CNI_BINARIES, UPDATE_CNI_BINARIES, --plugins-dir"
mkdir -p "$T/plugins"
cp /usr/lib/cni/portmap /usr/lib/cni/bandwidth "$T/plugins/"
run_install NODENAME=n SKIP_CNI_BINARIES=calico-ipam,bandwidth -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --plugins-dir "$T/plugins" || fail "install failed"
[ -x "$B/calico" ] && [ -x "$B/portmap" ] && [ ! -e "$B/calico-ipam" ] && [ ! -e "$B/bandwidth" ] ||
  fail "SKIP_CNI_BINARIES not honoured: $(ls "$B")"
grep -qx "$(realpath "$B")/portmap" "$C/calico-install.manifest" || fail "portmap not in the manifest"
echo "someone else's" >"$B/calico-ipam"
printf 'old' >"$B/calico"
before=$(snap "$B")
run_install NODENAME=n UPDATE_CNI_BINARIES=false -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" || fail "install failed"
[ "$before" = "$(snap "$B")" ] || fail "UPDATE_CNI_BINARIES=false replaced existing binaries"
run_install NODENAME=n UPDATE_CNI_BINARIES=false -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" --update-binaries ||
  fail "install failed"
cmp -s "$FROM/calico-ipam" "$B/calico-ipam" && cmp -s "$FROM/calico-cni" "$B/calico" || fail "--update-binaries did not win"
"$INSTALL" -q --uninstall --conf-dir "$C"
rm -rf "$T/host"
ok "skipped names not installed, existing binaries kept with UPDATE_CNI_BINARIES=false, the flag wins"

step "SLEEP=true: installs, then stays until stopped (Calico's default in a pod)"
env NODENAME=n SLEEP=true "$INSTALL" --from "$FROM" --bin-dir "$B" --conf-dir "$C" >"$T/sleep.out" 2>&1 &
sleeper=$!
BG_PIDS+=("$sleeper")
for _ in $(seq 1 100); do [ -f "$C/10-calico.conflist" ] && has "$(cat "$T/sleep.out")" "sleeping" && break; sleep 0.1; done
has "$(cat "$T/sleep.out")" "sleeping" || fail "SLEEP=true did not install and sleep: $(cat "$T/sleep.out")"
kill -0 "$sleeper" 2>/dev/null || fail "SLEEP=true exited"
children=$(pgrep -P "$sleeper" || true)
kill -TERM "$sleeper"
wait "$sleeper" || fail "SLEEP=true did not exit 0 on TERM"
for c in $children; do ! kill -0 "$c" 2>/dev/null || fail "SLEEP=true left its child $c running"; done
"$INSTALL" -q --uninstall --conf-dir "$C"
rm -rf "$T/host"
ok "conflist written, still running, TERM ends it with exit 0"

if [ "$APISERVER" = 0 ]; then
  step "SKIPPED the kube-apiserver part (--no-apiserver): TokenRequest, refusals, refresher, DaemonSet untested"
  step "PASS (without the API server) in $(rt_elapsed)s"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
step "a real kube-apiserver (scripts/kube-testenv) with calico-cni/manifests/rbac.yaml"
KT=$T/kube
"$RT_REPO/scripts/kube-testenv" up "$KT" >"$T/kube-up.log" 2>&1 || { tail -20 "$T/kube-up.log" >&2; fail "kube-testenv up failed"; }
# shellcheck disable=SC1091
source "$KT/env"
API_PORT=${KUBE_TESTENV_SERVER##*:}
API_ENV=(KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT="$API_PORT")
# token_for NS SA [SECONDS]: a token of that service account, requested as admin.
token_for() {
  curl -sS --fail-with-body --cacert "$KUBE_TESTENV_CA" -H "Authorization: Bearer $KUBE_TESTENV_ADMIN_TOKEN" \
    -H 'Content-Type: application/json' -X POST \
    --data-binary "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenRequest\",\"spec\":{\"expirationSeconds\":${3:-3600}}}" \
    "$KUBE_TESTENV_SERVER/api/v1/namespaces/$1/serviceaccounts/$2/token" | jq -re .status.token
}
# whoami TOKEN: the user name the API server sees for TOKEN.
whoami() {
  curl -sS --fail-with-body --cacert "$KUBE_TESTENV_CA" -H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
    -X POST --data-binary '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \
    "$KUBE_TESTENV_SERVER/apis/authentication.k8s.io/v1/selfsubjectreviews" | jq -re .status.userInfo.username
}
# The installer pod's mounted service account: kube-system/calico-cni, as the DaemonSet runs it.
POD_SA=$T/pod-sa
mkdir -p "$POD_SA"
token_for kube-system calico-cni >"$POD_SA/token" || fail "cannot get a token for kube-system/calico-cni"
printf 'kube-system' >"$POD_SA/namespace"
cp "$KUBE_TESTENV_CA" "$POD_SA/ca.crt"
[ "$(whoami "$(cat "$POD_SA/token")")" = system:serviceaccount:kube-system:calico-cni ] || fail "the pod token is not calico-cni's"
ok "API server up; the installer pod's token is kube-system/calico-cni's"

# check_plugin_kubeconfig FILE: its token is a day's TokenRequest token of calico-cni-plugin (not
# the pod's own), and it works as the plugin.
check_plugin_kubeconfig() {
  local tok claims
  tok=$(kubeconfig_token "$1")
  [ -n "$tok" ] || fail "no token in $1"
  [ "$tok" != "$(cat "$POD_SA/token")" ] || fail "$1 carries the installer pod's own token"
  claims=$(jwt_claims "$tok")
  jq -e '.sub == "system:serviceaccount:kube-system:calico-cni-plugin" and .exp - .iat == 86400' <<<"$claims" >/dev/null ||
    fail "$1: not a day's token of calico-cni-plugin: $claims"
  [ "$(whoami "$tok")" = system:serviceaccount:kube-system:calico-cni-plugin ] || fail "$1: the API server does not see calico-cni-plugin"
  "$KUBE_TESTENV_BIN" get --kubeconfig "$1" /apis/crd.projectcalico.org/v1/clusterinformations/default >/dev/null ||
    fail "$1 cannot read ClusterInformation default"
}

step "Calico's ConfigMap (veth_mtu 1440) and install-cni env: conflist as Calico's, kubeconfig from a TokenRequest"
audit_before=$(wc -l <"$KUBE_TESTENV_AUDIT_LOG")
calico_layout "$R"
calico_install "$R" node-calico 1440 "${API_ENV[@]}" -- -q --serviceaccount-dir "$POD_SA" ||
  fail "install with Calico's env against the API server failed"
calico_expect "$R" 1440 "$POD_SA/token" "${API_ENV[@]}" >"$T/expected.conflist"
cmp "$T/expected.conflist" "$R/host/etc/cni/net.d/10-calico.conflist" ||
  fail "not what Calico writes: $(diff "$T/expected.conflist" "$R/host/etc/cni/net.d/10-calico.conflist")"
jq -e '.plugins[0] | .mtu == 1440 and .kubernetes.kubeconfig == "/etc/cni/net.d/calico-kubeconfig"' \
  "$R/host/etc/cni/net.d/10-calico.conflist" >/dev/null || fail "unexpected conflist"
KC=$R/host/etc/cni/net.d/calico-kubeconfig
check_plugin_kubeconfig "$KC"
tail -n +"$((audit_before + 1))" "$KUBE_TESTENV_AUDIT_LOG" | jq -e -s 'map(select(.verb == "create" and
  .objectRef.resource == "serviceaccounts" and .objectRef.subresource == "token" and
  .objectRef.name == "calico-cni-plugin" and .user.username == "system:serviceaccount:kube-system:calico-cni" and
  .responseStatus.code == 201)) | length == 1' >/dev/null || fail "the audit log does not show one TokenRequest by calico-cni for calico-cni-plugin"
ok "conflist byte for byte Calico's with mtu 1440; /etc/cni/net.d/calico-kubeconfig holds calico-cni-plugin's day token, requested by calico-cni, and works"

step "the tester's env against the API server: CNI_CONF_NAME=20-calico.conflist CNI_MTU=1440 LOG_LEVEL=debug DATASTORE_TYPE=kubernetes"
run_install "${TESTER[@]}" "${API_ENV[@]}" KUBERNETES_NODE_NAME=node-t -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
  --serviceaccount-dir "$POD_SA" || fail "install failed"
jq -e '.plugins[0] | .mtu == 1440 and .log_level == "debug" and .datastore_type == "kubernetes"' \
  "$C/20-calico.conflist" >/dev/null || fail "unexpected conflist: $(cat "$C/20-calico.conflist")"
[ "$(jq -r '.plugins[0].kubernetes.kubeconfig' "$C/20-calico.conflist")" = "$C/calico-kubeconfig" ] || fail "kubeconfig path"
check_plugin_kubeconfig "$C/calico-kubeconfig"
ok "20-calico.conflist: mtu 1440, debug, kubernetes; its kubeconfig works as calico-cni-plugin"
"$INSTALL" -q --uninstall --conf-dir "$C"
rm -rf "$T/host"

step "refusals: clear errors, nothing written"
# refused ENV... -- EXPECTED-TEXT...: the install fails, says each text, and writes nothing.
refused() {
  local envs=() t
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  if run_install "${TESTER[@]}" "${API_ENV[@]}" "${envs[@]}" -- -q --from "$FROM" --bin-dir "$B" --conf-dir "$C" \
    --serviceaccount-dir "${REFUSED_SA:-$POD_SA}" 2>"$T/refused.err"; then
    fail "install succeeded with ${envs[*]}"
  fi
  for t in "$@"; do has "$(cat "$T/refused.err")" "$t" || fail "the error does not say '$t': $(cat "$T/refused.err")"; done
  [ ! -e "$T/host" ] || fail "a refused install wrote: $(find "$T/host")"
}
refused CALICO_CNI_SERVICE_ACCOUNT=calico-cni -- "refused" "forbidden" "'create' on 'serviceaccounts/token'" "calico-cni-installer" "--no-token-request"
ok "403 (the Role allows calico-cni-plugin only): names the permission, the Role and the way out"
mkdir -p "$T/bad-sa" && cp "$POD_SA/ca.crt" "$POD_SA/namespace" "$T/bad-sa/" && printf 'not-a-token' >"$T/bad-sa/token"
REFUSED_SA=$T/bad-sa refused -- "rejected this pod's own service-account token" "Unauthorized"
ok "401: this pod's own token rejected"
mkdir -p "$T/admin-sa" && cp "$POD_SA/ca.crt" "$POD_SA/namespace" "$T/admin-sa/" && printf '%s' "$KUBE_TESTENV_ADMIN_TOKEN" >"$T/admin-sa/token"
REFUSED_SA=$T/admin-sa refused CALICO_CNI_SERVICE_ACCOUNT=no-such-account -- "no ServiceAccount kube-system/no-such-account" "rbac.yaml"
ok "404: the missing service account named"
refused KUBERNETES_SERVICE_PORT=1 -- "cannot reach the API server at https://127.0.0.1:1"
ok "unreachable API server"

# start_watch LOG [ENV...]: --watch-token in the background on $C, against the API server.
start_watch() {
  local log=$1
  shift
  env "${API_ENV[@]}" "$@" "$INSTALL" --watch-token --conf-dir "$C" --serviceaccount-dir "$POD_SA" 2>"$log" &
  WATCH_PID=$!
  BG_PIDS+=("$WATCH_PID")
}
stop_watch() {
  kill -TERM "$WATCH_PID" 2>/dev/null || fail "--watch-token is not running: $(cat "$1")"
  wait "$WATCH_PID" || fail "--watch-token did not exit 0 on TERM: $(cat "$1")"
}
# wait_log LOG TEXT COUNT: wait (up to 60 s) until LOG has COUNT lines with TEXT.
wait_log() {
  local i
  for i in $(seq 1 600); do
    [ "$(grep -cF -- "$2" "$1" || true)" -ge "$3" ] && return 0
    sleep 0.1
  done
  fail "no $3 lines '$2' in: $(cat "$1")"
}

step "--watch-token: the refresh is scheduled from the token's expiry (Calico: 1/4 to 1/2 of what is left)"
mkdir -p "$C"
start_watch "$T/watch1.log"
wait_log "$T/watch1.log" "next token refresh in" 1
line=$(grep -m1 "next token refresh in" "$T/watch1.log")
[[ $line =~ refresh\ in\ ([0-9]+)s\ \(the\ token\ expires\ in\ ([0-9]+)s\) ]] || fail "cannot read the schedule: $line"
delay=${BASH_REMATCH[1]} left=${BASH_REMATCH[2]}
exp=$(jwt_claims "$(kubeconfig_token "$C/calico-kubeconfig")" | jq -r .exp)
now=$(date +%s)
((left > 86400 - 60 && left <= 86400 && exp - now <= left + 1)) || fail "the token's lifetime is not a day: $line (exp $exp, now $now)"
((delay >= left / 4 && delay <= left / 2)) || fail "refresh in ${delay}s is not within [$((left / 4)), $((left / 2))]s of a ${left}s token"
check_plugin_kubeconfig "$C/calico-kubeconfig"
stop_watch "$T/watch1.log"
ok "kubeconfig written, next refresh in ${delay}s for a token that expires in ${left}s; TERM ends it with exit 0"

step "--watch-token renews: CNI_TOKEN_REFRESH_INTERVAL=1s, and at once when the pod's own token rotates"
start_watch "$T/watch2.log" CNI_TOKEN_REFRESH_INTERVAL=1s
wait_log "$T/watch2.log" "wrote $C/calico-kubeconfig" 1
first=$(kubeconfig_token "$C/calico-kubeconfig")
wait_log "$T/watch2.log" "wrote $C/calico-kubeconfig" 3
second=$(kubeconfig_token "$C/calico-kubeconfig")
[ "$first" != "$second" ] || fail "the token was not renewed"
(($(jwt_claims "$second" | jq .iat) > $(jwt_claims "$first" | jq .iat))) || fail "the renewed token is not newer"
check_plugin_kubeconfig "$C/calico-kubeconfig"
stop_watch "$T/watch2.log"
start_watch "$T/watch3.log"
wait_log "$T/watch3.log" "next token refresh in" 1
before=$(kubeconfig_token "$C/calico-kubeconfig")
token_for kube-system calico-cni >"$POD_SA/token.new" && mv "$POD_SA/token.new" "$POD_SA/token" # the kubelet's rotation
wait_log "$T/watch3.log" "own service-account token changed" 1
wait_log "$T/watch3.log" "next token refresh in" 2
[ "$(kubeconfig_token "$C/calico-kubeconfig")" != "$before" ] || fail "no renewal after the pod's token rotated"
check_plugin_kubeconfig "$C/calico-kubeconfig"
stop_watch "$T/watch3.log"
ok "renewed every 1-2 s with the interval; renewed within seconds of the pod token's rotation; each works"

step "--watch-token keeps retrying while the TokenRequest is refused"
start_watch "$T/watch4.log" CALICO_CNI_SERVICE_ACCOUNT=calico-cni
wait_log "$T/watch4.log" "retrying" 1
wait_log "$T/watch4.log" "next token refresh in" 1
line=$(grep -m1 "next token refresh in" "$T/watch4.log")
[[ $line =~ refresh\ in\ ([0-9]+)s ]] && ((BASH_REMATCH[1] >= 5 && BASH_REMATCH[1] <= 10)) || fail "no 5-10 s retry: $line"
has "$(cat "$T/watch4.log")" "serviceaccounts/token" || fail "the refusal is not explained: $(cat "$T/watch4.log")"
stop_watch "$T/watch4.log"
"$INSTALL" -q --uninstall --conf-dir "$C"
rm -rf "$T/host"
ok "refusal logged, retried after 5-10 s, still running"

step "the API server accepts the DaemonSet"
"$RT_REPO/scripts/kube-testenv" apply "$KT" "$RT_REPO/calico-cni/manifests/install/daemonset.yaml" >/dev/null ||
  fail "the API server rejected calico-cni/manifests/install/daemonset.yaml"
"$RT_REPO/scripts/kube-testenv" get "$KT" /apis/apps/v1/namespaces/kube-system/daemonsets calico-cni |
  jq -e '.spec.template.spec | .hostNetwork == true and .serviceAccountName == "calico-cni" and
    .initContainers[0].name == "install-cni" and .containers[0].args == ["--watch-token"] and
    (.initContainers[0].env | map(select(.name == "SLEEP"))[0].value) == "false"' >/dev/null ||
  fail "the stored DaemonSet is not what we applied"
"$RT_REPO/scripts/kube-testenv" down "$KT" >/dev/null 2>&1
KT=
ok "DaemonSet stored (install-cni init container, --watch-token container)"

step "PASS in $(rt_elapsed)s"
