#!/usr/bin/env bash
# The installer and our plugins under real CNI clients: scripts/test-install-cni.sh, then cnitool
# (libcni v1.3.0), containerd 1.6 CRI (via crictl) and podman 4.3 (CNI backend), each in throwaway
# network namespaces (scripts/test-cnitool.sh, test-containerd.sh, test-podman.sh). Installs what
# they need (Debian packages; cnitool and crictl with go install into
# ${XDG_CACHE_HOME:-~/.cache}/calico-rs/bin, once), builds our binaries if none are given, runs
# the tests, and ends with the line `N passed, M failed`. Exits non-zero if any test failed.
#
# usage: scripts/test-runtimes.sh [--from DIR] [--reference | --all] [TEST...]
#   --from DIR     our built binaries (calico-cni, calico-ipam); default: target/debug (built here
#                  with cargo build --bins if missing), else target/release
#   --reference    run the tests against Debian's ptp + host-local instead of ours (harness check)
#   --all          run each test against the reference first, then against ours
#   TEST           install (scripts/test-install-cni.sh), cnitool (cniVersion 1.0.0),
#                  cnitool-0.4.0, cnitool-0.3.1, containerd (1.0.0), containerd-0.3.1, podman
#                  (default: all; install runs once, against our binaries)
# Root; Debian 12.
set -euo pipefail
RT_NAME=test-runtimes
source "$(dirname "$0")/lib-runtimes.sh"

FROM=
MODES=(ours)
TESTS=()
while [ $# -gt 0 ]; do
  case $1 in
    --from) FROM=$2; shift ;;
    --reference) MODES=(reference) ;;
    --all) MODES=(reference ours) ;;
    install|cnitool|cnitool-0.4.0|cnitool-0.3.1|containerd|containerd-0.3.1|podman) TESTS+=("$1") ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "$RT_NAME: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#TESTS[@]} -gt 0 ] || TESTS=(install cnitool cnitool-0.4.0 cnitool-0.3.1 containerd containerd-0.3.1 podman)

rt_require_root
step "installing what the tests need"
ensure_apt containernetworking-plugins containerd runc podman conmon busybox-static catatonit gcc \
  libc6-dev python3 jq iproute2 iputils-ping iptables util-linux
ensure_go_tool cnitool "github.com/containernetworking/cni/cnitool@$CNITOOL_VERSION" >/dev/null
ensure_go_tool crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" >/dev/null

if [[ " ${MODES[*]} " == *" ours "* ]]; then
  if [ -z "$FROM" ]; then
    TARGET=${CARGO_TARGET_DIR:-$RT_REPO/target}
    if [ ! -x "$TARGET/debug/calico-cni" ] || [ ! -x "$TARGET/debug/calico-ipam" ]; then
      step "building our binaries (cargo build --bins)"
      (cd "$RT_REPO" && PATH="$HOME/.cargo/bin:$PATH" cargo build --bins -q) || fail "cargo build --bins failed"
    fi
  fi
  FROM=$(rt_binaries_dir "$FROM")
  step "our binaries: $FROM"
fi

passed=0 failed=0 failures=()
for mode in "${MODES[@]}"; do
  for t in "${TESTS[@]}"; do
    args=()
    if [ "$t" = install ]; then
      # The installer's own test: once, with our binaries (stand-ins in reference-only runs).
      [ "$mode" = reference ] && [ ${#MODES[@]} -gt 1 ] && continue
      [ "$mode" = ours ] && args=(--from "$FROM")
    elif [ "$mode" = reference ]; then
      args=(--reference)
    else
      args=(--from "$FROM")
    fi
    echo
    echo "======== $t ($mode)"
    start=$(rt_now)
    script=$RT_REPO/scripts/test-$t.sh
    case $t in
      install) script=$RT_REPO/scripts/test-install-cni.sh ;;
      *-[0-9]*) script=$RT_REPO/scripts/test-${t%%-*}.sh; args+=(--cni-version "${t#*-}") ;;
    esac
    if timeout --kill-after=15 600 "$script" "${args[@]}"; then
      rc=0
    else
      rc=$?
    fi
    took=$(awk -v a="$start" -v b="$(rt_now)" 'BEGIN { printf "%.1f", b - a }')
    if [ $rc = 0 ]; then
      passed=$((passed + 1))
      echo "======== PASS $t ($mode) ${took}s"
    else
      failed=$((failed + 1))
      failures+=("$t ($mode)")
      echo "======== FAIL $t ($mode) ${took}s, exit $rc"
    fi
  done
done

echo
[ $failed = 0 ] || echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
