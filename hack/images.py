#!/usr/bin/env python3
"""Container images without a registry, for the local node (hack/devnode.py) and the e2e tests.

    .venv/bin/python hack/images.py build [pause|base|uv|operator ...]   # prints name and archive

Every image is a docker-archive tarball cached outside the checkout under
``~/.cache/mlops-operator/images-v1/<name>-<hash of its inputs>.tar`` and imported into the node's
containerd with ``ctr -n k8s.io images import``; a warm run only hashes the inputs.

- ``pause``: the Pod sandbox image, a tiny static Go program (hack/pause) in a one-layer image.
- ``base``: Debian bookworm + Python 3.11 from Debian (``mmdebstrap --variant=minbase``), the same
  Debian release and Python minor as ``python:3.11-slim-bookworm``, which a normal ``docker build``
  of the Dockerfile uses instead.
- ``uv``: the uv binary at the Makefile's version in an image with ``/uv``, like
  ``ghcr.io/astral-sh/uv:<version>``.
- ``operator``: the repository's own ``Dockerfile``, built unchanged by ``buildah bud`` with the two
  images above as its ``PYTHON_IMAGE``/``UV_IMAGE`` build arguments and no pulls.
- ``seldon-executor``: Seldon Core's executor (``seldon-container-engine``) that hack/seldon.py builds
  from the Seldon source tree (``MLOPS_SELDON_SRC``), on the ``base`` rootfs (it links glibc via cgo).
- ``mlserver``: the MLServer runtime image Seldon's prepackaged ``SKLEARN_SERVER`` (protocol v2) runs:
  ``base`` + a venv with mlserver, mlserver-sklearn and mlserver-lightgbm, every package pinned to
  uv.lock's version where uv.lock has it (lightgbm is not in uv.lock: the newest that
  mlserver-lightgbm accepts). ``MLSERVER_PARALLEL_WORKERS=0`` (no worker processes: one model per
  Pod, and MLServer's worker pool does not start under a read-only, non-root user).
- ``rclone``: Seldon's storage initializer (``rclone copy <modelUri> /mnt/models``) with rclone from
  Debian bookworm instead of rclone's own image, user 8888 as in Seldon's Dockerfile.

Only the standard library; the tools come from Debian packages (mmdebstrap, buildah) and Go.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE_VERSION = "1"  # bump to rebuild every cached image

UV_VERSION = "0.13.9"  # the Makefile's and the Dockerfile's
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# As in debian:bookworm-slim (the base of python:3.11-slim-bookworm): no docs, man pages or locales.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*")

PAUSE_IMAGE = "localhost/mlops/pause:3.10"
BASE_IMAGE = "localhost/mlops/python:3.11-slim-bookworm"
UV_IMAGE = f"localhost/mlops/uv:{UV_VERSION}"
OPERATOR_REPO = "localhost/mlops-operator"

# What the Dockerfile's build context contains (see .dockerignore).
OPERATOR_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock", "README.md", "operator",
                   "pipelines/tabular.yaml")


class ImageError(RuntimeError):
    """An image could not be built."""


def _say(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = os.environ.get("MLOPS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-operator"
    return Path(base) / f"images-v{RECIPE_VERSION}"


def run_with_progress(cmd: list[str], what: str, *, log: Path | None = None,
                      say: Callable[[str], None] = _say, **kw: Any) -> int:
    """Run a slow command, saying ``  ... <what> (<seconds>s)`` every 30 s; its output goes to ``log``.
    Returns its exit code. (hack/seldon.py's Go builds use it too.)"""
    start = time.monotonic()
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        next_report = 30.0
        while proc.poll() is None:
            time.sleep(0.5)
            if time.monotonic() - start >= next_report:
                say(f"  ... {what} ({time.monotonic() - start:.0f}s)")
                next_report += 30
    finally:
        if log:
            out.close()
    return proc.returncode


def _run(cmd: list[str], what: str, *, log: Path | None = None, **kw: Any) -> None:
    """:func:`run_with_progress`; a failure raises ImageError with the end of ``log``."""
    if (code := run_with_progress(cmd, what, log=log, **kw)) != 0:
        tail = ""
        if log and log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise ImageError(f"{what} failed (exit {code}): {' '.join(cmd)}\n{tail}")


def _hash(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()[:16]


def _tree_digest(paths: Iterable[str]) -> list[bytes]:
    out: list[bytes] = []
    for rel in paths:
        p = REPO_ROOT / rel
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            out.append(str(f.relative_to(REPO_ROOT)).encode())
            out.append(f.read_bytes())
    return out


# ---------------------------------------------------------------- docker-archive


def write_docker_archive(dest: Path, ref: str, layer: Callable[[tarfile.TarFile], None],
                         config: dict[str, Any]) -> None:
    """A one-layer docker-archive (what ``docker save`` writes) that ``ctr images import`` and
    ``buildah pull docker-archive:`` accept. ``layer`` fills the layer tar."""
    tmp = dest.with_suffix(".tmp")
    layer_path = dest.with_suffix(".layer")
    with tarfile.open(layer_path, "w", format=tarfile.PAX_FORMAT) as lt:
        layer(lt)
    h = hashlib.sha256()
    with open(layer_path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    diff_id = h.hexdigest()
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/images.py"}],
    }
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg_bytes).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]
    with tarfile.open(tmp, "w") as out:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        add_bytes(cfg_name, cfg_bytes)
        out.add(layer_path, arcname=f"{diff_id}/layer.tar")
        add_bytes("manifest.json", json.dumps(manifest).encode())
    layer_path.unlink()
    tmp.replace(dest)


