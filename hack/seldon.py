#!/usr/bin/env python3
"""Seldon Core v1.17.1 from its source tree: the controller and the executor, built and cached.

    .venv/bin/python hack/seldon.py build        # prints the directory holding both binaries
    .venv/bin/python hack/seldon.py src          # prints the source tree in use (or why there is none)

The Go module proxy refuses ``github.com/seldonio/seldon-core/operator@v1.17.1`` (403), so the source
comes from a checkout of tag v1.17.1 (the last Apache-2.0 release of Seldon Core v1) whose path is the
setting ``MLOPS_SELDON_SRC``; by default the first that exists of ``<repo>/../shared/third_party/
seldon-core-v1.17.1`` and ``/work/shared/third_party/seldon-core-v1.17.1``. The tree is read-only:
the build runs in a writable copy (``go build -mod=mod .`` in ``operator/``; the executor after copying
``operator/`` to ``executor/_operator``, as its Makefile does, then ``go build -mod=mod ./cmd/executor``).

Binaries are cached in ``~/.cache/mlops-operator/seldon-<hash of the source tree>/`` (``manager`` and
``executor``), one build at a time (flock). Cold: about 5-6 min on 2 cores with an empty Go build
cache; warm: hashing the tree only. The executor needs cgo (gcc): it links librdkafka.

Only the standard library.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images  # noqa: E402  (hack/images.py: run_with_progress)

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTING = "MLOPS_SELDON_SRC"
VERSION = "v1.17.1"
DEFAULT_SOURCES = (REPO_ROOT.parent / "shared" / "third_party" / f"seldon-core-{VERSION}",
                   Path("/work/shared/third_party") / f"seldon-core-{VERSION}")
RECIPE_VERSION = "1"
# The controller builds with CGO off (a static binary, as its Dockerfile does). The executor needs cgo:
# it links librdkafka through confluent-kafka-go (bundled static library), so it is dynamically linked
# against glibc, as Seldon's own image (distroless/base) runs it; our image puts it on Debian bookworm.
LDFLAGS = "-s -w"


class SeldonSourceMissing(RuntimeError):
    """No Seldon Core source tree at the configured path."""


class SeldonBuildError(RuntimeError):
    """The controller or the executor did not build."""


def _say(msg: str) -> None:
    print(f"[seldon] {msg}", file=sys.stderr, flush=True)


def source_dir() -> Path:
    """The Seldon Core v1.17.1 source tree, or SeldonSourceMissing naming the setting."""
    configured = os.environ.get(SETTING)
    candidates = [Path(configured)] if configured else list(DEFAULT_SOURCES)
    for path in candidates:
        if (path / "operator" / "main.go").is_file() and (path / "executor" / "cmd" / "executor").is_dir():
            return path.resolve()
    where = f"{SETTING}={configured}" if configured else \
        f"{SETTING} is unset and none of {', '.join(str(p) for p in DEFAULT_SOURCES)} exists"
    raise SeldonSourceMissing(
        f"no Seldon Core {VERSION} source tree ({where}): set {SETTING} to a checkout of "
        f"github.com/SeldonIO/seldon-core at tag {VERSION} (it needs operator/ and executor/)")


def cache_root() -> Path:
    return Path(os.environ.get("MLOPS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "mlops-operator")


@functools.lru_cache(maxsize=4)
def tree_hash(src: Path) -> str:
    """A digest of every file the two builds read (operator/, executor/, helm chart values)."""
    h = hashlib.sha256(RECIPE_VERSION.encode())
    for sub in ("operator", "executor"):
        for f in sorted(p for p in (src / sub).rglob("*") if p.is_file()):
            rel = str(f.relative_to(src)).encode()
            h.update(len(rel).to_bytes(8, "big") + rel)
            data = f.read_bytes()
            h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def _go(args: list[str], cwd: Path, what: str, log: Path, cgo: bool = False) -> None:
    go = shutil.which("go")
    if not go:
        raise SeldonBuildError(f"Go is required to build the Seldon {what} (apt-get install golang, or go.dev/dl)")
    if cgo and not shutil.which("gcc"):
        raise SeldonBuildError(f"the Seldon {what} needs cgo and there is no gcc (apt-get install gcc)")
    env = {**os.environ, "CGO_ENABLED": "1" if cgo else "0", "GOFLAGS": "-mod=mod"}
    start = time.monotonic()
    code = images.run_with_progress([go, *args], f"still building the {what}", log=log, say=_say, cwd=cwd, env=env)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SeldonBuildError(f"go {' '.join(args)} in {cwd} failed (exit {code}):\n{tail}")
    _say(f"  built the {what} in {time.monotonic() - start:.0f}s")


def build(src: Path | None = None) -> Path:
    """The directory holding ``manager`` (the controller) and ``executor``, built on a cache miss."""
    src = src or source_dir()
    key = tree_hash(src)
    out = cache_root() / f"seldon-{key}"
    if (out / "manager").is_file() and (out / "executor").is_file():
        return out
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".seldon.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("another Seldon build is running; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "manager").is_file() and (out / "executor").is_file():
            return out
        _say(f"building Seldon Core {VERSION} controller and executor from {src} (cache miss, key {key}; "
             "about 4 min cold on 2 cores)")
        start = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        log = out / "build.log"
        log.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="seldon-src-") as tmp:
            work = Path(tmp)
            shutil.copytree(src / "operator", work / "operator", symlinks=True)
            shutil.copytree(src / "executor", work / "executor", symlinks=True)
            shutil.copytree(src / "operator", work / "executor" / "_operator", symlinks=True)
            for p in work.rglob("*"):  # the source may be read-only; go build -mod=mod writes go.sum
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | 0o200)
            _go(["build", "-trimpath", f"-ldflags={LDFLAGS}", "-o", str(out / "manager.tmp"), "."],
                work / "operator", "controller", log)
            _go(["build", "-trimpath", f"-ldflags={LDFLAGS}", "-o", str(out / "executor.tmp"), "./cmd/executor"],
                work / "executor", "executor", log, cgo=True)
        (out / "manager.tmp").replace(out / "manager")
        (out / "executor.tmp").replace(out / "executor")
        _say(f"Seldon binaries ready in {out} ({time.monotonic() - start:.0f}s)")
    for old in cache_root().glob("seldon-*"):  # only the newest build stays
        if old.is_dir() and old != out:
            shutil.rmtree(old, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "src"))
    parser.add_argument("--optional", action="store_true",
                        help="without a source tree print the reason and exit 0 (for `make binaries`)")
    args = parser.parse_args()
    try:
        src = source_dir()
    except SeldonSourceMissing as err:
        _say(str(err))
        return 0 if args.optional else 2
    if args.command == "src":
        print(src)
        return 0
    try:
        print(build(src))
    except SeldonBuildError as err:
        _say(str(err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
