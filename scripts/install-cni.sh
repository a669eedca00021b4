#!/usr/bin/env bash
# install-cni.sh: what Calico's install-cni does, for our binaries.
#
# Copies the CNI plugin (installed as `calico`) and `calico-ipam` into a CNI bin dir and writes the
# network configuration list (and, for the kubernetes datastore, a kubeconfig built from the pod's
# service-account token) into a CNI conf dir. Runs on a host directly, or as the init container of
# calico-cni/manifests/install/daemonset.yaml (host dirs mounted under /host).
#
# Idempotent: files whose content is already right are left alone (same inode, same mtime); every
# file that changes is written to a temporary file in its target directory and renamed over the
# old one, so a runtime never sees (or executes) a half-written file. What was installed is
# recorded in <conf-dir>/calico-install.manifest; --uninstall removes exactly those paths (and the
# directories this script created, once they are empty), then the manifest.
#
# usage: install-cni.sh [flags]            (see --help)
set -euo pipefail

PROG=${0##*/}
REPO=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { [ "$QUIET" = 1 ] || echo "$PROG: $*"; }

usage() {
  cat <<EOF
usage: $PROG [flags]

  --from DIR               where the built binaries are: DIR/calico-cni (or DIR/calico) and
                           DIR/calico-ipam (default: where scripts/build-release.sh
                           writes them, $REPO/target/x86_64-unknown-linux-gnu/release)
  --bin-dir DIR            CNI bin dir to install into (default /opt/cni/bin)
  --conf-dir DIR           CNI conf dir to write into (default /etc/cni/net.d)
  --host-conf-dir DIR      the conf dir as the host sees it, for paths written into the conflist
                           (default: --conf-dir; the DaemonSet writes /host/etc/cni/net.d)
  --conf-name FILE         conflist file name (default 10-calico.conflist)
  --network-name NAME      network name (default k8s-pod-network)
  --cni-version V          conflist cniVersion (default 1.0.0)
  --datastore-type T       local | kubernetes (default local)
  --datastore-path DIR     local datastore directory (default /var/lib/calico/ipam)
  --nodename NAME          node name (default \$NODENAME, \$KUBERNETES_NODE_NAME, else hostname)
  --kubeconfig FILE        where to write the kubeconfig for the kubernetes datastore
                           (default <conf-dir>/calico-kubeconfig)
  --serviceaccount-dir DIR token and ca.crt for the kubeconfig
                           (default /var/run/secrets/kubernetes.io/serviceaccount)
  --k8s-service-host H     API server host (default \$KUBERNETES_SERVICE_HOST)
  --k8s-service-port P     API server port (default \$KUBERNETES_SERVICE_PORT, else 443)
  --skip-tls-verify        kubeconfig without the CA (insecure-skip-tls-verify)
  --log-file-path FILE     plugin log file (default /var/log/calico/cni/cni.log)
  --log-level L            plugin log level (default info)
  --ipam-lock-file FILE    host-wide IPAM lock (default: the plugin's, /var/run/calico/ipam.lock)
  --mtu N                  veth MTU (default: not set, the plugin's default)
  --ipv4-pool CIDR         restrict IPv4 assignment to this pool (repeatable)
  --ipv6-pool CIDR         restrict IPv6 assignment to this pool (repeatable)
  --capabilities JSON      "capabilities" object of the calico plugin, e.g. '{"portMappings":true}'
  --chain JSON             a plugin object appended after calico in the list (repeatable),
                           e.g. '{"type":"tuning","sysctl":{"net.core.somaxconn":"512"}}'
  --config-template FILE   write this conflist instead of the built-in one, substituting
                           __CNI_VERSION__ __NETWORK_NAME__ __KUBERNETES_NODE_NAME__
                           __DATASTORE_TYPE__ __DATASTORE_PATH__ __KUBECONFIG_FILEPATH__
                           __LOG_FILE_PATH__ __LOG_LEVEL__ __CNI_MTU__ (also: env CNI_NETWORK_CONFIG
                           holding the template text, as Calico's installer reads it)
  --no-verify              do not run the plugin's VERSION command before installing
  --uninstall              remove what a previous install into these dirs put there
  -q, --quiet              print only errors
EOF
}

FROM=${CARGO_TARGET_DIR:-$REPO/target}/x86_64-unknown-linux-gnu/release
BIN_DIR=/opt/cni/bin
CONF_DIR=/etc/cni/net.d
HOST_CONF_DIR=
CONF_NAME=10-calico.conflist
NETWORK_NAME=k8s-pod-network
CNI_VERSION=1.0.0
DATASTORE_TYPE=local
DATASTORE_PATH=/var/lib/calico/ipam
NODENAME_ARG=
KUBECONFIG_OUT=
SA_DIR=/var/run/secrets/kubernetes.io/serviceaccount
K8S_HOST=${KUBERNETES_SERVICE_HOST:-}
K8S_PORT=${KUBERNETES_SERVICE_PORT:-443}
SKIP_TLS_VERIFY=0
LOG_FILE_PATH=/var/log/calico/cni/cni.log
LOG_LEVEL=info
IPAM_LOCK_FILE=
MTU=
IPV4_POOLS=()
IPV6_POOLS=()
CAPABILITIES=
CHAIN=()
TEMPLATE_FILE=
VERIFY=1
UNINSTALL=0
QUIET=0

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
  esac
  case $1 in
    --from) need "$@"; FROM=$2; shift ;;
    --bin-dir) need "$@"; BIN_DIR=$2; shift ;;
    --conf-dir) need "$@"; CONF_DIR=$2; shift ;;
    --host-conf-dir) need "$@"; HOST_CONF_DIR=$2; shift ;;
    --conf-name) need "$@"; CONF_NAME=$2; shift ;;
    --network-name) need "$@"; NETWORK_NAME=$2; shift ;;
    --cni-version) need "$@"; CNI_VERSION=$2; shift ;;
    --datastore-type) need "$@"; DATASTORE_TYPE=$2; shift ;;
    --datastore-path) need "$@"; DATASTORE_PATH=$2; shift ;;
    --nodename) need "$@"; NODENAME_ARG=$2; shift ;;
    --kubeconfig) need "$@"; KUBECONFIG_OUT=$2; shift ;;
    --serviceaccount-dir) need "$@"; SA_DIR=$2; shift ;;
    --k8s-service-host) need "$@"; K8S_HOST=$2; shift ;;
    --k8s-service-port) need "$@"; K8S_PORT=$2; shift ;;
    --skip-tls-verify) SKIP_TLS_VERIFY=1 ;;
    --log-file-path) need "$@"; LOG_FILE_PATH=$2; shift ;;
    --log-level) need "$@"; LOG_LEVEL=$2; shift ;;
    --ipam-lock-file) need "$@"; IPAM_LOCK_FILE=$2; shift ;;
    --mtu) need "$@"; MTU=$2; shift ;;
    --ipv4-pool) need "$@"; IPV4_POOLS+=("$2"); shift ;;
    --ipv6-pool) need "$@"; IPV6_POOLS+=("$2"); shift ;;
    --capabilities) need "$@"; CAPABILITIES=$2; shift ;;
    --chain) need "$@"; CHAIN+=("$2"); shift ;;
    --config-template) need "$@"; TEMPLATE_FILE=$2; shift ;;
    --no-verify) VERIFY=0 ;;
    --uninstall) UNINSTALL=1 ;;
    -q|--quiet) QUIET=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

