#!/usr/bin/env python3
"""Drive calico (calico-cni + calico-ipam) ADD/DEL in a node netns against a kube-apiserver and
count, from the apiserver's audit log, the requests each operation made.

Usage: kdd.py NODE_NETNS BIN_DIR CONF AUDIT_LOG NAMESPACE POD_PREFIX COUNT
Pods POD_PREFIX0..COUNT (COUNT+1 of them: index 0 is the warm-up, the node's first ADD) must
exist as Pod objects in NAMESPACE and as network namespaces named like the pods. Prints one JSON
document: per phase (first ADD, steady ADD, DEL) latency percentiles (whole process, ms) and
requests per operation (min/median/max/mean, and the verbs of a median one).
The audit log is written in blocking mode, so every request of an operation is on disk when the
plugin exits.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import audit


def audit_lines(path):
    return audit.lines(path)


def requests_since(path, mark):
    out = []
    for e in audit.events_since(path, mark):
        agent = e.get("userAgent", "").split("/")[0]
        out.append(f'{agent}: {e.get("verb")} {e.get("requestURI", "").split("?")[0]} '
                   f'{e.get("responseStatus", {}).get("code")}')
    return out


def op(node, bindir, conf, verb, ns, pod, cid):
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": bindir,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}",
    }
    t0 = time.perf_counter_ns()
    p = subprocess.run(["ip", "netns", "exec", node, f"{bindir}/calico"], input=conf, env=env,
                       capture_output=True)
    ms = (time.perf_counter_ns() - t0) / 1e6
    if p.returncode != 0:
        sys.stderr.write(f"{verb} {pod} failed: {p.stdout.decode()} {p.stderr.decode()}\n")
        sys.exit(1)
    return ms


def summary(samples, reqs):
    counts = [len(r) for r in reqs]
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) > 1 else [samples[0]] * 9
    med = sorted(range(len(counts)), key=lambda i: counts[i])[len(counts) // 2]
    return {
        "n": len(samples),
        "latency_ms": {"median": round(statistics.median(samples), 1), "p10": round(q[0], 1),
                       "p90": round(q[-1], 1)},
        "requests": {"min": min(counts), "median": statistics.median(counts), "max": max(counts),
                     "mean": round(statistics.fmean(counts), 2)},
        "median_op": reqs[med],
    }


def main():
    node, bindir, conf_path, audit, ns, prefix, count = sys.argv[1:8]
    count = int(count)
    conf = open(conf_path, "rb").read()
    cid = lambda i: f"{prefix}c{i}"  # noqa: E731
    phases = {}
    mark = audit_lines(audit)
    t = op(node, bindir, conf, "ADD", ns, f"{prefix}0", cid(0))
    phases["first_add"] = summary([t], [requests_since(audit, mark)])
    for verb, name in (("ADD", "add"), ("DEL", "del")):
        samples, reqs = [], []
        for i in range(1, count + 1):
            mark = audit_lines(audit)
            samples.append(op(node, bindir, conf, verb, ns, f"{prefix}{i}", cid(i)))
            reqs.append(requests_since(audit, mark))
        phases[name] = summary(samples, reqs)
    op(node, bindir, conf, "DEL", ns, f"{prefix}0", cid(0))
    print(json.dumps(phases))


if __name__ == "__main__":
    main()
