#!/usr/bin/env python3
"""Time whole-process CNI invocations.

Usage: timer.py LABEL COUNT -- ENV=VAL... CMD [&& CMD...]
(stdin for every run comes from $STDIN_FILE, or nothing without it; "{i}" in any argument or ENV
value is replaced by the run's index; commands joined by a lone "&&" run one after the other and
are timed together)
Every run gets CNI_CONTAINERID=<prefix><i> (prefix from $ID_PREFIX) and "{i}" in any ENV value
replaced by its index; prints one JSON line with
the median, p10, p90 and mean in milliseconds. A failing run aborts the benchmark.

With COUNT_SYNCS=1 every command runs under `strace -f -c` instead and the line holds
"syncs_per_run": the fsync, fdatasync, sync_file_range and syncfs calls of all its processes,
divided by COUNT (no timings: strace slows every system call down).

With SAMPLES_FILE=PATH the samples (ms, one a line) are appended to PATH and nothing is printed,
so that a benchmark can interleave several measurements in rounds (load drifts then hit them
alike); `timer.py --summary LABEL PATH` prints the JSON line of the samples in PATH.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SYNC_CALLS = "fsync,fdatasync,sync_file_range,syncfs"


def strace_calls(path: str) -> int:
    """The 'total' calls of an `strace -c` summary (0 when nothing was traced)."""
    with open(path) as f:
        for line in f:
            words = line.split()
            if words and words[-1] == "total":
                return int(words[3])
    return 0


def summary(label: str, samples: list) -> str:
    q = statistics.quantiles(samples, n=10)
    return json.dumps({"label": label, "n": len(samples),
                       "median_ms": round(statistics.median(samples), 3),
                       "p10_ms": round(q[0], 3), "p90_ms": round(q[-1], 3),
                       "mean_ms": round(statistics.fmean(samples), 3)})


def main() -> int:
    if sys.argv[1] == "--summary":
        with open(sys.argv[3]) as f:
            print(summary(sys.argv[2], [float(line) for line in f if line.strip()]))
        return 0
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
    count_syncs = os.environ.get("COUNT_SYNCS") == "1"
    syncs = 0
    samples = []
    for i in range(first, first + count):
        for k, v in templated.items():
            env[k] = v.replace("{i}", str(i))
        env["CNI_CONTAINERID"] = f"{prefix}{i}"
        argvs = [[w.replace("{i}", str(i)) for w in c] for c in commands]
        t0 = time.perf_counter_ns()
        for argv in argvs:
            trace = None
            if count_syncs:
                trace = tempfile.NamedTemporaryFile(suffix=".strace")
                argv = ["strace", "-f", "-c", "-o", trace.name, "-e", f"trace={SYNC_CALLS}"] + argv
            p = subprocess.run(argv, input=stdin, env=env, capture_output=True)
            if p.returncode != 0:
                sys.stderr.write(f"{label}: run {i} failed: {p.stdout.decode()} {p.stderr.decode()}\n")
                return 1
            if trace is not None:
                syncs += strace_calls(trace.name)
                trace.close()
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / 1e6)
    if count_syncs:
        print(json.dumps({"label": label, "n": count, "syncs_per_run": round(syncs / count, 2)}))
        return 0
    if os.environ.get("SAMPLES_FILE"):
        with open(os.environ["SAMPLES_FILE"], "a") as f:
            f.writelines(f"{s}\n" for s in samples)
        return 0
    print(summary(label, samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
