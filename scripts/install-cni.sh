#!/usr/bin/env bash
# install-cni.sh: Calico's install-cni (cni-plugin/pkg/install) for our binaries, with Calico's
# environment contract.
#
# Copies the CNI plugin (installed as `calico`) and `calico-ipam` into the CNI bin dir(s), writes
# the network configuration list into the CNI conf dir and, for the kubernetes datastore (or a
# template that names __KUBECONFIG_FILEPATH__), a kubeconfig for the `calico-cni-plugin` service
# account, whose token it obtains with a TokenRequest authenticated by this pod's own token. For
# the etcdv3 datastore it writes Calico's etcd settings (ETCD_ENDPOINTS) and, as Calico does,
# copies the etcd TLS assets found in TLS_ASSETS_DIR (etcd-ca, etcd-cert, etcd-key) into
# <conf-dir>/calico-tls/, naming them in the conflist.
# `--watch-token` (and SLEEP=true) keep renewing that token before it expires, as Calico's node
# agent does. Runs on a host directly, or in a pod with the host mounted under /host (Calico's
# layout: /host/opt/cni/bin, /host/secondary-bin-dir, /host/etc/cni/net.d).
#
# Every setting comes from Calico's environment variable when it is set, and from a flag when
# one is given (flags win). See --help and README.md ("Installing on a node").
#
# Idempotent: files whose content is already right are left alone (same inode, same mtime); every
# file that changes is written to a temporary file in its target directory and renamed over the
# old one, so a runtime never sees (or executes) a half-written file. What was installed is
# recorded in <conf-dir>/calico-install.manifest; --uninstall removes exactly those paths (and the
# directories this script created, once they are empty), then the manifest.
set -euo pipefail

PROG=${0##*/}
REPO=$(cd "$(dirname "$0")/.." && pwd)
QUIET=0

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { [ "$QUIET" = 1 ] || echo "$PROG: $*"; }
warn() { echo "$PROG: warning: $*" >&2; }
log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $PROG: $*" >&2; } # the long-running modes

# Calico reads its booleans with Go's strconv.ParseBool.
parse_bool() { # NAME VALUE -> 1 | 0
  case $2 in
    1|t|T|true|TRUE|True) echo 1 ;;
    0|f|F|false|FALSE|False) echo 0 ;;
    *) die "$1='$2' is not a boolean (true or false)" ;;
  esac
}

