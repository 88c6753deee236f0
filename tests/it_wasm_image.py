"""The module as an OCI image (DESIGN.md "Distribution (v3.1)"): `make wasm-push` to a real
registry (Debian's `docker-registry`, the Distribution registry 2.8, started here on 127.0.0.1
with its storage in the test's tmp dir), pulled back over the registry's HTTP API the way
Istio's fetcher reads an image, byte for byte; `make istio-pin IMAGE=...` writing that image and
its manifest digest into every image recipe; and the module from the image deciding in Envoy.

The pull (`istio_fetch`) follows istio/istio pkg/wasm/imagefetcher.go, which reads images with
go-containerregistry: the registry's /v2/ ping, the manifest by tag with the Accept list of
go-containerregistry's remote.Get, the manifest digest (sha256 of the manifest's bytes) compared
with the recipe's `sha256` before anything else is read, then the layer blobs (each checked
against its digest) and, for a Docker or OCI image (not the wasm artifact), `plugin.wasm` out of
the last layer's gzipped tar. Envoy Gateway's fetcher (internal/wasm in envoyproxy/gateway) is a
copy of Istio's and reads the image the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest
import yaml

import crds
import engine
import harness
import run
import wasm_image  # scripts/wasm_image.py (harness puts scripts/ on the path)
from harness import REPO, Envoy, bucket, plugin_config, wait_until

MANIFEST_TYPES = (
    # go-containerregistry remote.Get's default Accept list (pkg/v1/remote/descriptor.go).
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"


class Registry:
    """A Distribution registry on 127.0.0.1 with its storage in `workdir`, owned by the test."""

    def __init__(self, workdir: Path):
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.skip("no docker-registry here: `make registry` installs Debian's "
                        "docker-registry package (as root)")
        self.port = run.free_port()
        self.host = f"127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "registry.yml"
        config.write_text(yaml.safe_dump({
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
            "http": {"addr": self.host},
        }))
        self.log_path = workdir / "registry.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=run.die_with_parent)
        wait_until(lambda: self.ping() == 200, 20, f"docker-registry on {self.host}")

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def ping(self) -> int:
        """The status of GET /v2/ (wait_until retries while it cannot connect)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"docker-registry exited: {self.log_path.read_text()}")
        return run.http_get(self.url("/v2/"))[0]

    def get(self, path: str, accept: str | None = None) -> tuple[bytes, dict[str, str]]:
        req = urllib.request.Request(self.url(path))
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read(), {k.lower(): v for k, v in r.headers.items()}

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (as root, `make engine` installs Debian's docker.io)")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.close()


class Fetched:
    def __init__(self, digest: str, manifest: dict, config: dict, layers: list[bytes],
                 module: bytes):
        self.digest, self.manifest, self.config = digest, manifest, config
        self.layers, self.module = layers, module


class DigestMismatch(Exception):
    pass


def istio_fetch(reg: Registry, repo: str, tag: str, expected_sha256: str = "") -> Fetched:
    """The image `repo:tag` read as Istio's fetcher reads it (see the module docstring):
    refuses a manifest whose digest is not `expected_sha256` (hex, or "" for no check)."""
    assert reg.get("/v2/")[0] in (b"{}", b""), "registry ping"
    body, headers = reg.get(f"/v2/{repo}/manifests/{tag}", accept=",".join(MANIFEST_TYPES))
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert headers.get("docker-content-digest") == digest, headers
    if expected_sha256 and digest != "sha256:" + expected_sha256:
        raise DigestMismatch(f"module downloaded from {repo}:{tag} has checksum {digest}, "
                             f"which does not match: {expected_sha256}")
    manifest = json.loads(body)
    media = manifest.get("mediaType") or headers.get("content-type")
    assert media in (DOCKER_MANIFEST, "application/vnd.oci.image.manifest.v1+json"), media

    def blob(desc: dict) -> bytes:
        data, _ = reg.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
        assert len(data) == desc["size"], (len(data), desc)
        return data

    config = json.loads(blob(manifest["config"]))
    layers = [blob(d) for d in manifest["layers"]]
    last = manifest["layers"][-1]
    if last["mediaType"] == WASM_LAYER:
        module = layers[-1]
    else:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layers[-1]))) as tar:
            member = next((m for m in tar.getmembers()
                           if m.isfile() and os.path.basename(m.name) == "plugin.wasm"), None)
            assert member is not None, [m.name for m in tar.getmembers()]
            module = tar.extractfile(member).read()
    return Fetched(digest, manifest, config, layers, module)


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def pushed(registry):
    """`make wasm-push IMAGE=<registry>/graysplit/graysplit:it-<pid>`: (image, printed digest,
    make's output)."""
    repo, tag = "graysplit/graysplit", f"it-{os.getpid()}"
    image = f"{registry.host}/{repo}:{tag}"
    r = make("wasm-push", f"IMAGE={image}")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("manifest digest sha256:")]
    assert len(lines) == 1, r.stdout
    digest = lines[0].split()[2]
    yield image, repo, tag, digest, r.stdout
    engine.docker("image", "rm", image)