def _copy_rootfs(src_tar: Path) -> Callable[[tarfile.TarFile], None]:
    """Layer filler: the rootfs tarball without device nodes (the runtime provides /dev)."""
    def fill(out: tarfile.TarFile) -> None:
        with tarfile.open(src_tar) as src:
            for m in src:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if not name or name == ".":
                    continue
                if m.ischr() or m.isblk() or (name.startswith("dev/") and not m.isdir()):
                    continue
                m.name = name
                if m.islnk() and m.linkname.startswith("./"):
                    m.linkname = m.linkname[2:]
                out.addfile(m, src.extractfile(m) if m.isreg() else None)
    return fill


# ---------------------------------------------------------------- images


class Image:
    def __init__(self, name: str, ref: str, archive: Path, built: bool, seconds: float) -> None:
        self.name, self.ref, self.archive, self.built, self.seconds = name, ref, archive, built, seconds
        # Read now: another checkout's build may replace the archive later.
        self.size = archive.stat().st_size

    def size_mib(self) -> float:
        return self.size / (1 << 20)

    def __repr__(self) -> str:
        return f"Image({self.ref}, {self.archive})"


def _cached(name: str, ref: str, key: str, build: Callable[[Path], None]) -> Image:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{name}-{key}.tar"
    start = time.monotonic()
    lock = open(cache / f".{name}.lock", "w")
    try:
        import fcntl
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return Image(name, ref, archive, False, time.monotonic() - start)
        _say(f"building image {ref} (cache miss, key {key})")
        try:
            build(archive)
        finally:
            if name == "operator":
                release_storage()
    finally:
        lock.close()
    img = Image(name, ref, archive, True, time.monotonic() - start)
    _say(f"built {ref} in {img.seconds:.0f}s ({img.size_mib():.0f} MiB archive)")
    for old in [*cache.glob(f"{name}-*.tar"), *cache.glob(f"{name}-*.log")]:  # only the newest build
        if old.stem != archive.stem:
            old.unlink(missing_ok=True)
    return img


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise ImageError(f"{tool} is missing: apt-get install {package} (hack/devnode.py installs it)")
    return path