usage() {
  cat <<EOF
usage: $PROG [flags]

Settings: environment variable (Calico's name) first, then the flag; a flag wins.

  --from DIR               where the built binaries are: DIR/calico-cni (or DIR/calico) and
                           DIR/calico-ipam (default: where scripts/build-release.sh writes them,
                           $REPO/target/x86_64-unknown-linux-gnu/release)
  --plugins-dir DIR        also install every other executable in DIR (portmap, bandwidth, ...),
                           as Calico installs the plugins bundled in its image
  --host-root DIR          where the host is mounted in a container (default /host). When
                           DIR/etc/cni/net.d or DIR/opt/cni/bin exists, the defaults are Calico's
                           layout: binaries into DIR/opt/cni/bin and DIR/secondary-bin-dir (each
                           that is writable), config into DIR/etc/cni/net.d, paths in it the host's
  --bin-dir DIR            CNI bin dir (default /opt/cni/bin, or the host-root layout's)
  --conf-dir DIR           CNI conf dir to write into (default: CNI_NET_DIR, or the host-root
                           layout's, else /etc/cni/net.d)
  --host-conf-dir DIR      CNI_NET_DIR: the conf dir as the host sees it, for the paths written
                           into the conflist (default: /etc/cni/net.d in the host-root layout,
                           else --conf-dir)
  --conf-name FILE         CNI_CONF_NAME: conflist file name (default 10-calico.conflist)
  --old-conf-name FILE     CNI_OLD_CONF_NAME: removed when it differs from the conf name
                           (default 10-calico.conflist; empty: remove nothing)
  --conf-mode MODE         conflist file mode (default 0600, as Calico; env TEST_FILE_PERMISSION)
  --network-name NAME      network name (default k8s-pod-network)
  --cni-version V          conflist cniVersion (default 1.0.0)
  --datastore-type T       DATASTORE_TYPE: local | kubernetes | etcdv3 (default kubernetes in a
                           pod, as Calico; local elsewhere)
  --datastore-path DIR     local datastore directory (default /var/lib/calico/ipam)
  --etcd-endpoints URLS    ETCD_ENDPOINTS: the etcd cluster of etcdv3 (comma-separated URLs;
                           required by the built-in conflist for etcdv3; __ETCD_ENDPOINTS__)
  --tls-assets-dir DIR     TLS_ASSETS_DIR: Calico's mounted etcd secret (default /calico-secrets);
                           its etcd-ca, etcd-cert and etcd-key are copied into
                           <conf-dir>/calico-tls/ (etcd-key mode 0600) and named in the conflist
                           (etcd_ca_cert_file, ...; __ETCD_CA_CERT_FILE__, ...), as Calico does
  --etcd-ca-cert-file F    ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE: ours, for a host
  --etcd-cert-file F       install: absolute paths of the host's own files, written into the
  --etcd-key-file F        conflist as they are when TLS_ASSETS_DIR has no file of that name
  --nodename NAME          KUBERNETES_NODE_NAME (or NODENAME): node name (default: hostname)
  --mtu N                  CNI_MTU: veth MTU (default: not set in the built-in conflist, the
                           plugin's default; 1500 for __CNI_MTU__ in a template, as Calico)
  --log-level L            LOG_LEVEL: plugin log level (default info)
  --log-file-path FILE     LOG_FILE_PATH: plugin log file (default /var/log/calico/cni/cni.log)
  --log-file-max-size MB   LOG_FILE_MAX_SIZE (template default 100)
  --log-file-max-age DAYS  LOG_FILE_MAX_AGE (template default 30)
  --log-file-max-count N   LOG_FILE_MAX_COUNT (template default 10)
  --ipam-lock-file FILE    host-wide IPAM lock (default: the plugin's, /var/run/calico/ipam.lock)
  --ipv4-pool CIDR         restrict IPv4 assignment to this pool (repeatable)
  --ipv6-pool CIDR         restrict IPv6 assignment to this pool (repeatable)
  --capabilities JSON      "capabilities" object of the calico plugin, e.g. '{"portMappings":true}'
  --chain JSON             a plugin object appended after calico in the list (repeatable),
                           e.g. '{"type":"tuning","sysctl":{"net.core.somaxconn":"512"}}'
  --config-template FILE   write this conflist instead of the built-in one (env
                           CNI_NETWORK_CONFIG_FILE, or CNI_NETWORK_CONFIG holding the text; the
                           file wins), with Calico's placeholders substituted (see README.md)
  --skip-binary NAME       SKIP_CNI_BINARIES (comma-separated): do not install NAME (repeatable)
  --no-update-binaries     UPDATE_CNI_BINARIES=false: keep binaries that already exist
  --update-binaries        UPDATE_CNI_BINARIES=true (the default)
  --no-verify              do not run the plugin's VERSION command before installing

  The kubeconfig (written when the datastore is kubernetes or the template names
  __KUBECONFIG_FILEPATH__):
  --kubeconfig FILE        where to write it (default <conf-dir>/calico-kubeconfig)
  --serviceaccount-dir DIR this pod's token, ca.crt and namespace, used to request the plugin's
                           token (default /var/run/secrets/kubernetes.io/serviceaccount)
  --k8s-service-host H     KUBERNETES_SERVICE_HOST: API server host
  --k8s-service-port P     KUBERNETES_SERVICE_PORT: API server port (default 443)
  --k8s-service-protocol P KUBERNETES_SERVICE_PROTOCOL (default https)
  --skip-tls-verify        SKIP_TLS_VERIFY=true: kubeconfig without the CA
  --cni-service-account SA CALICO_CNI_SERVICE_ACCOUNT: whose token the kubeconfig carries
                           (default calico-cni-plugin)
  --token-namespace NS     its namespace (default: <serviceaccount-dir>/namespace)
  --no-token-request       put this pod's own token into the kubeconfig instead (it stops
                           working when the pod is deleted; for static tokens and tests)

  After installing:
  --sleep | --no-sleep     SLEEP: stay running (default: true in a pod, as Calico; false
                           elsewhere). With a kubeconfig it keeps renewing its token, as
                           --watch-token does; otherwise it just sleeps.
  --watch-token            install nothing: write the kubeconfig and renew its token before it
                           expires until stopped (at 1/4 to 1/2 of its remaining lifetime, or
                           every CNI_TOKEN_REFRESH_INTERVAL, e.g. 1h; at once when this pod's
                           own token changes; every 5 s while requests fail)
  --uninstall              remove what a previous install into these dirs put there
  -q, --quiet              print only errors
EOF
}

# ---- settings: defaults, then Calico's environment, then flags ----------------------------------
# Calico's test for "running as a Kubernetes pod": the service-account token at its fixed path.
IN_POD=0
[ -f /var/run/secrets/kubernetes.io/serviceaccount/token ] && IN_POD=1

FROM=${CARGO_TARGET_DIR:-$REPO/target}/x86_64-unknown-linux-gnu/release
PLUGINS_DIR=
HOST_ROOT=/host
BIN_DIRS=()
CONF_DIR=
HOST_CONF_DIR=${CNI_NET_DIR:-}
CONF_NAME=${CNI_CONF_NAME:-10-calico.conflist}
OLD_CONF_NAME=${CNI_OLD_CONF_NAME-10-calico.conflist}
CONF_MODE=${TEST_FILE_PERMISSION:-0600}
NETWORK_NAME=k8s-pod-network
CNI_VERSION=1.0.0
if [ "$IN_POD" = 1 ]; then DATASTORE=${DATASTORE_TYPE:-kubernetes}; else DATASTORE=${DATASTORE_TYPE:-local}; fi
DATASTORE_PATH=/var/lib/calico/ipam
ETCD_EP=${ETCD_ENDPOINTS:-}
TLS_ASSETS=${TLS_ASSETS_DIR:-/calico-secrets}
ETCD_CA=${ETCD_CA_CERT_FILE:-}
ETCD_CERT=${ETCD_CERT_FILE:-}
ETCD_KEY=${ETCD_KEY_FILE:-}
NODE=${KUBERNETES_NODE_NAME:-${NODENAME:-}}
MTU=${CNI_MTU:-}
LOG_LEVEL_V=${LOG_LEVEL:-info}
LOG_FILE=${LOG_FILE_PATH:-/var/log/calico/cni/cni.log}
LOG_MAX_SIZE=${LOG_FILE_MAX_SIZE:-}
LOG_MAX_AGE=${LOG_FILE_MAX_AGE:-}
LOG_MAX_COUNT=${LOG_FILE_MAX_COUNT:-}
IPAM_LOCK_FILE=
IPV4_POOLS=()
IPV6_POOLS=()
CAPABILITIES=
CHAIN=()
TEMPLATE_FILE=${CNI_NETWORK_CONFIG_FILE:-}
SKIP_BINARIES=()
IFS=, read -ra SKIP_BINARIES <<<"${SKIP_CNI_BINARIES:-}"
UPDATE_BINARIES=$(parse_bool UPDATE_CNI_BINARIES "${UPDATE_CNI_BINARIES:-true}")
VERIFY=1
KUBECONFIG_OUT=
SA_DIR=/var/run/secrets/kubernetes.io/serviceaccount
K8S_HOST=${KUBERNETES_SERVICE_HOST:-}
K8S_PORT=${KUBERNETES_SERVICE_PORT:-443}
K8S_PROTO=${KUBERNETES_SERVICE_PROTOCOL:-https}
TLS_SKIP=0
[ "${SKIP_TLS_VERIFY:-}" = true ] && TLS_SKIP=1 # Calico compares with "true" exactly
CNI_SA=${CALICO_CNI_SERVICE_ACCOUNT:-calico-cni-plugin}
TOKEN_NS=
TOKEN_REQUEST=1
TOKEN_VALIDITY=86400 # Calico's: the plugin's token lives a day
if [ "$IN_POD" = 1 ]; then SLEEP_AFTER=$(parse_bool SLEEP "${SLEEP:-true}"); else SLEEP_AFTER=$(parse_bool SLEEP "${SLEEP:-false}"); fi
WATCH=0
UNINSTALL=0

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
  esac
  case $1 in
    --from) need "$@"; FROM=$2; shift ;;
    --plugins-dir) need "$@"; PLUGINS_DIR=$2; shift ;;
    --host-root) need "$@"; HOST_ROOT=$2; shift ;;
    --bin-dir) need "$@"; BIN_DIRS=("$2"); shift ;;
    --conf-dir) need "$@"; CONF_DIR=$2; shift ;;
    --host-conf-dir) need "$@"; HOST_CONF_DIR=$2; shift ;;
    --conf-name) need "$@"; CONF_NAME=$2; shift ;;
    --old-conf-name) [ $# -ge 2 ] || die "$1 needs a value"; OLD_CONF_NAME=$2; shift ;;
    --conf-mode) need "$@"; CONF_MODE=$2; shift ;;
    --network-name) need "$@"; NETWORK_NAME=$2; shift ;;
    --cni-version) need "$@"; CNI_VERSION=$2; shift ;;
    --datastore-type) need "$@"; DATASTORE=$2; shift ;;
    --datastore-path) need "$@"; DATASTORE_PATH=$2; shift ;;
    --etcd-endpoints) need "$@"; ETCD_EP=$2; shift ;;
    --tls-assets-dir) need "$@"; TLS_ASSETS=$2; shift ;;
    --etcd-ca-cert-file) need "$@"; ETCD_CA=$2; shift ;;
    --etcd-cert-file) need "$@"; ETCD_CERT=$2; shift ;;
    --etcd-key-file) need "$@"; ETCD_KEY=$2; shift ;;
    --nodename) need "$@"; NODE=$2; shift ;;
    --mtu) need "$@"; MTU=$2; shift ;;
    --log-level) need "$@"; LOG_LEVEL_V=$2; shift ;;
    --log-file-path) need "$@"; LOG_FILE=$2; shift ;;
    --log-file-max-size) need "$@"; LOG_MAX_SIZE=$2; shift ;;
    --log-file-max-age) need "$@"; LOG_MAX_AGE=$2; shift ;;
    --log-file-max-count) need "$@"; LOG_MAX_COUNT=$2; shift ;;
    --ipam-lock-file) need "$@"; IPAM_LOCK_FILE=$2; shift ;;
    --ipv4-pool) need "$@"; IPV4_POOLS+=("$2"); shift ;;
    --ipv6-pool) need "$@"; IPV6_POOLS+=("$2"); shift ;;
    --capabilities) need "$@"; CAPABILITIES=$2; shift ;;
    --chain) need "$@"; CHAIN+=("$2"); shift ;;
    --config-template) need "$@"; TEMPLATE_FILE=$2; shift ;;
    --skip-binary) need "$@"; SKIP_BINARIES+=("$2"); shift ;;
    --no-update-binaries) UPDATE_BINARIES=0 ;;
    --update-binaries) UPDATE_BINARIES=1 ;;
    --no-verify) VERIFY=0 ;;
    --kubeconfig) need "$@"; KUBECONFIG_OUT=$2; shift ;;
    --serviceaccount-dir) need "$@"; SA_DIR=$2; shift ;;
    --k8s-service-host) need "$@"; K8S_HOST=$2; shift ;;
    --k8s-service-port) need "$@"; K8S_PORT=$2; shift ;;
    --k8s-service-protocol) need "$@"; K8S_PROTO=$2; shift ;;
    --skip-tls-verify) TLS_SKIP=1 ;;
    --cni-service-account) need "$@"; CNI_SA=$2; shift ;;
    --token-namespace) need "$@"; TOKEN_NS=$2; shift ;;
    --no-token-request) TOKEN_REQUEST=0 ;;
    --sleep) SLEEP_AFTER=1 ;;
    --no-sleep) SLEEP_AFTER=0 ;;
    --watch-token) WATCH=1 ;;
    --uninstall) UNINSTALL=1 ;;
    -q|--quiet) QUIET=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