case $DATASTORE_TYPE in local|kubernetes) ;; *) die "--datastore-type must be local or kubernetes, not '$DATASTORE_TYPE'" ;; esac
[[ $CNI_VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--cni-version '$CNI_VERSION' is not a version"
[[ $NETWORK_NAME =~ ^[a-zA-Z0-9_.-]+$ ]] || die "--network-name '$NETWORK_NAME' is not a valid network name"
[[ $CONF_NAME == */* || $CONF_NAME != *.conflist ]] && die "--conf-name must be a file name ending in .conflist"
[ -z "$MTU" ] || [[ $MTU =~ ^[0-9]+$ ]] || die "--mtu must be a number"
HOST_CONF_DIR=${HOST_CONF_DIR:-$CONF_DIR}
KUBECONFIG_OUT=${KUBECONFIG_OUT:-$CONF_DIR/calico-kubeconfig}
CONFLIST=$CONF_DIR/$CONF_NAME
MANIFEST=$CONF_DIR/calico-install.manifest

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

# ---- install -----------------------------------------------------------------------------------
json_str() { # a JSON string literal
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}
json_list() { # JSON list of strings
  local out='' x
  for x in "$@"; do out+="${out:+, }$(json_str "$x")"; done
  printf '[%s]' "$out"
}
valid_json() { # best effort: validate with jq or python3 when one is there
  if command -v jq >/dev/null 2>&1; then jq -e . >/dev/null 2>&1 <<<"$1"
  elif command -v python3 >/dev/null 2>&1; then python3 -c 'import json,sys; json.load(sys.stdin)' >/dev/null 2>&1 <<<"$1"
  else return 0; fi
}

nodename() {
  if [ -n "$NODENAME_ARG" ]; then echo "$NODENAME_ARG"
  elif [ -n "${NODENAME:-}" ]; then echo "$NODENAME"
  elif [ -n "${KUBERNETES_NODE_NAME:-}" ]; then echo "$KUBERNETES_NODE_NAME"
  else tr '[:upper:]' '[:lower:]' </proc/sys/kernel/hostname | tr -d '[:space:]'; fi
}

# Path of the kubeconfig as the plugin on the host will see it.
kubeconfig_host_path() {
  local k
  k=$(abspath "$KUBECONFIG_OUT")
  local c
  c=$(abspath "$CONF_DIR")
  if [[ $k == "$c"/* ]]; then echo "${HOST_CONF_DIR%/}/${k#"$c"/}"; else echo "$k"; fi
}

# The conflist text.
render_conflist() {
  local node kc template
  node=$(nodename)
  [ -n "$node" ] || die "no node name: pass --nodename or set NODENAME"
  kc=$(kubeconfig_host_path)
  if [ -n "$TEMPLATE_FILE" ] || [ -n "${CNI_NETWORK_CONFIG:-}" ]; then
    if [ -n "$TEMPLATE_FILE" ]; then
      [ -r "$TEMPLATE_FILE" ] || die "cannot read --config-template $TEMPLATE_FILE"
      template=$(cat "$TEMPLATE_FILE")
    else
      template=$CNI_NETWORK_CONFIG
    fi
    # Placeholders stand inside JSON strings in Calico's templates: substitute escaped text.
    esc() { local s; s=$(json_str "$1"); s=${s#\"}; echo "${s%\"}"; }
    template=${template//__CNI_VERSION__/$(esc "$CNI_VERSION")}
    template=${template//__NETWORK_NAME__/$(esc "$NETWORK_NAME")}
    template=${template//__KUBERNETES_NODE_NAME__/$(esc "$node")}
    template=${template//__DATASTORE_TYPE__/$(esc "$DATASTORE_TYPE")}
    template=${template//__DATASTORE_PATH__/$(esc "$DATASTORE_PATH")}
    template=${template//__KUBECONFIG_FILEPATH__/$(esc "$kc")}
    template=${template//__LOG_FILE_PATH__/$(esc "$LOG_FILE_PATH")}
    template=${template//__LOG_LEVEL__/$(esc "$LOG_LEVEL")}
    template=${template//__CNI_MTU__/${MTU:-1500}}
    printf '%s\n' "$template"
    return
  fi
  local p="      "
  {
    echo "{"
    echo "  \"name\": $(json_str "$NETWORK_NAME"),"
    echo "  \"cniVersion\": $(json_str "$CNI_VERSION"),"
    echo "  \"plugins\": ["
    echo "    {"
    echo "$p\"type\": \"calico\","
    echo "$p\"log_level\": $(json_str "$LOG_LEVEL"),"
    echo "$p\"log_file_path\": $(json_str "$LOG_FILE_PATH"),"
    echo "$p\"datastore_type\": $(json_str "$DATASTORE_TYPE"),"
    [ "$DATASTORE_TYPE" = local ] && echo "$p\"datastore_path\": $(json_str "$DATASTORE_PATH"),"
    echo "$p\"nodename\": $(json_str "$node"),"
    [ -n "$IPAM_LOCK_FILE" ] && echo "$p\"ipam_lock_file\": $(json_str "$IPAM_LOCK_FILE"),"
    [ -n "$MTU" ] && echo "$p\"mtu\": $MTU,"
    [ -n "$CAPABILITIES" ] && echo "$p\"capabilities\": $CAPABILITIES,"
    if [ "$DATASTORE_TYPE" = kubernetes ]; then
      echo "$p\"policy\": {\"type\": \"k8s\"},"
      echo "$p\"kubernetes\": {\"kubeconfig\": $(json_str "$kc")},"
    fi
    echo "$p\"ipam\": {"
    echo "$p  \"type\": \"calico-ipam\","
    [ ${#IPV4_POOLS[@]} -gt 0 ] && echo "$p  \"ipv4_pools\": $(json_list "${IPV4_POOLS[@]}"),"
    [ ${#IPV6_POOLS[@]} -gt 0 ] && echo "$p  \"ipv6_pools\": $(json_list "${IPV6_POOLS[@]}"),"
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
}

render_kubeconfig() {
  local token ca host server
  [ -n "$K8S_HOST" ] || die "kubernetes datastore: no API server host (KUBERNETES_SERVICE_HOST unset; pass --k8s-service-host)"
  [ -r "$SA_DIR/token" ] || die "kubernetes datastore: cannot read the service-account token $SA_DIR/token (pass --serviceaccount-dir)"
  token=$(tr -d '\n' <"$SA_DIR/token")
  [ -n "$token" ] || die "kubernetes datastore: $SA_DIR/token is empty"
  host=$K8S_HOST
  [[ $host == *:* && $host != \[* ]] && host="[$host]" # IPv6 literal
  server="https://$host:$K8S_PORT"
  echo "# Kubeconfig for the Calico CNI plugin, written by install-cni.sh from the service account."
  echo "apiVersion: v1"
  echo "kind: Config"
  echo "clusters:"
  echo "- name: local"
  echo "  cluster:"
  echo "    server: $server"
  if [ "$SKIP_TLS_VERIFY" = 1 ]; then
    echo "    insecure-skip-tls-verify: true"
  else
    [ -r "$SA_DIR/ca.crt" ] || die "kubernetes datastore: cannot read $SA_DIR/ca.crt (pass --serviceaccount-dir or --skip-tls-verify)"
    ca=$(base64 -w0 <"$SA_DIR/ca.crt")
    echo "    certificate-authority-data: \"$ca\""
  fi
  echo "users:"
  echo "- name: calico"
  echo "  user:"
  echo "    token: \"$token\""
  echo "contexts:"
  echo "- name: calico-context"
  echo "  context:"
  echo "    cluster: local"
  echo "    user: calico"
  echo "current-context: calico-context"
}

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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/install-cni.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT

# 1. The binaries.
CNI_SRC=
for c in "$FROM/calico-cni" "$FROM/calico"; do
  if [ -f "$c" ]; then CNI_SRC=$c; break; fi
done
[ -n "$CNI_SRC" ] || die "no CNI plugin binary: neither $FROM/calico-cni nor $FROM/calico (build them with scripts/build-release.sh, or pass --from DIR)"
IPAM_SRC=$FROM/calico-ipam
[ -f "$IPAM_SRC" ] || die "no IPAM plugin binary $IPAM_SRC (build them with scripts/build-release.sh, or pass --from DIR)"
if [ "$VERIFY" = 1 ]; then
  for b in "$CNI_SRC" "$IPAM_SRC"; do
    out=$(CNI_COMMAND=VERSION "$b" <<<"{\"cniVersion\":\"$CNI_VERSION\"}" 2>"$WORK/verify.err") ||
      die "$b VERSION failed: $out $(cat "$WORK/verify.err")"
    [[ $out == *supportedVersions* && $out == *"\"$CNI_VERSION\""* ]] ||
      die "$b does not support cniVersion $CNI_VERSION: VERSION said: $out"
  done
fi

# 2. The configuration (rendered before anything is written, so a bad flag changes nothing).
render_conflist >"$WORK/conflist"
valid_json "$(cat "$WORK/conflist")" || die "the network configuration is not valid JSON:
$(cat "$WORK/conflist")"
if [ "$DATASTORE_TYPE" = kubernetes ]; then
  render_kubeconfig >"$WORK/kubeconfig"
fi

load_manifest
ensure_dir "$BIN_DIR"
ensure_dir "$CONF_DIR"
install_file "$CNI_SRC" "$BIN_DIR/calico" 755
install_file "$IPAM_SRC" "$BIN_DIR/calico-ipam" 755
INSTALLED=("$(abspath "$BIN_DIR/calico")" "$(abspath "$BIN_DIR/calico-ipam")")
if [ "$DATASTORE_TYPE" = kubernetes ]; then
  ensure_dir "$(dirname "$KUBECONFIG_OUT")"
  install_file "$WORK/kubeconfig" "$KUBECONFIG_OUT" 600
  INSTALLED+=("$(abspath "$KUBECONFIG_OUT")")
fi
# The conflist last: runtimes pick it up as soon as it appears, so the binaries must be there.
install_file "$WORK/conflist" "$CONFLIST" 644
INSTALLED+=("$(abspath "$CONFLIST")")

for f in "${INSTALLED[@]}"; do RECORDED[$f]=1; done
for d in "${CREATED_DIRS[@]}"; do RECORDED["d $d"]=1; done
for k in "${!RECORDED[@]}"; do echo "$k"; done | LC_ALL=C sort >"$WORK/manifest"
install_file_quiet() { local QUIET=1; install_file "$@"; }
install_file_quiet "$WORK/manifest" "$MANIFEST" 644

if [ "$CHANGED" = 1 ]; then say "installed network $NETWORK_NAME into $CONFLIST"; else say "already installed, nothing changed"; fi
