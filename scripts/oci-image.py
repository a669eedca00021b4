#!/usr/bin/env python3
"""Write a root filesystem directory as a one-layer OCI image archive (an OCI image layout in a
tar: oci-layout, index.json, blobs/sha256/..., plus Docker's manifest.json as `docker save`
writes it), which `ctr images import`, `podman load`, `docker load` and
`skopeo copy oci-archive:...` accept.

usage: oci-image.py ROOTFS OUT.tar --name REF [--entrypoint JSON] [--cmd JSON] [--env K=V]...
                    [--label K=V]... [--workdir DIR] [--created RFC3339]

  ROOTFS          the directory that becomes / (regular files, directories and symlinks only)
  --name REF      the image reference, e.g. docker.io/calico-rs/cni:0.1.0 (recorded as the
                  io.containerd.image.name and org.opencontainers.image.ref.name annotations)
  --entrypoint, --cmd   JSON lists of strings
  --created       the image's creation time (default: SOURCE_DATE_EPOCH, else 1970-01-01)

Reproducible: entries sorted by path, every mtime the creation time, owner root (uid and gid 0,
no names), permission bits as on disk; the layer is gzipped without a name or timestamp. The
same ROOTFS gives the same digests, byte for byte the same archive.
"""
import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile


def epoch_from_args(created):
    if created:
        dt = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
        return int(dt.timestamp())
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def layer_tar(root, mtime):
    """The rootfs as an uncompressed tar (bytes), reproducibly."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + filenames:
            entries.append(os.path.join(dirpath, name))
    entries.sort(key=lambda p: os.path.relpath(p, root).encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries:
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            info = tarfile.TarInfo(rel)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                sys.exit(f"oci-image.py: {path}: not a regular file, directory or symlink")
    return buf.getvalue()


def plain_tar(members, mtime):
    """[(name, bytes)] -> tar bytes (the archive around the layout)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def key_values(items, what):
    out = {}
    for item in items:
        if "=" not in item:
            sys.exit(f"oci-image.py: {what} '{item}' is not KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def string_list(text, what):
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        sys.exit(f"oci-image.py: {what} must be a JSON list of strings")
    return value


def main():
    ap = argparse.ArgumentParser(add_help=True, usage=__doc__)
    ap.add_argument("rootfs")
    ap.add_argument("out")
    ap.add_argument("--name", required=True)
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--created")
    a = ap.parse_args()
    if not os.path.isdir(a.rootfs):
        sys.exit(f"oci-image.py: {a.rootfs} is not a directory")
    mtime = epoch_from_args(a.created)
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    blobs = {}

    def blob(data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer = layer_tar(a.rootfs, mtime)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as f:
        f.write(layer)
    layer_desc = blob(gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip")

    config = {"Env": [f"{k}={v}" for k, v in key_values(a.env, "--env").items()],
              "WorkingDir": a.workdir}
    if a.entrypoint:
        config["Entrypoint"] = string_list(a.entrypoint, "--entrypoint")
    if a.cmd:
        config["Cmd"] = string_list(a.cmd, "--cmd")
    labels = key_values(a.label, "--label")
    if labels:
        config["Labels"] = labels
    image_config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "scripts/build-image.sh"}],
    }
    config_desc = blob(json.dumps(image_config, sort_keys=True).encode(),
                       "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    if labels:
        manifest["annotations"] = labels
    manifest_desc = blob(json.dumps(manifest, sort_keys=True).encode(),
                         "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {"io.containerd.image.name": a.name,
                                    "org.opencontainers.image.ref.name": a.name}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    # Docker's own archive index too (as `docker save` writes it beside the OCI layout), for
    # Docker engines that predate OCI archives.
    short = a.name
    for prefix in ("docker.io/library/", "docker.io/"):
        if short.startswith(prefix):
            short = short[len(prefix):]
            break
    docker_manifest = [{"Config": "blobs/sha256/" + config_desc["digest"].split(":", 1)[1],
                        "RepoTags": [short],
                        "Layers": ["blobs/sha256/" + layer_desc["digest"].split(":", 1)[1]]}]
    members = [("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
               ("index.json", json.dumps(index, sort_keys=True).encode()),
               ("manifest.json", json.dumps(docker_manifest, sort_keys=True).encode())]
    for digest, data in sorted(blobs.items()):
        members.append(("blobs/sha256/" + digest.split(":", 1)[1], data))
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(plain_tar(members, mtime))
    os.replace(tmp, a.out)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()