def it_wasm_push_prints_the_manifest_digest_the_registry_serves(registry, pushed):
    image, repo, tag, digest, out = pushed
    print(out)
    got = istio_fetch(registry, repo, tag)
    assert got.digest == digest
    # What the push printed is the manifest's digest, not the module's nor the config's.
    module_sha = hashlib.sha256(harness.WASM.read_bytes()).hexdigest()
    assert digest != "sha256:" + module_sha
    assert digest != got.manifest["config"]["digest"]


def it_the_pulled_module_is_the_built_one_byte_for_byte(registry, pushed):
    image, repo, tag, digest, _ = pushed
    got = istio_fetch(registry, repo, tag, expected_sha256=digest.split(":", 1)[1])
    built = harness.WASM.read_bytes()
    assert got.module == built, (len(got.module), len(built))
    # One layer: a gzipped tar with plugin.wasm and nothing else; a Docker v2 manifest.
    assert got.manifest["mediaType"] == DOCKER_MANIFEST
    assert [d["mediaType"] for d in got.manifest["layers"]] == [DOCKER_LAYER]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(got.layers[0]))) as tar:
        members = tar.getmembers()
    assert [(m.name, m.isfile(), m.mode, m.uid, m.gid) for m in members] == \
        [("plugin.wasm", True, 0o644, 0, 0)]
    size = sum(d["size"] for d in got.manifest["layers"]) + got.manifest["config"]["size"]
    print(f"image {image}: manifest {digest}, {size:,} bytes in the registry "
          f"(module {len(built):,} bytes)")


