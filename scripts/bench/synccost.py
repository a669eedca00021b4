#!/usr/bin/env python3
"""The sync cost of the disk holding DIR, in the benchmark's run: medians of 50 each.

Usage: synccost.py DIR
Prints one JSON line: a 4 KiB overwrite of allocated blocks + fdatasync (what a local-store
commit costs), a 4 KiB append + fdatasync, and one durable file replacement (write a
temporary, fsync, rename, fsync the directory: what the earlier store paid per object).
"""
import json
import os
import statistics
import sys
import time


def medians_ms(fns, n=50):
    """Runs the functions in turn, n rounds (so that load drifts hit all alike); medians."""
    samples = [[] for _ in fns]
    for i in range(n):
        for fn, out in zip(fns, samples):
            t = time.perf_counter_ns()
            fn(i)
            out.append((time.perf_counter_ns() - t) / 1e6)
    return [round(statistics.median(s), 3) for s in samples]


def main() -> int:
    d = sys.argv[1]
    block = b"x" * 4096
    pre = os.open(os.path.join(d, "synccost.pre"), os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    os.write(pre, bytes(4096 * 64))
    os.fsync(pre)
    app = os.open(os.path.join(d, "synccost.app"), os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)

    def durable(i):
        tmp = os.path.join(d, ".synccost.tmp")
        f = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.write(f, block)
        os.fsync(f)
        os.close(f)
        os.rename(tmp, os.path.join(d, "synccost.obj"))
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)

    overwrite, append, replace = medians_ms([
        lambda i: (os.pwrite(pre, block, (i % 64) * 4096), os.fdatasync(pre)),
        lambda i: (os.write(app, block), os.fdatasync(app)),
        durable,
    ])
    os.close(pre)
    os.close(app)
    for f in ("synccost.pre", "synccost.app", "synccost.obj"):
        os.unlink(os.path.join(d, f))
    print(json.dumps({"overwrite_fdatasync_ms": overwrite, "append_fdatasync_ms": append,
                      "durable_replace_ms": replace}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
