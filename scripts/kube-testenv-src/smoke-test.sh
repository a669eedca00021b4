#!/usr/bin/env bash
# End-to-end check of scripts/kube-testenv: up, auth/RBAC, CRD schema, Pods, audit log, down.
# Usage: scripts/kube-testenv-src/smoke-test.sh [DIR]   (default: a fresh mktemp dir; needs curl, python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KT="$ROOT/scripts/kube-testenv"
DIR="${1:-$(mktemp -d /tmp/kube-testenv-smoke.XXXXXX)}"
trap '"$KT" down "$DIR"' EXIT

"$KT" up "$DIR"
set -a; . "$DIR/env"; set +a
S="$KUBE_TESTENV_SERVER"
fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }
# code USER METHOD PATH [JSON-BODY] -> prints HTTP status, body in $DIR/out.json
code() {
  local tok; [[ "$1" == admin ]] && tok="$KUBE_TESTENV_ADMIN_TOKEN" || tok="$KUBE_TESTENV_CNI_TOKEN"
  local args=(-sS -o "$DIR/out.json" -w '%{http_code}' --cacert "$KUBE_TESTENV_CA"
    -H "Authorization: Bearer $tok" -X "$2")
  local ct=application/json; [[ "$2" == PATCH ]] && ct=application/merge-patch+json
  if [[ $# -ge 4 ]]; then args+=(-H "Content-Type: $ct" --data "$4"); fi
  curl "${args[@]}" "$S$3"
}
json() { python3 -c "import json,sys; d=json.load(open('$DIR/out.json')); print(json.dumps($1, separators=(',',':')))"; }
expect() { local got; got="$(code "${@:2}")"; [[ "$got" == "$1" ]] || { cat "$DIR/out.json" >&2; fail "$2 $3 $4: HTTP $got, want $1"; }; }

[[ "$(curl -sS --cacert "$KUBE_TESTENV_CA" --cert "$DIR/admin.crt" --key "$DIR/admin.key" "$S/readyz")" == ok ]] \
  || fail "/readyz with the admin client certificate"
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$KUBE_TESTENV_CA" --cert "$DIR/calico-cni.crt" \
  --key "$DIR/calico-cni.key" "$S/apis/crd.projectcalico.org/v1/ipamblocks")
[[ "$code" == 200 ]] || fail "calico-cni client cert list ipamblocks: $code"

expect 200 cni GET /apis/crd.projectcalico.org/v1/ipamblocks
expect 403 cni GET /api/v1/secrets
expect 403 cni GET /api/v1/namespaces/kube-system/secrets
expect 403 cni GET /api/v1/pods
expect 200 cni GET /apis/crd.projectcalico.org/v1/clusterinformations/default
[[ "$(json "d['spec']['datastoreReady']")" == true ]] || fail "datastoreReady"

blk='{"apiVersion":"crd.projectcalico.org/v1","kind":"IPAMBlock","metadata":{"name":"10-244-0-0-31"},
 "spec":{"cidr":"10.244.0.0/31","affinity":"host:node-a","allocations":[null,0],"unallocated":[0],
 "attributes":[{"handle_id":"h1","secondary":{"node":"node-a"}}],"strictAffinity":false,"notInSchema":1,
 "sequenceNumberForAllocation":{"1":1754042400123456789}}}'
expect 201 cni POST /apis/crd.projectcalico.org/v1/ipamblocks "$blk"
expect 200 cni GET /apis/crd.projectcalico.org/v1/ipamblocks/10-244-0-0-31
[[ "$(json "d['spec']['allocations']")" == '[null,0]' ]] || fail "allocations round trip: $(json "d['spec']")"
[[ "$(json "d['spec']['sequenceNumber']")" == 0 ]] || fail "sequenceNumber default"
[[ "$(json "'notInSchema' in d['spec']")" == false ]] || fail "unknown field not pruned"
grep -q '"1": *1754042400123456789' "$DIR/out.json" || fail "int64 sequence number lost precision"

aff='{"apiVersion":"crd.projectcalico.org/v1","kind":"BlockAffinity","metadata":{"name":"node-a-10-244-0-0-31"},
 "spec":{"state":"confirmed","node":"node-a","type":"host","cidr":"10.244.0.0/31","deleted":false}}'
expect 422 cni POST /apis/crd.projectcalico.org/v1/blockaffinities "$aff"
expect 201 cni POST /apis/crd.projectcalico.org/v1/blockaffinities "${aff/\"deleted\":false/\"deleted\":\"false\"}"

cat >"$DIR/objs.yaml" <<'EOF'
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.0.0/24}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  nodeName: node-a
  containers: [{name: c, image: busybox}]
EOF
"$KT" apply "$DIR" "$DIR/objs.yaml"
expect 200 cni GET /api/v1/nodes/node-a
expect 200 cni GET /api/v1/namespaces/default
expect 200 cni GET /api/v1/namespaces/default/pods/p1
expect 200 cni PATCH /api/v1/namespaces/default/pods/p1/status \
  '{"metadata":{"annotations":{"cni.projectcalico.org/podIP":"10.244.0.1/32"}}}'
expect 403 cni PATCH /api/v1/namespaces/default/pods/p1 '{"metadata":{"labels":{"x":"y"}}}'
"$KT" get "$DIR" /apis/crd.projectcalico.org/v1/ipamblocks -o json | grep -q '"10-244-0-0-31"' || fail "wrapper get"
"$KT" delete "$DIR" /api/v1/namespaces/default/pods/p1 >/dev/null
rc=0; "$KT" get "$DIR" /api/v1/namespaces/default/pods/p1 >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "pod not deleted immediately (get rc=$rc)"

n=$(grep -c '"username":"calico-cni"' "$DIR/audit.log" || true)
(( n >= 10 )) || fail "audit log has $n calico-cni events"
echo "SMOKE OK ($n calico-cni requests in $DIR/audit.log)"
