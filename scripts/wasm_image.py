#!/usr/bin/env python3
"""`make wasm-image`, `make wasm-push`, `make istio-pin`: the module as an OCI image, and the
recipes in istio/ and envoy-gateway/ pinned to it.

    .venv/bin/python scripts/wasm_image.py build [--image IMAGE]   docker load IMAGE
    .venv/bin/python scripts/wasm_image.py push --image IMAGE      build, docker push, print the digest
    .venv/bin/python scripts/wasm_image.py pin [--image IMAGE [--digest sha256:...]] [--root DIR]
    .venv/bin/python scripts/wasm_image.py archive --output F      the image as a `docker load` archive

The image (default `graysplit:<version of Cargo.toml>`) is the "compat" Wasm image that both
Istio's fetcher (pkg/wasm in istio/istio) and Envoy Gateway's (internal/wasm in
envoyproxy/gateway) accept: one layer, a tar holding the module as `plugin.wasm` (mode 0644,
owner 0:0), no base image, no shell. `docker push` sends it as a Docker v2 manifest whose one
layer is that tar gzipped. Its config carries the OCI labels `org.opencontainers.image.source`,
`.version`, `.revision` (the git commit, `-dirty` when src/ or Cargo files have changes),
`.title`, `.description`, `.licenses`, and `graysplit.wasm.sha256` (the module's own hash).

It is written by hand like scripts/envoy_image.py, not by `docker build`: the same module and
revision give the same image ID on any machine (sorted entries, fixed modes, mtime
SOURCE_DATE_EPOCH, default 0). The manifest digest is computed by the registry push (Docker
gzips the layer then); it is what the recipes' `sha256` pins, because both fetchers compare
`sha256` with the MANIFEST digest of an image, not with the module's hash.

`pin` rewrites, in every YAML file under <root>/istio and <root>/envoy-gateway (default: this
repository), each image reference (Istio's `url: oci://...` of a WasmPlugin or TrafficExtension,
the `uri: oci://...` of a body-holding EnvoyFilter, Envoy Gateway's `code.image.url`) to IMAGE and
the `sha256` beside it to the manifest digest, and every module reference (a `file://` url, Envoy
Gateway's `code.http`) to the built module's sha256. Without IMAGE only the module references are
pinned. The digest comes from `--digest`, else from Docker's record of the push (RepoDigests).
Only those values change: comments and layout are kept, sha256 values are written quoted (an
unquoted all-digit digest would be a YAML number).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy_image  # noqa: E402  (the `docker save` archive writer and SOURCE_DATE_EPOCH)
import run  # noqa: E402  (the built module's path)

REPO = Path(__file__).resolve().parent.parent
MODULE_PATH = "plugin.wasm"
RECIPE_DIRS = ("istio", "envoy-gateway")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@functools.cache
def cargo() -> dict:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["package"]


def default_image() -> str:
    return f"graysplit:{cargo()['version']}"


@functools.cache
def revision() -> str:
    """The git commit the module was built from, `-dirty` when the build inputs have changes."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", ".cargo").stdout
    return head.stdout.strip() + ("-dirty" if dirty.strip() else "")


def labels(module_sha: str) -> dict[str, str]:
    pkg = cargo()
    return {
        "org.opencontainers.image.title": pkg["name"],
        "org.opencontainers.image.description": pkg["description"],
        "org.opencontainers.image.source": pkg.get("repository", "unknown"),
        "org.opencontainers.image.version": pkg["version"],
        "org.opencontainers.image.revision": revision(),
        "org.opencontainers.image.licenses": pkg["license"],
        "graysplit.wasm.sha256": module_sha,
    }


def layer_tar(module: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(MODULE_PATH)
        info.size, info.mode, info.mtime = len(module), 0o644, envoy_image.epoch()
        tar.addfile(info, io.BytesIO(module))
    return buf.getvalue()


def image_archive(image: str, module: bytes) -> tuple[str, bytes]:
    """(image ID, the `docker save` archive of `image` holding `module` as plugin.wasm)."""
    layer = layer_tar(module)
    module_sha = hashlib.sha256(module).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(envoy_image.epoch()))
    config = {
        # The module runs on any platform; Docker wants one named to load and push the image.
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Labels": labels(module_sha)},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created,
                     "created_by": f"scripts/wasm_image.py: {MODULE_PATH} "
                                   f"({len(module)} bytes, sha256 {module_sha})"}],
    }
    return envoy_image.save_archive(image, config, layer)


