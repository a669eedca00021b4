#!/usr/bin/env python3
"""Drive calico (calico-cni + calico-ipam) ADD/DEL in a node netns against the etcd cluster of
scripts/etcd-testenv and count, from the members' own metrics, the etcd requests each operation
made.

Usage: etcd.py NODE_NETNS BIN_DIR CONF ETCD_ENV_FILE POD_PREFIX COUNT
Network namespaces POD_PREFIX0..COUNT must exist (index 0 is the warm-up, the node's first ADD).
ETCD_ENV_FILE is the cluster's DIR/env (ETCD_TESTENV_MEMBERn, the client certificate). A request
is one gRPC call a member answered: `grpc_server_handled_total` (unary) summed over the three
members' /metrics before and after the plugin ran (members forward proposals to the leader over
raft, not gRPC, so nothing is counted twice). Prints one JSON document as kdd.py does.
"""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kdd  # noqa: E402

LINE = re.compile(r'^grpc_server_handled_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def read_env(path):
    env = {}
    for line in open(path):
        k, _, v = line.rstrip("\n").partition("=")
        env[k] = v
    return env


def handled(node, env):
    """(service/method) -> calls handled, summed over the members."""
    total = {}
    for m in range(3):
        url = env[f"ETCD_TESTENV_MEMBER{m}"] + "/metrics"
        out = subprocess.run(
            ["ip", "netns", "exec", node, "curl", "-sS", "--max-time", "5",
             "--cacert", env["ETCD_CA_CERT_FILE"], "--cert", env["ETCD_CERT_FILE"],
             "--key", env["ETCD_KEY_FILE"], url],
            capture_output=True, check=True).stdout.decode()
        for line in out.splitlines():
            mo = LINE.match(line)
            if not mo or 'grpc_type="unary"' not in mo["labels"]:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', mo["labels"]))
            key = f'{labels.get("grpc_service", "?").split(".")[-1]}/{labels.get("grpc_method", "?")}'
            total[key] = total.get(key, 0) + int(float(mo["value"]))
    return total


def requests_between(before, after):
    out = []
    for k in sorted(after):
        out += [k] * (after[k] - before.get(k, 0))
    return out


def main():
    node, bindir, conf_path, env_path, prefix, count = sys.argv[1:7]
    count = int(count)
    conf = open(conf_path, "rb").read()
    env = read_env(env_path)
    cid = lambda i: f"{prefix}c{i}"  # noqa: E731
    phases = {}
    before = handled(node, env)
    t = kdd.op(node, bindir, conf, "ADD", "default", f"{prefix}0", cid(0))
    phases["first_add"] = kdd.summary([t], [requests_between(before, handled(node, env))])
    for verb, name in (("ADD", "add"), ("DEL", "del")):
        samples, reqs = [], []
        for i in range(1, count + 1):
            before = handled(node, env)
            samples.append(kdd.op(node, bindir, conf, verb, "default", f"{prefix}{i}", cid(i)))
            reqs.append(requests_between(before, handled(node, env)))
        phases[name] = kdd.summary(samples, reqs)
    kdd.op(node, bindir, conf, "DEL", "default", f"{prefix}0", cid(0))
    print(json.dumps(phases))


if __name__ == "__main__":
    main()