# The template text: --config-template / CNI_NETWORK_CONFIG_FILE, else CNI_NETWORK_CONFIG.
TEMPLATE=
if [ -n "$TEMPLATE_FILE" ]; then
  [ -r "$TEMPLATE_FILE" ] || die "cannot read the config template $TEMPLATE_FILE (--config-template / CNI_NETWORK_CONFIG_FILE)"
  TEMPLATE=$(cat "$TEMPLATE_FILE"; echo x) # keep trailing newlines: the file is written as it is
  TEMPLATE=${TEMPLATE%x}
elif [ -n "${CNI_NETWORK_CONFIG:-}" ]; then
  TEMPLATE=$CNI_NETWORK_CONFIG
fi

# Calico's layout inside a container: the host under HOST_ROOT.
CONTAINER_LAYOUT=0
if [ -d "$HOST_ROOT/etc/cni/net.d" ] || [ -d "$HOST_ROOT/opt/cni/bin" ]; then CONTAINER_LAYOUT=1; fi
if [ -z "$CONF_DIR" ]; then
  if [ "$CONTAINER_LAYOUT" = 1 ]; then
    CONF_DIR=$HOST_ROOT/etc/cni/net.d
    HOST_CONF_DIR=${HOST_CONF_DIR:-/etc/cni/net.d}
  else
    CONF_DIR=${HOST_CONF_DIR:-/etc/cni/net.d}
  fi
fi
HOST_CONF_DIR=${HOST_CONF_DIR:-$CONF_DIR}