def docker(*args: str, input: bytes | None = None, text: bool = False
           ) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], input=input, capture_output=True, text=text)


def module_bytes() -> bytes:
    run.require_wasm()
    return run.WASM.read_bytes()


def build(image: str) -> str:
    module = module_bytes()
    want, archive = image_archive(image, module)
    if envoy_image.loaded_id(image) == want:
        print(f"{image} is up to date: {want} ({len(module):,} byte module)")
        return want
    r = docker("load", input=archive)
    if r.returncode != 0:
        raise SystemExit(f"docker load failed: {r.stderr.decode().strip()}")
    got = envoy_image.loaded_id(image)
    if got != want:
        raise SystemExit(f"docker load gave {image} the ID {got}, not {want}")
    print(f"built {image}: {want}, one layer with {MODULE_PATH} ({len(module):,} bytes, "
          f"sha256 {hashlib.sha256(module).hexdigest()}), revision {revision()}")
    return want


def repository(image: str) -> str:
    """`image` without its tag or digest (what Docker's RepoDigests entries start with)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def pushed_digest(image: str) -> str | None:
    """The manifest digest Docker recorded when it pushed `image` (RepoDigests), or None."""
    out = docker("image", "inspect", "--format", "{{json .RepoDigests}}", image)
    if out.returncode != 0:
        return None
    repo = repository(image)
    for ref in json.loads(out.stdout.decode() or "[]") or []:
        name, _, digest = ref.partition("@")
        if name == repo and DIGEST.match(digest):
            return digest
    return None


def push(image: str) -> str:
    build(image)
    r = docker("push", image, text=True)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        raise SystemExit(f"docker push {image} failed: {r.stderr.strip()}")
    m = re.search(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)", r.stdout)
    if not m:
        raise SystemExit(f"docker push printed no manifest digest:\n{r.stdout}")
    digest, size = m.group(1), m.group(2)
    recorded = pushed_digest(image)
    if recorded != digest:
        raise SystemExit(f"docker push printed {digest} but Docker recorded {recorded} for {image}")
    print(f"pushed {image}")
    print(f"manifest digest {digest} ({size} bytes of manifest)")
    print(f"pin it: make istio-pin IMAGE={image}")
    return digest


# --------------------------------------------------------------------------- pinning

def _is_oci(url: object) -> bool:
    return isinstance(url, str) and url.startswith("oci://")


def references(doc) -> tuple[list[tuple[str, str | None]], list[str | None]]:
    """(image references as (url, sha256), module references' sha256 values) in a YAML doc."""
    images: list[tuple[str, str | None]] = []
    modules: list[str | None] = []

    def walk(node) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x)
            return
        if not isinstance(node, dict):
            return
        url = node.get("url")
        http_uri = node.get("http_uri")
        uri = http_uri.get("uri") if isinstance(http_uri, dict) else None
        if _is_oci(url):                       # WasmPlugin spec, TrafficExtension spec.wasm
            images.append((url, node.get("sha256")))
        elif isinstance(url, str) and url.startswith("file://"):
            modules.append(node.get("sha256"))
        if _is_oci(uri):                       # an EnvoyFilter's remote code
            images.append((uri, node.get("sha256")))
        code_type = node.get("type")
        if code_type == "Image" and isinstance(node.get("image"), dict):   # Envoy Gateway
            images.append((node["image"].get("url"), node["image"].get("sha256")))
            return
        if code_type == "HTTP" and isinstance(node.get("http"), dict):
            modules.append(node["http"].get("sha256"))
            return
        for v in node.values():
            walk(v)

    walk(doc)
    return images, modules


def recipe_files(root: Path) -> list[Path]:
    return sorted(p for d in RECIPE_DIRS if (root / d).is_dir()
                  for p in (root / d).rglob("*.yaml"))


def _scalar(value: object) -> str | None:
    return None if value is None else str(value)


SCALAR_LINE = re.compile(r"^(\s*(?:-\s+)?(url|uri|sha256):[ \t]+)(\"|'|)([^\"'#\s]+)\3([ \t]*(?:#.*)?)$")


