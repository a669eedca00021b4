#!/usr/bin/env bash
# The image under containerd, as the DaemonSet runs it. scripts/build-image.sh builds the
# calico-rs/cni:<version> OCI archive twice (the two must be the same bytes); containerd 1.6
# (Debian's, in a throwaway node netns with its own root, state and socket) imports it with
# `ctr images import`; then `ctr run` runs the image's entrypoint, the installer, with the
# host's CNI dirs bind-mounted where Calico's DaemonSet mounts them (/host/opt/cni/bin,
# /host/etc/cni/net.d: temp dirs here) and Calico's install-cni env:
#   - local datastore: CNI_CONF_NAME=20-calico.conflist CNI_MTU=1440 LOG_LEVEL=debug ... -> the
#     binaries land 0755 and byte-equal to the ones built, the conflist 0600 with those values,
#     the old 10-calico.conflist goes, other files stay; the installed calico answers VERSION and
#     calico-ipam --version names the version; a second run changes nothing;
#   - Kubernetes datastore, against a real kube-apiserver (scripts/kube-testenv, in the node
#     netns; the container on the node's network): with the service-account token of
#     kube-system/calico-cni mounted at /var/run/secrets/kubernetes.io/serviceaccount, the
#     installer (curl in the image) writes /etc/cni/net.d/calico-kubeconfig with a day's
#     TokenRequest token of calico-cni-plugin, which works; --watch-token (the DaemonSet's
#     refresher) renews it while running and stops on SIGTERM.
# Also checks that the Dockerfile, scripts/build-image.sh and the DaemonSet agree on the version
# and the entrypoint. containerd is stopped by its pid, and must leave no process behind.
#
# usage: scripts/test-image.sh [--from DIR] [--no-apiserver]
#   --from DIR       calico-cni and calico-ipam to build the image from (default: what
#                    scripts/build-release.sh builds; they must be statically linked)
#   --no-apiserver   skip the Kubernetes-datastore part (says so)
# Root; Debian 12. Everything happens in namespaces and temp dirs this script creates.
set -euo pipefail
RT_NAME=test-image
source "$(dirname "$0")/lib-runtimes.sh"

FROM= APISERVER=1
while [ $# -gt 0 ]; do
  case $1 in
    --from) FROM=$2; shift ;;
    --no-apiserver) APISERVER=0 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "$RT_NAME: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

rt_require_root
ensure_apt containerd runc bash-static busybox-static curl jq python3 iproute2

T=$(mktemp -d "/tmp/calico-image.$$.XXXXXX")
NODE=img-node-$$
CGPARENT=calico-rs-test-image-$$
H=$T/host # the node's filesystem, as the DaemonSet's hostPath volumes see it
mkdir -p "$T/stash" "$T/ctrd" "$H/opt/cni/bin" "$H/etc/cni/net.d"
RT_DIAG_FILES=("$T/ctrd/containerd.log" "$T/run.out" "$T/watch.log")
KT=

cleanup() {
  local rc=$?
  set +e
  ctrd_kill
  [ -z "$KT" ] || "$RT_REPO/scripts/kube-testenv" down "$KT" >/dev/null 2>&1
  rt_finish "$rc"
}
rt_on_exit cleanup