case $DATASTORE in local|kubernetes|etcdv3) ;; *) die "DATASTORE_TYPE / --datastore-type must be local, kubernetes or etcdv3, not '$DATASTORE'" ;; esac
for v in "ETCD_CA_CERT_FILE / --etcd-ca-cert-file:$ETCD_CA" "ETCD_CERT_FILE / --etcd-cert-file:$ETCD_CERT" \
  "ETCD_KEY_FILE / --etcd-key-file:$ETCD_KEY"; do
  [ -z "${v#*:}" ] || [[ ${v#*:} == /* ]] ||
    die "${v%%:*} '${v#*:}' is not an absolute path: the plugin reads it from the runtime's working directory otherwise"
done
[[ $CNI_VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--cni-version '$CNI_VERSION' is not a version"
[[ $NETWORK_NAME =~ ^[a-zA-Z0-9_.-]+$ ]] || die "--network-name '$NETWORK_NAME' is not a valid network name"
conf_file_name_ok() { [[ $1 != */* && $1 != .* && ($1 == *.conflist || $1 == *.conf || $1 == *.json) ]]; }
conf_file_name_ok "$CONF_NAME" || die "CNI_CONF_NAME / --conf-name '$CONF_NAME' must be a file name ending in .conflist (or .conf, .json)"
[ -z "$OLD_CONF_NAME" ] || [[ $OLD_CONF_NAME != */* ]] || die "CNI_OLD_CONF_NAME / --old-conf-name '$OLD_CONF_NAME' must be a file name"
[[ $CONF_MODE =~ ^0?[0-7]{3}$ ]] || die "--conf-mode / TEST_FILE_PERMISSION '$CONF_MODE' is not an octal file mode"
CONF_MODE=${CONF_MODE#0}
[ -z "$MTU" ] || [[ $MTU =~ ^[0-9]+$ ]] || die "CNI_MTU / --mtu must be a number, not '$MTU'"
for v in "LOG_FILE_MAX_SIZE:$LOG_MAX_SIZE" "LOG_FILE_MAX_AGE:$LOG_MAX_AGE" "LOG_FILE_MAX_COUNT:$LOG_MAX_COUNT"; do
  [ -z "${v#*:}" ] || [[ ${v#*:} =~ ^[0-9]+$ ]] || die "${v%%:*} must be a number, not '${v#*:}'"
done
for b in "${SKIP_BINARIES[@]}"; do
  [[ -z $b || $b =~ ^[A-Za-z0-9_.+-]+$ ]] || die "SKIP_CNI_BINARIES / --skip-binary: '$b' is not a file name"
done
[[ $K8S_PORT =~ ^[0-9]+$ ]] || die "KUBERNETES_SERVICE_PORT / --k8s-service-port must be a number, not '$K8S_PORT'"
[[ $CNI_SA =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "CALICO_CNI_SERVICE_ACCOUNT / --cni-service-account '$CNI_SA' is not a service account name"
KUBECONFIG_OUT=${KUBECONFIG_OUT:-$CONF_DIR/calico-kubeconfig}
CONFLIST=$CONF_DIR/$CONF_NAME
MANIFEST=$CONF_DIR/calico-install.manifest

# A kubeconfig is written for the kubernetes datastore, and whenever a template names it: the
# conflist never points at a kubeconfig this script did not write.
NEED_KUBECONFIG=0
if [ "$DATASTORE" = kubernetes ] || [ "$WATCH" = 1 ] || [[ $TEMPLATE == *__KUBECONFIG_FILEPATH__* ]]; then
  NEED_KUBECONFIG=1
fi

# ---- the manifest: one absolute path a line, "d " prefix for directories we created ----------
declare -A RECORDED=()
load_manifest() {
  [ -f "$MANIFEST" ] || return 0
  local line
  while IFS= read -r line; do
    [ -n "$line" ] && RECORDED[$line]=1
  done <"$MANIFEST"
}
abspath() { # absolute, lexically cleaned path (no symlinks resolved; the path need not exist)
  local p=$1 out='' seg
  [[ $p == /* ]] || p=$PWD/$p
  local IFS=/
  for seg in $p; do
    case $seg in
      ''|.) ;;
      ..) out=${out%/*} ;;
      *) out+=/$seg ;;
    esac
  done
  echo "${out:-/}"
}

# ---- uninstall ---------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
  if [ ! -f "$MANIFEST" ]; then
    say "nothing to uninstall: no $MANIFEST"
    exit 0
  fi
  load_manifest
  # Files first, then directories deepest first (only if empty: we never remove others' files).
  for entry in "${!RECORDED[@]}"; do
    case $entry in
      "d "*) ;;
      *) if [ -e "$entry" ] || [ -L "$entry" ]; then rm -f -- "$entry"; say "removed $entry"; fi ;;
    esac
  done
  rm -f -- "$MANIFEST"
  mapfile -t dirs < <(for e in "${!RECORDED[@]}"; do [[ $e == "d "* ]] && echo "${e#d }"; done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
  for d in "${dirs[@]}"; do
    if [ -d "$d" ] && rmdir -- "$d" 2>/dev/null; then say "removed directory $d"; fi
  done
  exit 0
fi

# ---- file writing ------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/install-cni.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT

# mkdir -p that records each directory it creates.
CREATED_DIRS=()
ensure_dir() {
  local d=$1 missing=()
  while [ ! -d "$d" ]; do
    missing=("$d" "${missing[@]}")
    d=$(dirname "$d")
  done
  for d in "${missing[@]}"; do
    mkdir -m 0755 -- "$d"
    CREATED_DIRS+=("$(abspath "$d")")
    say "created directory $d"
  done
}

CHANGED=0
# install_file SRC-FILE DEST MODE: atomically replace DEST unless it already has SRC's bytes
# and mode.
install_file() {
  local src=$1 dest=$2 mode=$3 tmp
  if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "$mode" ]; then
    say "unchanged $dest"
    return
  fi
  tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").tmp.XXXXXX")
  if ! cp -- "$src" "$tmp" || ! chmod "$mode" "$tmp"; then
    rm -f -- "$tmp"
    die "cannot write $tmp"
  fi
  sync -- "$tmp" 2>/dev/null || true
  if ! mv -f -- "$tmp" "$dest"; then
    rm -f -- "$tmp"
    die "cannot rename $tmp to $dest"
  fi
  CHANGED=1
  say "wrote $dest"
}

INSTALLED=()
save_manifest() {
  local f d
  for f in "${INSTALLED[@]}"; do RECORDED[$f]=1; done
  for d in "${CREATED_DIRS[@]}"; do RECORDED["d $d"]=1; done
  for f in "${!RECORDED[@]}"; do echo "$f"; done | LC_ALL=C sort >"$WORK/manifest"
  local QUIET=1
  install_file "$WORK/manifest" "$MANIFEST" 644
}

# ---- JSON --------------------------------------------------------------------------------------
json_str() { # a JSON string literal
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}
json_inner() { local s; s=$(json_str "$1"); s=${s#\"}; printf '%s' "${s%\"}"; }
json_list() { # JSON list of strings
  local out='' x
  for x in "$@"; do out+="${out:+, }$(json_str "$x")"; done
  printf '[%s]' "$out"
}
valid_json_object() { # FILE; best effort: validated with jq or python3 when one is there
  if command -v jq >/dev/null 2>&1; then jq -e 'type == "object"' "$1" >/dev/null 2>&1
  elif command -v python3 >/dev/null 2>&1; then python3 -c 'import json,sys; assert isinstance(json.load(open(sys.argv[1])), dict)' "$1" >/dev/null 2>&1
  else return 0; fi
}
# json_field NAME: the first string value of "NAME" in the JSON on stdin, with \" and \\ unescaped
# (enough for the API server's answers: the token, its expiry and error messages).
json_field() {
  local v
  v=$(sed -n "s/.*\"$1\": *\"\\(\\([^\"\\\\]\\|\\\\.\\)*\\)\".*/\\1/p")
  v=${v%%$'\n'*}
  v=${v//\\\"/\"}
  printf '%s' "${v//\\\\/\\}"
}

# ---- the API server and the plugin's token -----------------------------------------------------
api_url() {
  local h=$K8S_HOST
  [[ $h == *:* && $h != \[* ]] && h="[$h]" # IPv6 literal
  echo "$K8S_PROTO://$h:$K8S_PORT"
}

# jwt_exp TOKEN: the "exp" claim (Unix seconds) of a JWT, empty if it has none.
jwt_exp() {
  local p=$1
  p=${p#*.}; p=${p%%.*}
  p=$(tr '_-' '/+' <<<"$p")
  while (( ${#p} % 4 )); do p+='='; done
  base64 -d <<<"$p" 2>/dev/null | sed -n 's/.*"exp": *\([0-9]*\).*/\1/p' || true
}

# api METHOD PATH [BODY]: one request authenticated with this pod's own token. Sets API_CODE and
# API_BODY; returns 1 with API_ERR set when there was no HTTP answer. The token goes to curl on
# stdin, never on its command line. HTTP/1.1: over HTTP/2 the API server resets the stream of a
# request it refuses before reading the body, and curl reports that as a transfer error (18)
# instead of the 401 the client must see.
api() {
  local method=$1 path=$2 body=${3:-} args
  args=(--http1.1 -sS --max-time 30 -o "$WORK/api.out" -w '%{http_code}' -X "$method"
    -H 'Accept: application/json' --config -)
  if [ "$TLS_SKIP" = 1 ]; then args+=(-k); else args+=(--cacert "$SA_DIR/ca.crt"); fi
  [ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data-binary "$body")
  API_CODE= API_BODY= API_ERR=
  if ! API_CODE=$(curl "${args[@]}" "$(api_url)$path" 2>"$WORK/api.err" <<<"header = \"Authorization: Bearer $OWN_TOKEN\""); then
    API_ERR=$(tr '\n' ' ' <"$WORK/api.err")
    return 1
  fi
  API_BODY=$(cat "$WORK/api.out")
}

token_namespace() {
  if [ -n "$TOKEN_NS" ]; then echo "$TOKEN_NS"; return; fi
  [ -r "$SA_DIR/namespace" ] || return 1
  tr -d '[:space:]' <"$SA_DIR/namespace"
}

# kube_prereqs: what a kubeconfig needs, checked before anything is written.
kube_prereqs() {
  [ -n "$K8S_HOST" ] || die "a kubeconfig is needed (kubernetes datastore or __KUBECONFIG_FILEPATH__) but there is no API server host: KUBERNETES_SERVICE_HOST is unset (pass --k8s-service-host)"
  [ -r "$SA_DIR/token" ] || die "a kubeconfig is needed but this pod's service-account token $SA_DIR/token cannot be read (pass --serviceaccount-dir)"
  [ "$TLS_SKIP" = 1 ] || [ -r "$SA_DIR/ca.crt" ] || die "cannot read the API server's CA $SA_DIR/ca.crt (pass --serviceaccount-dir, or --skip-tls-verify)"
  if [ "$TOKEN_REQUEST" = 1 ]; then
    command -v curl >/dev/null 2>&1 || die "curl is needed to request the plugin's token from the API server (or pass --no-token-request)"
    token_namespace >/dev/null || die "cannot read $SA_DIR/namespace for the namespace of service account $CNI_SA (pass --token-namespace)"
  fi
}

# obtain_token: the token the kubeconfig carries, in TOKEN with its expiry TOKEN_EXP (Unix
# seconds, empty if unknown). Returns 1 with TOKEN_ERR set when there is none; never exits.
obtain_token() {
  TOKEN= TOKEN_EXP= TOKEN_ERR=
  OWN_TOKEN=$(tr -d '\n' <"$SA_DIR/token" 2>/dev/null) || true
  if [ -z "$OWN_TOKEN" ]; then TOKEN_ERR="this pod's service-account token $SA_DIR/token is missing or empty"; return 1; fi
  if [ "$TOKEN_REQUEST" = 0 ]; then
    TOKEN=$OWN_TOKEN TOKEN_EXP=$(jwt_exp "$OWN_TOKEN")
    return 0
  fi
  local ns path msg ts
  ns=$(token_namespace) || { TOKEN_ERR="cannot read $SA_DIR/namespace (pass --token-namespace)"; return 1; }
  path=/api/v1/namespaces/$ns/serviceaccounts/$CNI_SA/token
  if ! api POST "$path" "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenRequest\",\"spec\":{\"audiences\":[],\"expirationSeconds\":$TOKEN_VALIDITY}}"; then
    TOKEN_ERR="cannot reach the API server at $(api_url) for a TokenRequest: $API_ERR"
    return 1
  fi
  msg=$(json_field message <<<"$API_BODY")
  case $API_CODE in
    200|201)
      TOKEN=$(json_field token <<<"$API_BODY")
      ts=$(json_field expirationTimestamp <<<"$API_BODY")
      if [[ ! $TOKEN =~ ^[A-Za-z0-9._-]+$ ]]; then TOKEN= TOKEN_ERR="the TokenRequest answer for $ns/$CNI_SA holds no token"; return 1; fi
      TOKEN_EXP=$(date -u -d "$ts" +%s 2>/dev/null) || TOKEN_EXP=$(jwt_exp "$TOKEN")
      return 0 ;;
    404)
      # Calico's fallback: an API server without the TokenRequest API gets this pod's own token.
      if api GET /api/v1 && [ "$API_CODE" = 200 ] && [[ $API_BODY != *'"serviceaccounts/token"'* ]]; then
        warn "the API server has no TokenRequest API (serviceaccounts/token): the kubeconfig carries this pod's own token, which stops working when the pod is deleted"
        TOKEN=$OWN_TOKEN TOKEN_EXP=$(jwt_exp "$OWN_TOKEN")
        return 0
      fi
      TOKEN_ERR="there is no ServiceAccount $ns/$CNI_SA for the CNI plugin (apply calico-cni/manifests/rbac.yaml, or name another with CALICO_CNI_SERVICE_ACCOUNT / --cni-service-account): $msg" ;;
    401)
      TOKEN_ERR="the API server rejected this pod's own service-account token ($SA_DIR/token) on the TokenRequest: $msg" ;;
    403)
      TOKEN_ERR="the TokenRequest for $ns/$CNI_SA was refused: $msg. This pod's service account needs 'create' on 'serviceaccounts/token' for '$CNI_SA' in '$ns' (the Role calico-cni-installer in calico-cni/manifests/rbac.yaml); --no-token-request puts this pod's own token into the kubeconfig instead, which stops working when the pod is deleted" ;;
    *)
      TOKEN_ERR="the TokenRequest for $ns/$CNI_SA failed with HTTP $API_CODE: ${msg:-$API_BODY}" ;;
  esac
  return 1
}

# The kubeconfig, in the layout Calico's installer writes.
render_kubeconfig() {
  local host=$K8S_HOST
  [[ $host == *:* && $host != \[* ]] && host="[$host]" # IPv6 literal
  echo "# Kubeconfig file for Calico CNI plugin."
  echo "apiVersion: v1"
  echo "kind: Config"
  echo "clusters:"
  echo "- name: local"
  echo "  cluster:"
  echo "    server: $K8S_PROTO://$host:$K8S_PORT"
  if [ "$TLS_SKIP" = 1 ]; then
    echo "    insecure-skip-tls-verify: true"
  else
    echo "    certificate-authority-data: $(base64 -w0 <"$SA_DIR/ca.crt")"
  fi
  echo "users:"
  echo "- name: calico"
  echo "  user:"
  echo "    token: $TOKEN"
  echo "contexts:"
  echo "- name: calico-context"
  echo "  context:"
  echo "    cluster: local"
  echo "    user: calico"
  printf 'current-context: calico-context'
}

write_kubeconfig() {
  render_kubeconfig >"$WORK/kubeconfig"
  ensure_dir "$(dirname "$KUBECONFIG_OUT")"
  install_file "$WORK/kubeconfig" "$KUBECONFIG_OUT" 600
  INSTALLED+=("$(abspath "$KUBECONFIG_OUT")")
}

# go_duration_s D: a Go duration (CNI_TOKEN_REFRESH_INTERVAL, e.g. 1h30m, 45s) in whole seconds
# (at least 1); returns 1 if D is not one.
go_duration_s() {
  local rest=$1 total=0 num unit
  [ -n "$rest" ] || return 1
  while [ -n "$rest" ]; do
    [[ $rest =~ ^([0-9]+(\.[0-9]*)?)(ns|us|µs|ms|s|m|h)(.*)$ ]] || return 1
    num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[3]} rest=${BASH_REMATCH[4]}
    total=$(awk -v t="$total" -v n="$num" -v u="$unit" 'BEGIN {
      f = u == "h" ? 3600 : u == "m" ? 60 : u == "s" ? 1 : u == "ms" ? 1e-3 : u == "ns" ? 1e-9 : 1e-6
      printf "%.9f", t + n * f }')
  done
  awk -v t="$total" 'BEGIN { s = int(t); if (s < t) s++; if (s < 1) s = 1; print s }'
}

# refresh_delay EXP NOW: seconds to wait before the next TokenRequest, by Calico's rule: a quarter
# of the remaining lifetime (or CNI_TOKEN_REFRESH_INTERVAL), 5 s when the token expires within
# 20 s (or a request failed), plus a random jitter of up to the same again.
REFRESH_INTERVAL_S=
if [ -n "${CNI_TOKEN_REFRESH_INTERVAL:-}" ]; then
  REFRESH_INTERVAL_S=$(go_duration_s "$CNI_TOKEN_REFRESH_INTERVAL") || {
    warn "CNI_TOKEN_REFRESH_INTERVAL='$CNI_TOKEN_REFRESH_INTERVAL' is not a duration (e.g. 1h, 30m, 45s); ignored"
    REFRESH_INTERVAL_S=
  }
fi
refresh_delay() {
  local exp=$1 now=$2 base
  base=$(((exp - now) / 4))
  [ -z "$REFRESH_INTERVAL_S" ] || base=$REFRESH_INTERVAL_S
  ((exp >= now + 20)) || base=5
  ((base >= 1)) || base=1
  echo $((base + RANDOM * base / 32768))
}

# wait_or_rotated SECONDS: sleep, but return 1 early when this pod's own token file changes (the
# kubelet rotated it, perhaps with a new signing key): the plugin's token is renewed at once.
SLEEP_PID=
own_token_sum() { cksum <"$SA_DIR/token" 2>/dev/null || echo none; }
wait_or_rotated() {
  local end sum now chunk
  end=$(($(date +%s) + $1))
  sum=$(own_token_sum)
  while now=$(date +%s); ((now < end)); do
    chunk=$((end - now))
    ((chunk <= 3)) || chunk=3
    sleep "$chunk" &
    SLEEP_PID=$!
    wait "$SLEEP_PID" || true
    SLEEP_PID=
    [ "$(own_token_sum)" = "$sum" ] || return 1
  done
}

stop_on_signal() {
  trap 'trap - TERM INT; [ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null; log "stopping"; exit 0' TERM INT
}

# watch_token [EXP]: keep the kubeconfig's token fresh until stopped. With EXP, the token that
# expires then was just written; otherwise the first one is requested now.
watch_token() {
  local exp=${1:-} now delay ns
  ns=$(token_namespace 2>/dev/null || echo "?")
  stop_on_signal
  if [ "$TOKEN_REQUEST" = 1 ]; then
    log "renewing the token of $ns/$CNI_SA in $KUBECONFIG_OUT before it expires"
  else
    log "following this pod's own token in $KUBECONFIG_OUT (--no-token-request)"
  fi
  while :; do
    if [ -z "$exp" ]; then
      if obtain_token; then
        local QUIET=1
        write_kubeconfig
        save_manifest
        exp=${TOKEN_EXP:-$(($(date +%s) + 1200))} # no expiry known: look again in 5 to 10 minutes
        log "wrote $KUBECONFIG_OUT (token expires $(date -u -d "@$exp" +%Y-%m-%dT%H:%M:%SZ))"
      else
        log "error: $TOKEN_ERR; retrying"
        exp=0
      fi
    fi
    now=$(date +%s)
    delay=$(refresh_delay "$exp" "$now")
    if [ "$exp" = 0 ]; then
      log "next token refresh in ${delay}s (retrying)"
    else
      log "next token refresh in ${delay}s (the token expires in $((exp - now))s)"
    fi
    wait_or_rotated "$delay" || log "this pod's own service-account token changed: renewing now"
    exp=
  done
}

if [ "$WATCH" = 1 ]; then
  kube_prereqs
  load_manifest
  watch_token
fi

# ---- the conflist ------------------------------------------------------------------------------
nodename() {
  if [ -n "$NODE" ]; then echo "$NODE"
  else tr '[:upper:]' '[:lower:]' </proc/sys/kernel/hostname | tr -d '[:space:]'; fi
}

# Path of the kubeconfig as the plugin on the host will see it (Calico: CNI_NET_DIR/calico-kubeconfig).
kubeconfig_host_path() {
  local k c
  k=$(abspath "$KUBECONFIG_OUT")
  c=$(abspath "$CONF_DIR")
  if [[ $k == "$c"/* ]]; then echo "${HOST_CONF_DIR%/}/${k#"$c"/}"; else echo "$k"; fi
}

# Calico's etcd TLS assets: each of etcd-ca, etcd-cert, etcd-key in TLS_ASSETS_DIR is copied to
# <conf-dir>/calico-tls/ (Calico's install: only when at least one of them is there).
TLS_PLAN=()
if [ -d "$TLS_ASSETS" ]; then
  for n in etcd-ca etcd-cert etcd-key; do
    if [ -f "$TLS_ASSETS/$n" ]; then
      [ -r "$TLS_ASSETS/$n" ] || die "cannot read the etcd TLS asset $TLS_ASSETS/$n (TLS_ASSETS_DIR)"
      TLS_PLAN+=("$n")
    fi
  done
fi
# etcd_file NAME GIVEN: the path the conflist names for TLS asset NAME, as the host sees it: the
# installed copy (this run's, or one already there, as Calico checks), else GIVEN (ETCD_*_FILE).
etcd_file() {
  local n
  for n in "${TLS_PLAN[@]}"; do
    if [ "$n" = "$1" ]; then echo "${HOST_CONF_DIR%/}/calico-tls/$1"; return; fi
  done
  if [ -f "$CONF_DIR/calico-tls/$1" ]; then echo "${HOST_CONF_DIR%/}/calico-tls/$1"; return; fi
  echo "$2"
}

# Calico's placeholders, replaced in Calico's order with its defaults (values JSON-escaped, which
# changes nothing for valid ones: they stand inside JSON strings in Calico's templates).
render_template() {
  local t=$TEMPLATE node=$1 kc=$2 own=
  [ ! -r "$SA_DIR/token" ] || own=$(tr -d '\n' <"$SA_DIR/token")
  [[ $t != *__SERVICEACCOUNT_TOKEN__* ]] ||
    warn "the template's __SERVICEACCOUNT_TOKEN__ embeds this pod's own token, which stops working when the pod is deleted; the kubeconfig (__KUBECONFIG_FILEPATH__) carries a renewed one"
  sub() { t=${t//"$1"/"$(json_inner "$2")"}; }
  sub __LOG_LEVEL__ "$LOG_LEVEL_V"
  sub __LOG_FILE_PATH__ "$LOG_FILE"
  sub __LOG_FILE_MAX_SIZE__ "${LOG_MAX_SIZE:-100}"
  sub __LOG_FILE_MAX_AGE__ "${LOG_MAX_AGE:-30}"
  sub __LOG_FILE_MAX_COUNT__ "${LOG_MAX_COUNT:-10}"
  sub __DATASTORE_TYPE__ "$DATASTORE"
  sub __KUBERNETES_NODE_NAME__ "$node"
  sub __KUBECONFIG_FILEPATH__ "$kc"
  sub __CNI_MTU__ "${MTU:-1500}"
  sub __KUBERNETES_SERVICE_HOST__ "$K8S_HOST"
  sub __KUBERNETES_SERVICE_PORT__ "$K8S_PORT"
  sub __SERVICEACCOUNT_TOKEN__ "$own"
  sub __CALICO_API_GROUP__ "${CALICO_API_GROUP:-crd.projectcalico.org/v1}"
  sub __ETCD_CERT_FILE__ "$(etcd_file etcd-cert "$ETCD_CERT")"
  sub __ETCD_CA_CERT_FILE__ "$(etcd_file etcd-ca "$ETCD_CA")"
  sub __ETCD_KEY_FILE__ "$(etcd_file etcd-key "$ETCD_KEY")"
  sub __ETCD_ENDPOINTS__ "$ETCD_EP"
  sub __ETCD_DISCOVERY_SRV__ "${ETCD_DISCOVERY_SRV:-}"
  sub __REQUIRE_MTU_FILE__ "${REQUIRE_MTU_FILE:-false}"
  # Ours, beyond Calico's set.
  sub __CNI_VERSION__ "$CNI_VERSION"
  sub __NETWORK_NAME__ "$NETWORK_NAME"
  sub __DATASTORE_PATH__ "$DATASTORE_PATH"
  printf '%s' "$t" # byte for byte what was substituted, as Calico writes it
}

render_builtin() {
  local node=$1 kc=$2 p="      "
  echo "{"
  echo "  \"name\": $(json_str "$NETWORK_NAME"),"
  echo "  \"cniVersion\": $(json_str "$CNI_VERSION"),"
  echo "  \"plugins\": ["
  echo "    {"
  echo "$p\"type\": \"calico\","
  echo "$p\"log_level\": $(json_str "$LOG_LEVEL_V"),"
  echo "$p\"log_file_path\": $(json_str "$LOG_FILE"),"
  [ -z "$LOG_MAX_SIZE" ] || echo "$p\"log_file_max_size\": $LOG_MAX_SIZE,"
  [ -z "$LOG_MAX_AGE" ] || echo "$p\"log_file_max_age\": $LOG_MAX_AGE,"
  [ -z "$LOG_MAX_COUNT" ] || echo "$p\"log_file_max_count\": $LOG_MAX_COUNT,"
  echo "$p\"datastore_type\": $(json_str "$DATASTORE"),"
  [ "$DATASTORE" != local ] || echo "$p\"datastore_path\": $(json_str "$DATASTORE_PATH"),"
  if [ "$DATASTORE" = etcdv3 ]; then
    echo "$p\"etcd_endpoints\": $(json_str "$ETCD_EP"),"
    local f
    f=$(etcd_file etcd-ca "$ETCD_CA"); [ -z "$f" ] || echo "$p\"etcd_ca_cert_file\": $(json_str "$f"),"
    f=$(etcd_file etcd-cert "$ETCD_CERT"); [ -z "$f" ] || echo "$p\"etcd_cert_file\": $(json_str "$f"),"
    f=$(etcd_file etcd-key "$ETCD_KEY"); [ -z "$f" ] || echo "$p\"etcd_key_file\": $(json_str "$f"),"
  fi
  echo "$p\"nodename\": $(json_str "$node"),"
  [ -z "$IPAM_LOCK_FILE" ] || echo "$p\"ipam_lock_file\": $(json_str "$IPAM_LOCK_FILE"),"
  [ -z "$MTU" ] || echo "$p\"mtu\": $MTU,"
  [ -z "$CAPABILITIES" ] || echo "$p\"capabilities\": $CAPABILITIES,"
  if [ "$NEED_KUBECONFIG" = 1 ]; then
    [ "$DATASTORE" != kubernetes ] || echo "$p\"policy\": {\"type\": \"k8s\"},"
    echo "$p\"kubernetes\": {\"kubeconfig\": $(json_str "$kc")},"
  fi
  echo "$p\"ipam\": {"
  echo "$p  \"type\": \"calico-ipam\","
  [ ${#IPV4_POOLS[@]} -eq 0 ] || echo "$p  \"ipv4_pools\": $(json_list "${IPV4_POOLS[@]}"),"
  [ ${#IPV6_POOLS[@]} -eq 0 ] || echo "$p  \"ipv6_pools\": $(json_list "${IPV6_POOLS[@]}"),"
  echo "$p  \"assign_ipv4\": \"true\","
  echo "$p  \"assign_ipv6\": \"true\""
  echo "$p}"
  if [ ${#CHAIN[@]} -gt 0 ]; then
    echo "    },"
    local i
    for i in "${!CHAIN[@]}"; do
      if [ "$i" -lt $((${#CHAIN[@]} - 1)) ]; then echo "    ${CHAIN[$i]},"; else echo "    ${CHAIN[$i]}"; fi
    done
  else
    echo "    }"
  fi
  echo "  ]"
  echo "}"
}

# ---- install -----------------------------------------------------------------------------------
skipped() { local b; for b in "${SKIP_BINARIES[@]}"; do [ "$b" = "$1" ] && return 0; done; return 1; }

# The binaries to install: "NAME SOURCE" lines.
PLAN=()
if ! skipped calico; then
  src=
  for c in "$FROM/calico-cni" "$FROM/calico"; do
    if [ -f "$c" ]; then src=$c; break; fi
  done
  [ -n "$src" ] || die "no CNI plugin binary: neither $FROM/calico-cni nor $FROM/calico (build them with scripts/build-release.sh, or pass --from DIR)"
  PLAN+=("calico $src")
fi
if ! skipped calico-ipam; then
  [ -f "$FROM/calico-ipam" ] || die "no IPAM plugin binary $FROM/calico-ipam (build them with scripts/build-release.sh, or pass --from DIR)"
  PLAN+=("calico-ipam $FROM/calico-ipam")
fi
if [ -n "$PLUGINS_DIR" ]; then
  [ -d "$PLUGINS_DIR" ] || die "--plugins-dir $PLUGINS_DIR is not a directory"
  for f in "$PLUGINS_DIR"/*; do
    name=${f##*/}
    [ -f "$f" ] && [ -x "$f" ] || continue
    case $name in calico|calico-cni|calico-ipam|install|.*) continue ;; esac
    skipped "$name" || PLAN+=("$name $f")
  done
fi

# The bin dirs: the one given, Calico's two in the container layout (each that is writable), or
# /opt/cni/bin.
if [ ${#BIN_DIRS[@]} -eq 0 ]; then
  if [ "$CONTAINER_LAYOUT" = 1 ]; then
    for d in "$HOST_ROOT/opt/cni/bin" "$HOST_ROOT/secondary-bin-dir"; do
      if [ -d "$d" ] && [ -w "$d" ]; then BIN_DIRS+=("$d"); elif [ -e "$d" ]; then say "$d is not writable, skipping"; fi
    done
    if [ ${#BIN_DIRS[@]} -eq 0 ]; then
      # Read-only hosts with the binaries baked in (Calico does the same with UPDATE_CNI_BINARIES=false).
      if [ "$UPDATE_BINARIES" = 0 ] && [ -e "$HOST_ROOT/opt/cni/bin/calico" ] && [ -e "$HOST_ROOT/opt/cni/bin/calico-ipam" ]; then
        say "no writable CNI bin dir, but calico and calico-ipam are in $HOST_ROOT/opt/cni/bin (UPDATE_CNI_BINARIES=false)"
        PLAN=()
      else
        die "no writable CNI bin directory: neither $HOST_ROOT/opt/cni/bin nor $HOST_ROOT/secondary-bin-dir"
      fi
    fi
  else
    BIN_DIRS=(/opt/cni/bin)
  fi
fi

if [ "$VERIFY" = 1 ]; then
  for entry in "${PLAN[@]}"; do
    name=${entry%% *} b=${entry#* }
    case $name in calico|calico-ipam) ;; *) continue ;; esac
    out=$(CNI_COMMAND=VERSION "$b" <<<"{\"cniVersion\":\"$CNI_VERSION\"}" 2>"$WORK/verify.err") ||
      die "$b VERSION failed: $out $(cat "$WORK/verify.err")"
    [[ $out == *supportedVersions* && $out == *"\"$CNI_VERSION\""* ]] ||
      die "$b does not support cniVersion $CNI_VERSION: VERSION said: $out"
  done
fi

# The configuration and the token, before anything is written: a bad setting or a refused
# TokenRequest changes nothing.
NODE=$(nodename)
[ -n "$NODE" ] || die "no node name: set KUBERNETES_NODE_NAME or pass --nodename"
KC_HOST_PATH=$(kubeconfig_host_path)
if [ "$DATASTORE" = etcdv3 ] && [ -z "$TEMPLATE" ] && [ -z "$ETCD_EP" ]; then
  die "the etcdv3 datastore needs the etcd endpoints: set ETCD_ENDPOINTS or pass --etcd-endpoints"
fi
if [ -n "$TEMPLATE" ]; then
  render_template "$NODE" "$KC_HOST_PATH" >"$WORK/conflist"
  valid_json_object "$WORK/conflist" || die "the network configuration is not a valid JSON object after substitution (check CNI_NETWORK_CONFIG / CNI_NETWORK_CONFIG_FILE)"
else
  render_builtin "$NODE" "$KC_HOST_PATH" >"$WORK/conflist"
  valid_json_object "$WORK/conflist" || die "the network configuration is not a valid JSON object:
$(cat "$WORK/conflist")"
fi
if [ "$NEED_KUBECONFIG" = 1 ]; then
  kube_prereqs
  obtain_token || die "$TOKEN_ERR"
fi

load_manifest
ensure_dir "$CONF_DIR"
for d in "${BIN_DIRS[@]}"; do
  ensure_dir "$d"
  for entry in "${PLAN[@]}"; do
    name=${entry%% *} src=${entry#* }
    if [ "$UPDATE_BINARIES" = 0 ] && [ -e "$d/$name" ]; then
      say "kept $d/$name (UPDATE_CNI_BINARIES=false)"
      continue
    fi
    install_file "$src" "$d/$name" 755
    INSTALLED+=("$(abspath "$d/$name")")
  done
done
for b in "${SKIP_BINARIES[@]}"; do [ -z "$b" ] || say "skipped $b (SKIP_CNI_BINARIES)"; done
[ "$NEED_KUBECONFIG" = 0 ] || write_kubeconfig
if [ ${#TLS_PLAN[@]} -gt 0 ]; then
  ensure_dir "$CONF_DIR/calico-tls"
  for n in "${TLS_PLAN[@]}"; do
    mode=$(stat -c %a "$TLS_ASSETS/$n")
    [ "$n" != etcd-key ] || mode=600 # a private key: root only, whatever the secret's mode
    install_file "$TLS_ASSETS/$n" "$CONF_DIR/calico-tls/$n" "$mode"
    INSTALLED+=("$(abspath "$CONF_DIR/calico-tls/$n")")
  done
fi
# The conflist last: runtimes pick it up as soon as it appears, so the binaries must be there.
install_file "$WORK/conflist" "$CONFLIST" "$CONF_MODE"
INSTALLED+=("$(abspath "$CONFLIST")")
if [ -n "$OLD_CONF_NAME" ] && [ "$OLD_CONF_NAME" != "$CONF_NAME" ] && [ -e "$CONF_DIR/$OLD_CONF_NAME" ]; then
  rm -f -- "$CONF_DIR/$OLD_CONF_NAME"
  unset "RECORDED[$(abspath "$CONF_DIR/$OLD_CONF_NAME")]"
  CHANGED=1
  say "removed $CONF_DIR/$OLD_CONF_NAME (CNI_OLD_CONF_NAME)"
fi
save_manifest

if [ "$CHANGED" = 1 ]; then say "installed network into $CONFLIST"; else say "already installed, nothing changed"; fi

# ---- after installing: Calico's SLEEP ----------------------------------------------------------
if [ "$SLEEP_AFTER" = 1 ]; then
  if [ "$NEED_KUBECONFIG" = 1 ]; then
    watch_token "${TOKEN_EXP:-$(($(date +%s) + 1200))}"
  fi
  log "done; sleeping (SLEEP=true)"
  stop_on_signal
  while :; do
    sleep 3600 &
    SLEEP_PID=$!
    wait "$SLEEP_PID" || true
  done
fi