def pause_image() -> Image:
    src = REPO_ROOT / "hack" / "pause" / "main.go"
    key = _hash([RECIPE_VERSION, src.read_bytes()])

    def build(archive: Path) -> None:
        if not shutil.which("go"):
            raise ImageError("Go is required to build the pause image (apt-get install golang)")
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            _run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), str(src)], "go build pause",
                 env={**os.environ, "CGO_ENABLED": "0", "GO111MODULE": "off"})

            def fill(out: tarfile.TarFile) -> None:
                out.add(binary, arcname="pause")
            write_docker_archive(archive, PAUSE_IMAGE, fill, {"Entrypoint": ["/pause"], "User": "65535:65535"})

    return _cached("pause", PAUSE_IMAGE, key, build)


def _debian_image(name: str, ref: str, packages: str, config: dict[str, Any]) -> Image:
    """A Debian (minbase) image with ``packages`` from mmdebstrap, cached by its recipe."""
    args = ["--variant=minbase", f"--include={packages},ca-certificates",
            *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES], "--format=tar", DEBIAN_SUITE]
    key = _hash([RECIPE_VERSION, *args, *DEBIAN_MIRRORS])

    def build(archive: Path) -> None:
        mm = _need("mmdebstrap", "mmdebstrap")
        with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            _run([mm, "--quiet", *args, str(rootfs), *DEBIAN_MIRRORS], f"mmdebstrap bookworm + {packages}",
                 log=Path(tmp) / "mmdebstrap.log")
            write_docker_archive(archive, ref, _copy_rootfs(rootfs), config)

    return _cached(name, ref, key, build)


def base_image() -> Image:
    return _debian_image("base", BASE_IMAGE, "python3", {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        "Cmd": ["python3"],
    })


def _uv_binary() -> Path:
    cache = Path(os.environ.get("MLOPS_CACHE_DIR") or Path.home() / ".cache" / "mlops-operator")
    uv = cache / f"uv-{UV_VERSION}" / "bin" / "uv"
    if not uv.exists():
        raise ImageError(f"{uv} is missing: run `make venv` first (it bootstraps uv {UV_VERSION})")
    return uv


def uv_image() -> Image:
    uv = _uv_binary()
    key = _hash([RECIPE_VERSION, UV_VERSION, uv.read_bytes()])

    def build(archive: Path) -> None:
        def fill(out: tarfile.TarFile) -> None:
            out.add(uv, arcname="uv")
        write_docker_archive(archive, UV_IMAGE, fill, {"Entrypoint": ["/uv"]})

    return _cached("uv", UV_IMAGE, key, build)


def _buildah(storage: Path) -> list[str]:
    return [_need("buildah", "buildah"), "--root", str(storage / "root"), "--runroot", str(storage / "runroot"),
            "--storage-driver", "overlay"]