# ---------------------------------------------------------------------------------------------
VERSION=$(awk '/^\[workspace\.package\]/ { p = 1; next } /^\[/ { p = 0 }
  p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$RT_REPO/Cargo.toml")
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || fail "no [workspace.package] version in Cargo.toml"
REF=docker.io/calico-rs/cni:$VERSION
ENTRYPOINT='["/usr/local/bin/install-cni.sh", "--from=/opt/calico-rs/bin"]'
step "$(containerd --version | cut -d' ' -f1-3), $(runc --version | head -n1); image $REF"

step "the Dockerfile, scripts/build-image.sh and the DaemonSet agree"
grep -qxF "ARG VERSION=$VERSION" "$RT_REPO/Dockerfile" || fail "the Dockerfile's ARG VERSION is not $VERSION (Cargo.toml)"
grep -qxF "ENTRYPOINT $ENTRYPOINT" "$RT_REPO/Dockerfile" || fail "the Dockerfile's ENTRYPOINT is not $ENTRYPOINT"
has "$(cat "$RT_REPO/scripts/build-image.sh")" "--entrypoint '$ENTRYPOINT'" || fail "scripts/build-image.sh's entrypoint is not $ENTRYPOINT"
images=$(sed -n 's/^ *image: *//p' "$RT_REPO/calico-cni/manifests/install/daemonset.yaml" | sort -u)
[ "$images" = "calico-rs/cni:$VERSION" ] || fail "the DaemonSet names '$images', not calico-rs/cni:$VERSION"

if [ -z "$FROM" ]; then
  step "static binaries (scripts/build-release.sh)"
  FROM=$("$RT_REPO/scripts/build-release.sh") || fail "scripts/build-release.sh failed"
fi
FROM=$(cd "$FROM" && pwd)
step "scripts/build-image.sh --from $FROM, twice"
IMG=$("$RT_REPO/scripts/build-image.sh" --from "$FROM" --out "$T/image.tar" 2>"$T/build.err") ||
  { cat "$T/build.err" >&2; fail "scripts/build-image.sh failed"; }
echo "    $(tail -n1 "$T/build.err")"
[ "$IMG" = "$T/image.tar" ] || fail "build-image.sh printed '$IMG', not the --out path"
"$RT_REPO/scripts/build-image.sh" --from "$FROM" --out "$T/again.tar" >/dev/null 2>"$T/build.err" ||
  { cat "$T/build.err" >&2; fail "scripts/build-image.sh failed the second time"; }
cmp -s "$T/image.tar" "$T/again.tar" || fail "two builds of the same binaries differ: not reproducible"
echo "    reproducible: sha256 $(sha256sum <"$IMG" | cut -c1-16)…, $(du -h "$IMG" | cut -f1)"

step "the archive: OCI layout, entrypoint, root-owned files"
mkdir -p "$T/oci"
tar -xf "$IMG" -C "$T/oci" || fail "the archive is not a tar"
jq -e '.imageLayoutVersion == "1.0.0"' "$T/oci/oci-layout" >/dev/null || fail "no oci-layout"
idx=$T/oci/index.json
jq -e --arg ref "$REF" '.manifests | length == 1 and .[0].annotations["io.containerd.image.name"] == $ref' "$idx" >/dev/null ||
  fail "index.json does not name $REF: $(cat "$idx")"
blob() { echo "$T/oci/blobs/sha256/${1#sha256:}"; }
for d in $(jq -r '.manifests[0].digest' "$idx"); do
  [ "sha256:$(sha256sum <"$(blob "$d")" | cut -d' ' -f1)" = "$d" ] || fail "the manifest blob does not match its digest"
  manifest=$(blob "$d")
done
config=$(blob "$(jq -r .config.digest "$manifest")")
jq -e --argjson ep "$ENTRYPOINT" '.config.Entrypoint == $ep and .os == "linux" and .architecture == "amd64"' "$config" >/dev/null ||
  fail "the image config's entrypoint is not $ENTRYPOINT: $(jq -c .config "$config")"
layer=$(blob "$(jq -r '.layers[0].digest' "$manifest")")
[ "sha256:$(gzip -dc "$layer" | sha256sum | cut -d' ' -f1)" = "$(jq -r '.rootfs.diff_ids[0]' "$config")" ] ||
  fail "the layer's diff_id does not match"
listing=$(tar -tvzf "$layer")
for p in opt/calico-rs/bin/calico-cni opt/calico-rs/bin/calico-ipam usr/local/bin/install-cni.sh usr/bin/bash \
  usr/bin/busybox usr/bin/curl usr/bin/jq usr/bin/cksum usr/lib64/ld-linux-x86-64.so.2 tmp; do
  grep -qE " $p/?( ->.*)?\$" <<<"$listing" || fail "the layer has no $p"
done
[ -z "$(awk '$2 != "0/0"' <<<"$listing")" ] || fail "files not owned by root: $(awk '$2 != "0/0"' <<<"$listing" | head -3)"
grep -qE '^-rwxr-xr-x .* opt/calico-rs/bin/calico-cni$' <<<"$listing" || fail "calico-cni is not 0755 in the layer"
echo "    $(wc -l <<<"$listing") entries, all root's; entrypoint $(jq -c .config.Entrypoint "$config")"

# ---------------------------------------------------------------------------------------------
step "node netns $NODE; containerd inside it; ctr images import"
make_node "$NODE"
ctrd_config "$T/ctrd" --no-cri
ctrd_start "$T/ctrd" "$NODE" "$T/stash"
ctrd_import "$IMG"
ctrd_ctr images ls -q | grep -qxF "$REF" || fail "containerd does not list $REF after the import: $(ctrd_ctr images ls -q)"

# run_installer NAME [CTR-RUN-FLAGS...] [-- ARGS...]: the image's entrypoint (or ARGS, the whole
# command line) in a container named NAME, the host's CNI dirs bind-mounted in Calico's layout;
# output in $T/run.out. Returns its exit status.
run_installer() {
  local name=$1 flags=()
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do flags+=("$1"); shift; done
  [ $# -eq 0 ] || shift
  ctrd_run --rm --cgroup "/$CGPARENT/$name" \
    --mount "type=bind,src=$H/opt/cni/bin,dst=/host/opt/cni/bin,options=rbind:rw" \
    --mount "type=bind,src=$H/etc/cni/net.d,dst=/host/etc/cni/net.d,options=rbind:rw" \
    "${flags[@]}" "$REF" "$name" "$@" >"$T/run.out" 2>&1
}

step "the installer in a container: local datastore, Calico's env"
# What is on the node already: another plugin, another network, Calico's old conflist.
printf '#!/bin/sh\n' >"$H/opt/cni/bin/other-plugin"
chmod 755 "$H/opt/cni/bin/other-plugin"
printf '{"name": "other", "cniVersion": "1.0.0", "plugins": []}\n' >"$H/etc/cni/net.d/99-other.conflist"
printf '{}\n' >"$H/etc/cni/net.d/10-calico.conflist"
LOCAL_ENV=(--env CNI_CONF_NAME=20-calico.conflist --env CNI_MTU=1440 --env LOG_LEVEL=debug
  --env DATASTORE_TYPE=local --env KUBERNETES_NODE_NAME=node-image --env SLEEP=false)
run_installer install-local "${LOCAL_ENV[@]}" || fail "the installer container failed (exit $?): $(cat "$T/run.out")"
sed 's/^/    | /' "$T/run.out"
has "$(cat "$T/run.out")" "installed network into /host/etc/cni/net.d/20-calico.conflist" ||
  fail "the installer did not say it installed the network"
B=$H/opt/cni/bin C=$H/etc/cni/net.d
for pair in "calico calico-cni" "calico-ipam calico-ipam"; do
  read -r inst built <<<"$pair"
  [ -f "$B/$inst" ] || fail "no $inst in the host's CNI bin dir: $(ls -l "$B")"
  cmp -s "$B/$inst" "$FROM/$built" || fail "$B/$inst is not the $built the image was built from"
  [ "$(stat -c '%a %u' "$B/$inst")" = "755 0" ] || fail "$B/$inst is $(stat -c '%a uid %u' "$B/$inst"), want 0755 root's"
done
[ "$(stat -c %a "$C/20-calico.conflist")" = 600 ] || fail "the conflist is not mode 0600"
jq -e '.name == "k8s-pod-network" and (.plugins | length == 1) and (.plugins[0] | .type == "calico" and
  .mtu == 1440 and .log_level == "debug" and .datastore_type == "local" and .nodename == "node-image" and
  .ipam.type == "calico-ipam" and has("kubernetes") == false)' "$C/20-calico.conflist" >/dev/null ||
  fail "unexpected conflist: $(cat "$C/20-calico.conflist")"
[ ! -e "$C/10-calico.conflist" ] || fail "the old 10-calico.conflist was not removed (CNI_OLD_CONF_NAME)"
[ -f "$C/99-other.conflist" ] && [ -x "$B/other-plugin" ] || fail "the installer removed files that are not its own"
[ ! -e "$C/calico-kubeconfig" ] || fail "a kubeconfig was written for the local datastore"
echo "    $(jq -c '.plugins[0] | {mtu, log_level, datastore_type, nodename}' "$C/20-calico.conflist")"

step "the installed calico and calico-ipam work on the host"
out=$(CNI_COMMAND=VERSION "$B/calico" <<<'{"cniVersion": "1.0.0"}' 2>&1) || fail "calico VERSION failed: $out"
jq -e '.supportedVersions | index("1.0.0") and index("0.3.1")' <<<"$out" >/dev/null || fail "calico VERSION said: $out"
echo "    calico VERSION: $(jq -c .supportedVersions <<<"$out")"
out=$("$B/calico-ipam" --version 2>&1) || fail "calico-ipam --version failed: $out"
has "$out" "$VERSION" || fail "calico-ipam --version does not name $VERSION: $out"
echo "    calico-ipam --version: ${out%%$'\n'*}"
for b in calico calico-ipam; do
  has "$(ldd "$B/$b" 2>&1 || true)" "statically linked" || fail "$b is not statically linked"
done

step "a second run changes nothing"
inode=$(stat -c %i "$B/calico")
run_installer install-again "${LOCAL_ENV[@]}" || fail "the second installer run failed: $(cat "$T/run.out")"
has "$(cat "$T/run.out")" "already installed, nothing changed" || fail "the second run changed something: $(cat "$T/run.out")"
[ "$(stat -c %i "$B/calico")" = "$inode" ] || fail "the second run replaced calico"

step "install-cni.sh --uninstall in a container removes what it installed, nothing else"
run_installer uninstall -- /usr/local/bin/install-cni.sh --uninstall || fail "--uninstall failed: $(cat "$T/run.out")"
left=$(cd "$H" && find . -type f | sort | tr '\n' ' ')
[ "$left" = "./etc/cni/net.d/99-other.conflist ./opt/cni/bin/other-plugin " ] || fail "after --uninstall the host holds: $left"

# ---------------------------------------------------------------------------------------------
if [ "$APISERVER" = 0 ]; then
  step "SKIPPED the Kubernetes-datastore part (--no-apiserver): the kubeconfig's TokenRequest untested"
  ctrd_stop
  step "PASS (without the API server) in $(rt_elapsed)s"
  exit 0
fi

step "a real kube-apiserver (scripts/kube-testenv) in the node netns"
KT=$T/kube
KUBE_TESTENV_NETNS=$NODE "$RT_REPO/scripts/kube-testenv" up "$KT" >"$T/kube-up.log" 2>&1 ||
  { tail -20 "$T/kube-up.log" >&2; fail "kube-testenv up failed"; }
# shellcheck disable=SC1091
source "$KT/env"
API_PORT=${KUBE_TESTENV_SERVER##*:}
in_node() { ip netns exec "$NODE" "$@"; }
# api TOKEN METHOD PATH [BODY]: a request to the API server (in the node netns), JSON out.
api() {
  local body=()
  [ $# -lt 4 ] || body=(--data-binary "$4")
  in_node curl -sS --fail-with-body --cacert "$KUBE_TESTENV_CA" -H "Authorization: Bearer $1" \
    -H 'Content-Type: application/json' -X "$2" "${body[@]}" "$KUBE_TESTENV_SERVER$3"
}
whoami() {
  api "$1" POST /apis/authentication.k8s.io/v1/selfsubjectreviews \
    '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' | jq -re .status.userInfo.username
}
jwt_claims() {
  local p=${1#*.}
  p=${p%%.*}
  p=$(tr '_-' '/+' <<<"$p")
  while ((${#p} % 4)); do p+='='; done
  base64 -d <<<"$p"
}
kubeconfig_token() { sed -n 's/^    token: //p' "$1"; }
# The DaemonSet pod's mounted service account: kube-system/calico-cni.
SA=$T/sa
mkdir -p "$SA"
api "$KUBE_TESTENV_ADMIN_TOKEN" POST /api/v1/namespaces/kube-system/serviceaccounts/calico-cni/token \
  '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}' |
  jq -rj .status.token >"$SA/token" || fail "cannot get a token for kube-system/calico-cni"
printf 'kube-system' >"$SA/namespace"
cp "$KUBE_TESTENV_CA" "$SA/ca.crt"
[ "$(whoami "$(cat "$SA/token")")" = system:serviceaccount:kube-system:calico-cni ] || fail "the pod token is not calico-cni's"
KUBE_RUN=(--net-host
  --mount "type=bind,src=$SA,dst=/var/run/secrets/kubernetes.io/serviceaccount,options=rbind:ro"
  --env KUBERNETES_SERVICE_HOST=127.0.0.1 --env "KUBERNETES_SERVICE_PORT=$API_PORT"
  --env KUBERNETES_NODE_NAME=node-image --env CNI_MTU=1440 --env SLEEP=false)

step "the installer in a container: Kubernetes datastore (the default in a pod), kubeconfig from a TokenRequest"
run_installer install-kube "${KUBE_RUN[@]}" || fail "the installer container failed (exit $?): $(cat "$T/run.out")"
sed 's/^/    | /' "$T/run.out"
jq -e '.plugins[0] | .datastore_type == "kubernetes" and .mtu == 1440 and .nodename == "node-image" and
  .kubernetes.kubeconfig == "/etc/cni/net.d/calico-kubeconfig"' "$C/10-calico.conflist" >/dev/null ||
  fail "unexpected conflist: $(cat "$C/10-calico.conflist")"
KC=$C/calico-kubeconfig
[ -f "$KC" ] || fail "no kubeconfig at /etc/cni/net.d/calico-kubeconfig"
[ "$(stat -c %a "$KC")" = 600 ] || fail "the kubeconfig is not mode 0600"
grep -qxF "    server: https://127.0.0.1:$API_PORT" "$KC" || fail "the kubeconfig's server is not https://127.0.0.1:$API_PORT"
tok=$(kubeconfig_token "$KC")
[ -n "$tok" ] && [ "$tok" != "$(cat "$SA/token")" ] || fail "the kubeconfig does not carry a token of its own"
claims=$(jwt_claims "$tok")
jq -e '.sub == "system:serviceaccount:kube-system:calico-cni-plugin" and .exp - .iat == 86400' <<<"$claims" >/dev/null ||
  fail "not a day's token of calico-cni-plugin: $claims"
[ "$(whoami "$tok")" = system:serviceaccount:kube-system:calico-cni-plugin ] || fail "the API server does not take the kubeconfig's token"
echo "    $KC: a day's token of $(jq -r .sub <<<"$claims"), accepted by the API server"

step "the token refresher (--watch-token, CNI_TOKEN_REFRESH_INTERVAL=1s) renews it; SIGTERM stops it"
ctrd_run -d --cgroup "/$CGPARENT/watch" --log-uri "file://$T/watch.log" \
  --mount "type=bind,src=$H/etc/cni/net.d,dst=/host/etc/cni/net.d,options=rbind:rw" \
  "${KUBE_RUN[@]}" --env CNI_TOKEN_REFRESH_INTERVAL=1s \
  "$REF" watch /usr/local/bin/install-cni.sh --watch-token >"$T/run.out" 2>&1 ||
  fail "ctr run -d of the refresher failed: $(cat "$T/run.out")"
# Its first TokenRequest rewrites the kubeconfig at once; a renewal is a second one.
renewed=0
for _ in $(seq 150); do
  new=$(kubeconfig_token "$KC")
  writes=$(grep -c "wrote /host/etc/cni/net.d/calico-kubeconfig" "$T/watch.log" 2>/dev/null || true)
  if [ -n "$new" ] && [ "$new" != "$tok" ] && [ "${writes:-0}" -ge 2 ]; then
    renewed=1
    break
  fi
  sleep 0.1
done
[ $renewed = 1 ] || fail "the refresher did not renew the kubeconfig's token twice within 15 s"
[ "$(whoami "$new")" = system:serviceaccount:kube-system:calico-cni-plugin ] || fail "the renewed token does not work"
ctrd_ctr task kill -s SIGTERM watch >/dev/null 2>&1 || fail "ctr task kill failed"
stopped=0
for _ in $(seq 50); do
  if ctrd_ctr task ls 2>/dev/null | awk '$1 == "watch" { print $3 }' | grep -qx STOPPED; then stopped=1; break; fi
  sleep 0.1
done
[ $stopped = 1 ] || fail "the refresher did not stop on SIGTERM within 5 s"
ctrd_ctr task delete watch >/dev/null 2>&1 || true
ctrd_ctr container delete watch >/dev/null 2>&1 || fail "ctr container delete failed"
has "$(cat "$T/watch.log")" "stopping" || fail "the refresher did not log its stop: $(cat "$T/watch.log")"
sed 's/^/    | /' "$T/watch.log" | head -n 4

step "stop containerd (pid $CTRD_PID)"
ctrd_stop
"$RT_REPO/scripts/kube-testenv" down "$KT" >/dev/null 2>&1 || fail "kube-testenv down failed"
KT=

step "PASS in $(rt_elapsed)s"
