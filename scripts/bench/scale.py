#!/usr/bin/env python3
"""Cluster-scale cost of an IPAM plugin against one real kube-apiserver (issue 17).

Usage: scale.py KUBE_DIR IPAM NODES PODS_PER_NODE CONCURRENCY

KUBE_DIR is a running scripts/kube-testenv (its audit log and pid are read); IPAM is any binary
that speaks Calico's IPAM netconf (calico-ipam by default). Simulated nodes are the IPAM plugin
only: one Node object, one lock file and cache directory each, no dataplane. Phases:

  first   every node's first dual-stack ADD (claims a block per family), CONCURRENCY at a time
  steady  PODS_PER_NODE - 1 more ADDs per node, nodes interleaved, CONCURRENCY at a time
  del     every pod's DEL, CONCURRENCY at a time
  burst   one fresh node's 64 concurrent ADDs (they take turns on its host lock)

Per phase: API requests (from the audit log, user calico-cni) in all and per pod, by verb and
resource, 409 conflicts, latency p50/p99 of the plugin process, wall time, and the apiserver's
CPU seconds (utime + stime of the kube-testenv process, which embeds etcd) and its peak RSS.
"""
import collections
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time

import audit

KUBE, IPAM = sys.argv[1], sys.argv[2]
NODES, PODS, CONC = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
AUDIT = os.path.join(KUBE, "audit.log")
PID = int(open(os.path.join(KUBE, "pid")).read().split()[0])
KUBECONFIG = os.path.join(KUBE, "kubeconfig-cni")
# Under the testenv's directory, which `kube-testenv down` removes.
WORK = os.path.join(KUBE, "bench-nodes")
os.makedirs(WORK, exist_ok=True)
RUN = f"s{os.getpid()}"
V4, V6 = "10.128.0.0/10", "fd00:5ca1::/56"


def apiserver():
    with open(f"/proc/{PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = 0
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) // 1024
    return cpu, hwm


def audit_lines():
    return audit.lines(AUDIT)


def requests_since(mark):
    return audit.events_since(AUDIT, mark)


def resource(e):
    o = e.get("objectRef") or {}
    sub = "/" + o["subresource"] if o.get("subresource") else ""
    return f"{e['verb']} {o.get('resource', e['requestURI'])}{sub}"


def conf(node):
    d = os.path.join(WORK, node)
    os.makedirs(d, exist_ok=True)
    return json.dumps({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
        "datastore_type": "kubernetes", "kubernetes": {"kubeconfig": KUBECONFIG},
        "nodename": node, "ipam_lock_file": os.path.join(d, "ipam.lock"),
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"},
    })


CONFS = {}


def run(cmd, node, pod):
    env = dict(os.environ, CNI_COMMAND=cmd, CNI_CONTAINERID=f"{RUN}-{node}-{pod}",
               CNI_NETNS="/var/run/netns/none", CNI_IFNAME="eth0", CNI_PATH="/nonexistent",
               CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={node}-{pod}")
    t = time.monotonic()
    p = subprocess.run([IPAM], input=CONFS[node].encode(), env=env, capture_output=True)
    ms = (time.monotonic() - t) * 1000
    if p.returncode != 0:
        raise SystemExit(f"{cmd} {node}/{pod} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return ms


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else 0.0


def phase(name, jobs, conc, pods):
    mark = audit_lines()
    cpu0, _ = apiserver()
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(conc) as ex:
        lat = list(ex.map(lambda j: run(*j), jobs))
    wall = time.monotonic() - t
    time.sleep(1.5)  # the audit backend's buffer
    cpu1, hwm = apiserver()
    reqs = requests_since(mark)
    by = collections.Counter(resource(e) for e in reqs)
    conflicts = sum(1 for e in reqs if e.get("responseStatus", {}).get("code") == 409)
    row = {"phase": name, "ops": len(jobs), "pods": pods, "requests": len(reqs),
           "per_pod": round(len(reqs) / max(pods, 1), 2), "conflicts": conflicts,
           "p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
           "wall_s": round(wall, 1), "apiserver_cpu_s": round(cpu1 - cpu0, 1),
           "apiserver_peak_rss_mb": hwm,
           "by_verb_resource": {k: round(v / max(pods, 1), 2) for k, v in sorted(by.items())}}
    print(json.dumps(row), flush=True)
    return row


def main():
    nodes = [f"{RUN}-n{i}" for i in range(NODES)]
    docs = [
        {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
         "metadata": {"name": f"{RUN}-v4"},
         "spec": {"cidr": V4, "blockSize": 26, "nodeSelector": "all()"}},
        {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
         "metadata": {"name": f"{RUN}-v6"},
         "spec": {"cidr": V6, "blockSize": 122, "nodeSelector": "all()"}},
    ] + [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in nodes + [f"{RUN}-burst"]]
    f = os.path.join(WORK, "objects.json")
    with open(f, "w") as out:
        json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, out)
    subprocess.run(["scripts/kube-testenv", "apply", KUBE, f], check=True, stdout=subprocess.DEVNULL)
    for n in nodes + [f"{RUN}-burst"]:
        CONFS[n] = conf(n)
    load = open("/proc/loadavg").read().split()[:3]
    print(json.dumps({"nodes": NODES, "pods_per_node": PODS, "concurrency": CONC,
                      "ipam": IPAM, "loadavg_before": load}), flush=True)
    t = time.monotonic()
    phase("first", [("ADD", n, 0) for n in nodes], CONC, NODES)
    steady = [("ADD", n, p) for p in range(1, PODS) for n in nodes]
    if steady:
        phase("steady", steady, CONC, len(steady))
    dels = [("DEL", n, p) for p in range(PODS) for n in nodes]
    phase("del", dels, CONC, len(dels))
    burst = f"{RUN}-burst"
    phase("burst", [("ADD", burst, p) for p in range(64)], 64, 64)
    phase("burst-del", [("DEL", burst, p) for p in range(64)], CONC, 64)
    print(json.dumps({"total_wall_s": round(time.monotonic() - t, 1),
                      "loadavg_after": open("/proc/loadavg").read().split()[:3]}), flush=True)


main()