def it_the_image_carries_oci_labels(registry, pushed):
    _, repo, tag, _, _ = pushed
    got = istio_fetch(registry, repo, tag)
    labels = got.config["config"]["Labels"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert labels["org.opencontainers.image.version"] == wasm_image.cargo()["version"]
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["graysplit.wasm.sha256"] == hashlib.sha256(got.module).hexdigest()


def it_a_wrong_sha256_is_refused_before_any_layer_is_read(registry, pushed):
    _, repo, tag, digest, _ = pushed
    module_sha = hashlib.sha256(harness.WASM.read_bytes()).hexdigest()
    for wrong in (module_sha, "0" * 64):   # the module's own hash is the classic mistake
        with pytest.raises(DigestMismatch):
            istio_fetch(registry, repo, tag, expected_sha256=wrong)


def it_the_same_module_and_revision_give_the_same_image_id():
    module = harness.WASM.read_bytes()
    a = wasm_image.image_archive("x/graysplit:a", module)
    b = wasm_image.image_archive("x/graysplit:a", module)
    assert a == b
    c = wasm_image.image_archive("x/graysplit:a", module + b"\0")
    assert c[0] != a[0]


def pin_cli(*args: str) -> subprocess.CompletedProcess:
    """scripts/wasm_image.py pin, as `make istio-pin` runs it."""
    return subprocess.run([str(REPO / ".venv" / "bin" / "python"),
                           str(REPO / "scripts" / "wasm_image.py"), "pin", *args],
                          capture_output=True, text=True, timeout=120)


def pinned_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for d in wasm_image.RECIPE_DIRS:
        shutil.copytree(REPO / d, root / d)
    return root


def image_refs(root: Path) -> list[tuple[str, str, object, object]]:
    out = []
    for path in wasm_image.recipe_files(root):
        for doc in yaml.safe_load_all(path.read_text()):
            for url, sha in wasm_image.references(doc)[0]:
                out.append((str(path.relative_to(root)), doc.get("kind"), url, sha))
    return out


def it_istio_pin_writes_the_image_and_its_digest_into_every_image_recipe(registry, pushed,
                                                                          tmp_path):
    image, repo, tag, digest, _ = pushed
    root = pinned_copy(tmp_path)
    before = image_refs(root)
    kinds = {k for _, k, _, _ in before}
    assert {"WasmPlugin", "TrafficExtension", "EnvoyFilter", "EnvoyExtensionPolicy"} <= kinds, kinds
    r = pin_cli("--image", image, "--root", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    after = image_refs(root)
    assert len(after) == len(before)
    hexdigest = digest.split(":", 1)[1]
    for f, kind, url, sha in after:
        want = image if kind == "EnvoyExtensionPolicy" else "oci://" + image
        assert (url, sha) == (want, hexdigest), f
    # ... and what is pinned (one image, one digest) is what the registry serves under that name.
    assert istio_fetch(registry, repo, tag, expected_sha256=hexdigest).module == \
        harness.WASM.read_bytes()
    # Only those values changed: the same lines, comments included.
    for path in wasm_image.recipe_files(root):
        old = (REPO / path.relative_to(root)).read_text().splitlines()
        new = path.read_text().splitlines()
        assert len(old) == len(new), path
        for a, b in zip(old, new):
            if a != b:
                assert any(k in a for k in ("url:", "uri:", "sha256:")), (path, a, b)
    # The pinned recipes still validate against their CRDs.
    loaded = crds.load_crds()
    for path in wasm_image.recipe_files(root):
        for i, doc in enumerate(crds.load_docs(path)):
            if "kind" in doc and not crds.skip_reason(doc, loaded):
                assert crds.validate(doc, loaded) == [], (path, i)


def it_istio_pin_without_a_push_says_what_to_do(tmp_path):
    root = pinned_copy(tmp_path)
    r = pin_cli("--image", "127.0.0.1:1/never/pushed:x", "--root", str(root))
    assert r.returncode != 0
    assert "push it first" in r.stderr and "make wasm-push IMAGE=127.0.0.1:1/never/pushed:x" in r.stderr


def it_the_module_from_the_pulled_image_decides_in_envoy(registry, pushed, tmp_path):
    _, repo, tag, digest, _ = pushed
    got = istio_fetch(registry, repo, tag, expected_sha256=digest.split(":", 1)[1])
    workdir = tmp_path / "envoy"
    workdir.mkdir()
    module = workdir / "plugin.wasm"
    module.write_bytes(got.module)
    salt = "image"
    cfg = plugin_config([{"name": "ramp", "salt": salt,
                          "split": [{"version": "v2", "percent": 30}]}])
    doc = harness.bootstrap(cfg, access_log=workdir / "access.log")
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == harness.FILTER_NAME)
    wasm["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(module)
    envoy = Envoy(workdir, doc).launch()
    try:
        users = [f"user-{i}" for i in range(200)]
        with envoy.pool() as pool:
            rs = pool.run([("/", [("x-user-id", u), ("x-graysplit-version", "v2")]) for u in users])
        got_versions = [r.text for r in rs]
        want = ["v2" if bucket(salt, u) < 3000 else "v1" for u in users]
        assert got_versions == want
        assert envoy.counter("wasmcustom.graysplit_decisions_total.rule.ramp.version.v2") == \
            want.count("v2")
    finally:
        envoy.stop()