def operator_image() -> Image:
    """The repository's Dockerfile, built by buildah with the local base and uv images."""
    base, uv = base_image(), uv_image()
    key = _hash([RECIPE_VERSION, base.archive.name, uv.archive.name, *_tree_digest(OPERATOR_INPUTS)])
    ref = f"{OPERATOR_REPO}:dev-{key[:12]}"

    def build(archive: Path) -> None:
        storage = cache_dir() / "buildah"
        buildah = _buildah(storage)
        log = archive.with_suffix(".log")
        log.unlink(missing_ok=True)
        for img in (base, uv):
            _run([*buildah, "pull", "--quiet", f"docker-archive:{img.archive}"], f"load {img.ref} into buildah",
                 log=log)
            # docker-archive loads keep the archive's tag; make sure the ref resolves.
        with tempfile.TemporaryDirectory() as tmp:
            # Build-time only (never in the image): the host's CA bundle so uv reaches PyPI through
            # this network's TLS proxy, and a uv config telling uv to use the system trust store (``system-certs``).
            uv_toml = Path(tmp) / "uv.toml"
            uv_toml.write_text("system-certs = true\n")
            volumes = [f"{uv_toml}:/etc/uv/uv.toml:ro"]
            ca = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
            if Path(ca).exists():
                volumes.append(f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro")
            _run([*buildah, "bud", "--isolation", "chroot", "--pull=never", "--layers",
                  "--build-arg", f"PYTHON_IMAGE={base.ref}", "--build-arg", f"UV_IMAGE={uv.ref}",
                  *[a for v in volumes for a in ("--volume", v)],
                  "-f", str(REPO_ROOT / "Dockerfile"), "-t", ref, str(REPO_ROOT)],
                 f"buildah bud {ref}", log=log)
        tmp_archive = archive.with_suffix(".push")
        tmp_archive.unlink(missing_ok=True)
        _run([*buildah, "push", "--quiet", ref, f"docker-archive:{tmp_archive}:{ref}"], f"export {ref}", log=log)
        tmp_archive.replace(archive)
        # The layer cache stays (a rebuild after a code change reuses the dependency layer: no
        # prune, which would drop the untagged cache images); older tags of the image go.
        listed = subprocess.run([*buildah, "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True,
                                text=True, check=False).stdout.split()
        for old in listed:
            if old.startswith(OPERATOR_REPO + ":") and old != ref:
                subprocess.run([*buildah, "rmi", old], capture_output=True, check=False)
        release_storage()

    return _cached("operator", ref, key, build)


def storage_mounts() -> list[str]:
    """Mount points buildah's storage left behind (its overlay home and working containers)."""
    prefix = str(cache_dir() / "buildah") + "/"
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4]
            if mp.startswith(prefix):
                out.append(mp)
    return out


def release_storage() -> None:
    """Remove buildah's working containers and unmount its storage: a build leaves no mount."""
    storage = cache_dir() / "buildah"
    if not storage.exists():
        return
    subprocess.run([*_buildah(storage), "rm", "--all"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    for mp in sorted(storage_mounts(), key=len, reverse=True):
        if subprocess.run(["umount", mp], stderr=subprocess.DEVNULL, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL, check=False)


# ---------------------------------------------------------------- Seldon Core's images


SELDON_EXECUTOR_IMAGE = "localhost/mlops/seldon-core-executor"
MLSERVER_REPO = "localhost/mlops/mlserver"
RCLONE_IMAGE = "localhost/mlops/rclone-storage-initializer:bookworm"
MLSERVER_PACKAGES = ("mlserver", "mlserver-sklearn", "mlserver-lightgbm")


def _layer_of(archive: Path) -> Callable[[tarfile.TarFile], None]:
    """Layer filler: the files of a one-layer docker-archive written by write_docker_archive."""
    def fill(out: tarfile.TarFile) -> None:
        with tarfile.open(archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
            (layer_name,) = manifest[0]["Layers"]
            with tarfile.open(fileobj=outer.extractfile(layer_name), mode="r|") as layer:
                for m in layer:
                    out.addfile(m, layer.extractfile(m) if m.isreg() else None)
    return fill


def seldon_executor_image() -> Image:
    """The executor from hack/seldon.py's build on the ``base`` Debian rootfs (it links glibc through
    cgo, as Seldon's own image on distroless/base does); entrypoint /executor, user 8888."""
    import seldon  # hack/seldon.py

    try:
        bin_dir = seldon.build()
    except (seldon.SeldonSourceMissing, seldon.SeldonBuildError) as err:
        raise ImageError(str(err)) from None
    base = base_image()
    binary = bin_dir / "executor"
    key = _hash([RECIPE_VERSION, bin_dir.name, base.archive.name])
    ref = f"{SELDON_EXECUTOR_IMAGE}:1.17.1-{key[:12]}"

    def build(archive: Path) -> None:
        base_fill = _layer_of(base.archive)

        def fill(out: tarfile.TarFile) -> None:
            base_fill(out)
            out.add(binary, arcname="executor")
        write_docker_archive(archive, ref, fill, {
            "Entrypoint": ["/executor"], "User": "8888", "WorkingDir": "/",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]})

    return _cached("seldon-executor", ref, key, build)


def _locked_versions() -> dict[str, str]:
    """name -> version of every package uv.lock pins once (PyPI's, not this project)."""
    import tomllib

    seen: dict[str, list[str]] = {}
    for pkg in tomllib.loads((REPO_ROOT / "uv.lock").read_text()).get("package", []):
        if "registry" in (pkg.get("source") or {}):
            seen.setdefault(pkg["name"], []).append(pkg["version"])
    return {name: versions[0] for name, versions in seen.items() if len(versions) == 1}


def mlserver_image() -> Image:
    base, uv = base_image(), uv_image()
    locked = _locked_versions()
    constraints = "".join(f"{n}=={v}\n" for n, v in sorted(locked.items()))
    mlserver_version = locked["mlserver"]
    wanted = [f"{p}=={mlserver_version}" if p.startswith("mlserver") else p for p in MLSERVER_PACKAGES]
    dockerfile = f"""\
FROM {base.ref}
COPY --from={uv.ref} /uv /usr/local/bin/uv
COPY constraints.txt /tmp/constraints.txt
RUN uv venv --python /usr/bin/python3 /opt/mlserver \\
 && VIRTUAL_ENV=/opt/mlserver uv pip install --no-cache --compile-bytecode -c /tmp/constraints.txt {' '.join(wanted)} \\
 && rm /usr/local/bin/uv /tmp/constraints.txt
ENV PATH=/opt/mlserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    MLSERVER_PARALLEL_WORKERS=0 MLSERVER_METRICS_DIR=/tmp/mlserver-metrics PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 8888
CMD ["mlserver", "start", "/mnt/models"]
"""
    key = _hash([RECIPE_VERSION, base.archive.name, uv.archive.name, dockerfile, constraints])
    ref = f"{MLSERVER_REPO}:{mlserver_version}-{key[:12]}"

    def build(archive: Path) -> None:
        storage = cache_dir() / "buildah"
        buildah = _buildah(storage)
        log = archive.with_suffix(".log")
        log.unlink(missing_ok=True)
        for img in (base, uv):
            _run([*buildah, "pull", "--quiet", f"docker-archive:{img.archive}"], f"load {img.ref} into buildah",
                 log=log)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                ctx = Path(tmp)
                (ctx / "Dockerfile").write_text(dockerfile)
                (ctx / "constraints.txt").write_text(constraints)
                uv_toml = ctx / "uv.toml"
                uv_toml.write_text("system-certs = true\n")
                volumes = [f"{uv_toml}:/etc/uv/uv.toml:ro"]
                ca = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
                if Path(ca).exists():
                    volumes.append(f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro")
                _run([*buildah, "bud", "--isolation", "chroot", "--pull=never",
                      *[a for v in volumes for a in ("--volume", v)], "-t", ref, str(ctx)],
                     f"buildah bud {ref} (pip install of MLServer, a few minutes cold)", log=log)
            tmp_archive = archive.with_suffix(".push")
            tmp_archive.unlink(missing_ok=True)
            _run([*buildah, "push", "--quiet", ref, f"docker-archive:{tmp_archive}:{ref}"], f"export {ref}", log=log)
            tmp_archive.replace(archive)
            subprocess.run([*buildah, "rmi", ref], capture_output=True, check=False)
        finally:
            release_storage()

    return _cached("mlserver", ref, key, build)


def rclone_image() -> Image:
    return _debian_image("rclone", RCLONE_IMAGE, "rclone", {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                # As Seldon's image: verbose enough to see what was copied, never the secrets.
                "RCLONE_VERBOSE=1"],
        "Entrypoint": ["rclone", "copy"],
        "User": "8888",
    })


BUILDERS: dict[str, Callable[[], Image]] = {
    "pause": pause_image, "base": base_image, "uv": uv_image, "operator": operator_image,
    "seldon-executor": seldon_executor_image, "mlserver": mlserver_image, "rclone": rclone_image,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build"])
    parser.add_argument("images", nargs="*", default=["pause", "operator"])
    args = parser.parse_args(argv)
    try:
        for name in args.images:
            img = BUILDERS[name]()
            state = f"built in {img.seconds:.1f}s" if img.built else f"cached ({img.seconds:.1f}s)"
            print(f"{img.ref}\t{img.archive}\t{img.size_mib():.0f} MiB\t{state}")
    except (ImageError, KeyError) as err:
        _say(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
