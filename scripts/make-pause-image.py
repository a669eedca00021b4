#!/usr/bin/env python3
"""Pack a static pause binary as an OCI image-layout tar that `ctr images import` accepts.

usage: make-pause-image.py PAUSE_BINARY OUT.tar [IMAGE_NAME]
       make-pause-image.py --busybox BUSYBOX_STATIC OUT.tar IMAGE_NAME

The image has one uncompressed layer holding /pause (mode 0755) and Entrypoint ["/pause"]. With
--busybox it holds /bin/busybox (a static one, e.g. Debian's busybox-static) and a symlink
/bin/APPLET -> busybox for every applet it lists, /tmp, Cmd ["sh"] and PATH=/bin (the pods of
scripts/kube-cluster run it as docker.io/library/busybox:latest). The tar is reproducible (fixed
mtimes and owners), so the same binary gives the same digests.
"""
import hashlib
import io
import json
import subprocess
import sys
import tarfile


def tar_bytes(members):
    """members: list of (name, bytes, mode) -> reproducible tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):  # ("symlink", target) or ("dir",)
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.DIRTYPE
                info.linkname = data[1] if data[0] == "symlink" else ""
                data = b""
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def busybox_layer(binary):
    """/bin/busybox, a symlink per applet, /tmp; and the image config's process fields."""
    with open(binary, "rb") as f:
        data = f.read()
    applets = subprocess.run([binary, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    members = [("bin", ("dir",), 0o755), ("bin/busybox", data, 0o755), ("tmp", ("dir",), 0o1777)]
    members += [("bin/" + a, ("symlink", "busybox"), 0o777)
                for a in sorted(set(applets)) if a != "busybox" and "/" not in a]
    return tar_bytes(members), {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}


def main():
    busybox = len(sys.argv) == 5 and sys.argv[1] == "--busybox"
    if busybox:
        binary, out, name = sys.argv[2], sys.argv[3], sys.argv[4]
    elif len(sys.argv) in (3, 4):
        binary, out = sys.argv[1], sys.argv[2]
        name = sys.argv[3] if len(sys.argv) == 4 else "localhost/pause:cni-test"
    else:
        sys.exit(__doc__)

    blobs = {}

    def blob(data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    if busybox:
        layer, process = busybox_layer(binary)
    else:
        with open(binary, "rb") as f:
            layer = tar_bytes([("pause", f.read(), 0o755)])
        process = {"Entrypoint": ["/pause"], "WorkingDir": "/"}
    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": process,
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "scripts/make-pause-image.py"}],
    }
    config_desc = blob(json.dumps(config, sort_keys=True).encode(),
                       "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(json.dumps(manifest, sort_keys=True).encode(),
                         "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    members = [("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644),
               ("index.json", json.dumps(index, sort_keys=True).encode(), 0o644)]
    for digest, data in sorted(blobs.items()):
        members.append(("blobs/sha256/" + digest.split(":", 1)[1], data, 0o644))
    with open(out, "wb") as f:
        f.write(tar_bytes(members))


if __name__ == "__main__":
    main()
