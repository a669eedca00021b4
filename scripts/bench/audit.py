"""The audit log of a scripts/kube-testenv API server (one JSON event per line): what the
plugins asked of it. Shared by kdd.py and scale.py."""
import json


def lines(path):
    """How many events the log holds: a mark to read the next ones from."""
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def events_since(path, mark, user="calico-cni"):
    """The completed requests of `user` after the first `mark` lines."""
    out = []
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i < mark:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("stage") != "ResponseComplete":
                continue
            if e.get("user", {}).get("username") != user:
                continue
            out.append(e)
    return out