def pin_text(text: str, new: dict[str, str]) -> str:
    """`text` with each `url:`/`uri:`/`sha256:` scalar whose value is a key of `new` replaced
    (sha256 values quoted)."""
    out = []
    for line in text.split("\n"):
        m = SCALAR_LINE.match(line)
        if m and m.group(4) in new:
            value = new[m.group(4)]
            quoted = f'"{value}"' if m.group(2) == "sha256" else value
            line = f"{m.group(1)}{quoted}{m.group(5)}"
        out.append(line)
    return "\n".join(out)


def pin(root: Path, image: str | None, digest: str | None, module_sha: str) -> list[str]:
    """Pin every recipe under root; returns what changed, one line per file."""
    digest_hex = digest.split(":", 1)[1] if digest else None
    changed = []
    for path in recipe_files(root):
        text = path.read_text()
        new: dict[str, str] = {}
        for doc in yaml.safe_load_all(text):
            imgs, mods = references(doc)
            for old in mods:
                if old is not None:
                    new[_scalar(old)] = module_sha
            if image is None:
                continue
            for url, sha in imgs:
                if url is None or sha is None:
                    raise SystemExit(f"{path}: an image reference without url or sha256 ({url!r}, "
                                     f"{sha!r}); every image recipe pins both")
                new[url] = image_url(doc, image)
                new[_scalar(sha)] = digest_hex
        new = {k: v for k, v in new.items() if k != v}
        if not new:
            continue
        pinned = pin_text(text, new)
        if pinned != text:
            path.write_text(pinned)
            changed.append(str(path.relative_to(root)))
    return changed


def image_url(doc, image: str) -> str:
    """How `doc` names `image`: Envoy Gateway's code.image.url as it is, Istio's with oci://."""
    if isinstance(doc, dict) and doc.get("kind") == "EnvoyExtensionPolicy":
        return image
    return "oci://" + image


def check_pinned(root: Path, image: str | None, digest: str | None, module_sha: str) -> list[str]:
    """What is not pinned as asked after pin() (empty: all of it)."""
    digest_hex = digest.split(":", 1)[1] if digest else None
    problems = []
    for path in recipe_files(root):
        for doc in yaml.safe_load_all(path.read_text()):
            imgs, mods = references(doc)
            for sha in mods:
                if sha != module_sha:
                    problems.append(f"{path}: module sha256 {sha!r}, not {module_sha}")
            if image is None:
                continue
            for url, sha in imgs:
                want = image_url(doc, image)
                if url != want or sha != digest_hex:
                    problems.append(f"{path}: {url} {sha!r}, not {want} {digest}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="docker load the image")
    b.add_argument("--image", help="default graysplit:<Cargo version>")
    p = sub.add_parser("push", help="build, docker push, print the manifest digest")
    p.add_argument("--image", required=True)
    n = sub.add_parser("pin", help="write the image, its digest and the module's sha256 into the recipes")
    n.add_argument("--image")
    n.add_argument("--digest", help="the manifest digest (default: Docker's record of the push)")
    n.add_argument("--root", type=Path, default=REPO)
    a = sub.add_parser("archive", help="write the image as a `docker load` archive")
    a.add_argument("--image", help="default graysplit:<Cargo version>")
    a.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    if args.cmd in ("build", "archive"):
        args.image = args.image or default_image()
    if args.cmd == "build":
        build(args.image)
    elif args.cmd == "push":
        push(args.image)
    elif args.cmd == "archive":
        image, archive = image_archive(args.image, module_bytes())
        args.output.write_bytes(archive)
        print(f"wrote {args.output} ({len(archive):,} bytes): {args.image} {image}")
    else:
        module_sha = hashlib.sha256(module_bytes()).hexdigest()
        digest = None
        if args.image:
            digest = args.digest or pushed_digest(args.image)
            if digest is None:
                raise SystemExit(f"no manifest digest for {args.image}: push it first "
                                 f"(make wasm-push IMAGE={args.image}), or give DIGEST=sha256:...")
            if not DIGEST.match(digest):
                raise SystemExit(f"digest {digest!r}: not sha256:<64 lower-case hex>")
        elif args.digest:
            raise SystemExit("--digest needs --image")
        changed = pin(args.root, args.image, digest, module_sha)
        problems = check_pinned(args.root, args.image, digest, module_sha)
        if problems:
            raise SystemExit("not pinned:\n" + "\n".join(problems))
        what = f"{args.image}@{digest} and " if args.image else ""
        print(f"pinned {what}module sha256 {module_sha} in "
              f"{', '.join(changed) if changed else 'no file (already pinned)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
