#!/usr/bin/env python3
"""Time whole-process CNI invocations.

Usage: timer.py LABEL COUNT -- ENV=VAL... CMD [&& CMD...]
(stdin for every run comes from $STDIN_FILE, or nothing without it; "{i}" in any argument or ENV
value is replaced by the run's index; commands joined by a lone "&&" run one after the other and
are timed together)
Every run gets CNI_CONTAINERID=<prefix><i> (prefix from $ID_PREFIX) and "{i}" in any ENV value
replaced by its index; prints one JSON line with
the median, p10, p90 and mean in milliseconds. A failing run aborts the benchmark.
"""
import json
import os
import statistics
import subprocess
import sys
import time


def main() -> int:
    label, count = sys.argv[1], int(sys.argv[2])
    rest = sys.argv[sys.argv.index("--") + 1:]
    env = dict(os.environ)
    while rest and "=" in rest[0] and not rest[0].startswith("/"):
        k, v = rest.pop(0).split("=", 1)
        env[k] = v
    templated = {k: v for k, v in env.items() if "{i}" in v}
    stdin = open(os.environ["STDIN_FILE"], "rb").read() if os.environ.get("STDIN_FILE") else b""
    commands, current = [], []
    for word in rest:
        if word == "&&":
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    prefix = os.environ.get("ID_PREFIX", "bench")
    first = int(os.environ.get("ID_START", "0"))
    samples = []
    for i in range(first, first + count):
        for k, v in templated.items():
            env[k] = v.replace("{i}", str(i))
        env["CNI_CONTAINERID"] = f"{prefix}{i}"
        argvs = [[w.replace("{i}", str(i)) for w in c] for c in commands]
        t0 = time.perf_counter_ns()
        for argv in argvs:
            p = subprocess.run(argv, input=stdin, env=env, capture_output=True)
            if p.returncode != 0:
                sys.stderr.write(f"{label}: run {i} failed: {p.stdout.decode()} {p.stderr.decode()}\n")
                return 1
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / 1e6)
    q = statistics.quantiles(samples, n=10)
    print(json.dumps({"label": label, "n": count, "median_ms": round(statistics.median(samples), 3),
                      "p10_ms": round(q[0], 3), "p90_ms": round(q[-1], 3),
                      "mean_ms": round(statistics.fmean(samples), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
