#!/usr/bin/env bash
# A real kube-apiserver (+ embedded etcd) on 127.0.0.1 for tests. See scripts/kube-testenv/README.md.
#
#   scripts/kube-testenv.sh up DIR            build (cached) + start + install CRDs/RBAC + ClusterInformation
#   scripts/kube-testenv.sh down DIR          stop the server started in DIR (by its pid) and remove DIR
#   scripts/kube-testenv.sh apply DIR FILE... create-or-update objects from YAML/JSON files (as admin)
#   scripts/kube-testenv.sh get DIR PATH [NAME]        raw GET, JSON on stdout (exit 2 on 404)
#   scripts/kube-testenv.sh delete DIR PATH [NAME]     raw DELETE (exit 2 on 404)
#   scripts/kube-testenv.sh build             only build the launcher; prints its path
#
# Env: KUBE_TESTENV_TIMEOUT (readiness timeout, s, default 180), KUBE_TESTENV_PORT (apiserver port,
# default: a free one), KUBE_TESTENV_V (apiserver log verbosity, default 0), XDG_CACHE_HOME.
# get/delete/apply use DIR/kubeconfig (admin); set KUBE_TESTENV_AS_CNI=1 to use DIR/kubeconfig-cni.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/scripts/kube-testenv"
MANIFESTS="$ROOT/calico-cni/manifests"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/calico-rs"

die() { echo "kube-testenv: $*" >&2; exit 1; }

# Prints the path of the launcher binary, building it first if this source hash has no binary yet.
build() {
  local hash bin kver
  hash="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-16)"
  bin="$CACHE/kube-testenv-$hash"
  if [[ -x "$bin" ]]; then echo "$bin"; return; fi
  mkdir -p "$CACHE"
  command -v go >/dev/null || die "go not found (needed once to build the launcher)"
  kver="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$SRC/go.mod")"
  [[ -n "$kver" ]] || die "cannot find k8s.io/kubernetes version in $SRC/go.mod"
  local minor="${kver#v1.}"; minor="${minor%%.*}"
  (
    flock 9
    if [[ -x "$bin" ]]; then exit 0; fi
    echo "kube-testenv: building launcher ($kver) -> $bin (first build takes several minutes)" >&2
    local start=$SECONDS
    cd "$SRC"
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -p 2 -trimpath \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
      -o "$bin.tmp.$$" . >&2
    mv -f "$bin.tmp.$$" "$bin"
    # keep the three newest launchers (~110 MB each)
    ls -1t "$CACHE"/kube-testenv-???????????????? 2>/dev/null | tail -n +4 | xargs -r rm -f
    echo "kube-testenv: built in $((SECONDS - start))s" >&2
  ) 9>"$CACHE/kube-testenv.lock"
  echo "$bin"
}

pid_alive() { [[ -f "$1/pid" ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

log_tail() {
  echo "---- last 30 lines of $1/apiserver.log ----" >&2
  tail -n 30 "$1/apiserver.log" >&2 || true
  echo "---- errors in $1/apiserver.log ----" >&2
  grep -E '^(Error|E[0-9]{4}|F[0-9]{4})|kube-testenv:' "$1/apiserver.log" | grep -v 'manifest file is empty' | tail -n 10 >&2 || true
  echo "----" >&2
}

kubeconfig_for() {
  if [[ "${KUBE_TESTENV_AS_CNI:-0}" == 1 ]]; then echo "$1/kubeconfig-cni"; else echo "$1/kubeconfig"; fi
}

cmd_up() {
  local dir="${1:?usage: up DIR}"
  local bin timeout="${KUBE_TESTENV_TIMEOUT:-180}"
  bin="$(build)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if pid_alive "$dir"; then die "already running in $dir (pid $(cat "$dir/pid"))"; fi
  rm -f "$dir/pid" "$dir/kubeconfig" "$dir/kubeconfig-cni" "$dir/env"

  local start=$SECONDS
  # setsid: own session/process group, so it survives this shell and can be stopped by its pid.
  setsid "$bin" serve --dir "$dir" --port "${KUBE_TESTENV_PORT:-0}" --v "${KUBE_TESTENV_V:-0}" \
    </dev/null >"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/pid"

  while :; do
    if ! pid_alive "$dir"; then
      log_tail "$dir"; die "launcher exited before becoming ready (see $dir/apiserver.log)"
    fi
    if [[ -f "$dir/kubeconfig" ]] && "$bin" get --kubeconfig "$dir/kubeconfig" /readyz >/dev/null 2>&1; then
      break
    fi
    if (( SECONDS - start > timeout )); then
      log_tail "$dir"
      kill "$(cat "$dir/pid")" 2>/dev/null || true
      die "not ready after ${timeout}s; stopped pid $(cat "$dir/pid")"
    fi
    sleep 0.5
  done
  echo "kube-testenv: /readyz ok after $((SECONDS - start))s" >&2
  # The bootstrap controller creates default/kube-system shortly after start-up.
  for ns in default kube-system; do
    until "$bin" get --kubeconfig "$dir/kubeconfig" "/api/v1/namespaces/$ns" >/dev/null 2>&1; do
      (( SECONDS - start > timeout )) && { log_tail "$dir"; die "namespace $ns never appeared"; }
      sleep 0.2
    done
  done

  "$bin" apply --kubeconfig "$dir/kubeconfig" "$MANIFESTS"/crds/*.yaml "$MANIFESTS/rbac.yaml" >&2
  cat >"$dir/clusterinformation.yaml" <<EOF
apiVersion: crd.projectcalico.org/v1
kind: ClusterInformation
metadata:
  name: default
spec:
  calicoVersion: kube-testenv
  clusterGUID: "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  clusterType: k8s,kdd
  datastoreReady: true
  variant: Calico
EOF
  "$bin" apply --kubeconfig "$dir/kubeconfig" -f "$dir/clusterinformation.yaml" >&2
  echo "KUBE_TESTENV_BIN=$bin" >>"$dir/env"
  echo "KUBE_TESTENV_PID=$(cat "$dir/pid")" >>"$dir/env"
  echo "kube-testenv: up in $((SECONDS - start))s: $(grep ^KUBE_TESTENV_SERVER= "$dir/env" | cut -d= -f2-)" >&2
  echo "kube-testenv: KUBECONFIG=$dir/kubeconfig (admin), $dir/kubeconfig-cni (calico-cni), audit log $dir/audit.log" >&2
}

cmd_down() {
  local dir="${1:?usage: down DIR}"
  [[ -d "$dir" ]] || { echo "kube-testenv: $dir does not exist" >&2; return 0; }
  if [[ -f "$dir/pid" ]]; then
    local pid; pid="$(cat "$dir/pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "kube-testenv: pid $pid still alive after 30s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
      fi
    fi
  fi
  rm -rf "$dir"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  build) build ;;
  apply)
    dir="${1:?usage: apply DIR FILE...}"; shift
    (( $# > 0 )) || die "usage: apply DIR FILE..."
    args=(); for f in "$@"; do args+=(-f "$f"); done
    exec "$(build)" apply --kubeconfig "$(kubeconfig_for "$dir")" "${args[@]}" ;;
  get|delete)
    dir="${1:?usage: $cmd DIR PATH [NAME]}"; shift
    exec "$(build)" "$cmd" --kubeconfig "$(kubeconfig_for "$dir")" "$@" ;;
  *) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 64 ;;
esac
