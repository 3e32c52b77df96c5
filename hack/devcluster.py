#!/usr/bin/env python3
"""Local Kubernetes control plane for dev, tests and demo: real etcd, kube-apiserver and
kube-controller-manager on loopback, with generated certificates and real RBAC.

    .venv/bin/python hack/devcluster.py up|down|status|kubeconfig|env

State lives in ``<repo>/.dev`` (override with ``MLOPS_DEV_DIR``): ``pki/``, ``etcd/`` (data),
``logs/``, ``kubeconfig`` and ``state.json`` (pids, ports, binaries). When ``KUBECONFIG`` is set
the CLI leaves everything alone and that cluster is used instead.

Importable: :func:`ensure_cluster`, :func:`stop_cluster`, :func:`cluster_status`,
:func:`kubeconfig_path`, :func:`dev_dir`. Only the standard library and ``cryptography``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import devnode  # noqa: E402  (hack/devnode.py: the optional real node)
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "mlops-dev"

# Only what the operator and its tests rely on: ownerReference GC, namespace deletion,
# ServiceAccounts and their tokens, kube-root-ca.crt in each namespace, and the aggregated
# admin/edit/view ClusterRoles that RBAC for restricted users is built from.
# Extend with MLOPS_DEV_CONTROLLERS (comma-separated, same syntax as --controllers).
DEFAULT_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
)

# What the node (``up --node``) needs on top: node lifecycle (else the not-ready taint stays),
# EndpointSlices (else Services have no endpoints), Deployments/ReplicaSets (the chart), Pod GC, Jobs
# and their TTL (ModelTraining backend job).
NODE_CONTROLLERS = (
    "node-lifecycle-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "deployment-controller",
    "replicaset-controller",
    "pod-garbage-collector-controller",
    "job-controller",
    "ttl-after-finished-controller",
)

# Order matters: started in this order, stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")

START_TIMEOUT_S = float(os.environ.get("MLOPS_DEV_START_TIMEOUT", "180"))
STOP_TIMEOUT_S = 20.0


class DevClusterError(RuntimeError):
    """The dev cluster could not be started or stopped."""


def _say(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- paths and state


def dev_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: ``path`` if given, else ``$MLOPS_DEV_DIR``, else ``<repo>/.dev``."""
    chosen = path or os.environ.get("MLOPS_DEV_DIR") or REPO_ROOT / ".dev"
    return Path(chosen).resolve()


def kubeconfig_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where the dev cluster's admin kubeconfig is written (it may not exist yet)."""
    return dev_dir(path) / "kubeconfig"


def _state_file(d: Path) -> Path:
    return d / "state.json"


def _read_state(d: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_state_file(d).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        _say(f"ignoring unreadable {_state_file(d)}")
        return None


def _write_state(d: Path, state: dict[str, Any]) -> None:
    tmp = _state_file(d).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(_state_file(d))


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """Serialise up/down on one state dir (e.g. `make up` racing a pytest session)."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- processes


def _proc_start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (guards against pid reuse), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The comm field may contain spaces; fields after the closing paren are well-formed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def _is_ours(proc: dict[str, Any], d: Path) -> bool:
    """True if the recorded process is alive and is our binary running for this state dir."""
    pid = proc["pid"]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    if not argv or argv[0].decode(errors="replace") != proc["binary"]:
        return False
    if not any((str(d) + "/").encode() in a for a in argv[1:]):
        return False
    ticks = _proc_start_ticks(pid)
    return ticks is not None and ticks == proc.get("start_ticks", ticks)


def _has_exited(proc: dict[str, Any]) -> bool:
    """True once a process this run started has really exited (gone, a zombie, or its pid reused).

    Judged by the start time recorded at spawn, never by the command line: Popen returns as soon
    as exec closes its error pipe, and for a moment after that the kernel still shows an empty
    ``/proc/<pid>/cmdline`` (the new image's argument pages are set up later). On a busy machine
    that moment is long enough for a start-up check to call a healthy etcd "exited" with an empty
    log. :func:`_is_ours` (which also checks the command line) stays the test for processes read
    back from ``state.json``, whose pids may have been reused since.
    """
    _reap(proc["pid"])
    ticks = _proc_start_ticks(proc["pid"])
    return ticks is None or ticks != proc.get("start_ticks", ticks)


def _reap(pid: int) -> None:
    # If we are the parent (cluster started in this process), collect the exit status so the
    # pid does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(procs: list[dict[str, Any]], d: Path, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            _reap(p["pid"])
        alive = [p for p in procs if _is_ours(p, d)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _stop_processes(procs: list[dict[str, Any]], d: Path) -> None:
    """SIGTERM, wait, SIGKILL, verify: exactly the given (recorded) processes, never by name."""
    for group in (
        [p for p in procs if p["name"] != "etcd"],  # clients first, so they drain cleanly
        [p for p in procs if p["name"] == "etcd"],
    ):
        alive = [p for p in group if _is_ours(p, d)]
        for p in alive:
            _say(f"stopping {p['name']} (pid {p['pid']})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(p["pid"], signal.SIGTERM)
        alive = _wait_gone(alive, d, STOP_TIMEOUT_S)
        for p in alive:
            _say(f"{p['name']} (pid {p['pid']}) ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(p["pid"], signal.SIGKILL)
        alive = _wait_gone(alive, d, 5.0)
        if alive:
            raise DevClusterError(f"processes still running after SIGKILL: {[p['pid'] for p in alive]}")
    _wait_reaped(procs, timeout=3.0)


def _wait_reaped(procs: list[dict[str, Any]], timeout: float) -> None:
    """Best effort: give the reaper (our parent-of-record, often init) a moment to collect the
    exited processes, so `ps` right after `down` shows no <defunct> entries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = []
        for p in procs:
            _reap(p["pid"])
            try:
                if Path(f"/proc/{p['pid']}/cmdline").read_bytes() == b"":  # empty cmdline: zombie
                    left.append(p)
            except (FileNotFoundError, ProcessLookupError):
                pass
        if not left:
            return
        time.sleep(0.05)


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start(name: str, binary: Path, args: list[str], d: Path) -> dict[str, Any]:
    log_path = d / "logs" / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=d,
            start_new_session=True,  # own session: survives us, no controlling terminal
        )
    ticks = _proc_start_ticks(proc.pid)
    _say(f"started {name} (pid {proc.pid}), log {log_path}")
    return {"name": name, "pid": proc.pid, "binary": str(binary), "start_ticks": ticks, "log": str(log_path)}


def _log_tail(proc: dict[str, Any], lines: int = 25) -> str:
    try:
        text = Path(proc["log"]).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------- certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_key(path: Path, key: Any) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _still_valid(cert: x509.Certificate | None, min_days: int = 7) -> bool:
    return cert is not None and cert.not_valid_after_utc - _now() > dt.timedelta(days=min_days)


def _issue(
    pki: Path,
    name: str,
    subject: x509.Name,
    *,
    ca: tuple[x509.Certificate, Any] | None,
    days: int,
    server_sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_cert, issuer_key = ca if ca else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(hours=1))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_sans else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                    content_commitment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )
        if server_sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(server_sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki / f"{name}.key", key)
    return cert, key


def _ensure_pki(d: Path) -> Path:
    """Create (or reuse while valid) the CA, serving/client certificates and the SA key pair."""
    pki = d / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)

    def ensure_ca(name: str) -> tuple[tuple[x509.Certificate, Any], bool]:
        cert = _load_cert(pki / f"{name}.crt")
        if _still_valid(cert, min_days=30) and (pki / f"{name}.key").exists():
            return (cert, serialization.load_pem_private_key((pki / f"{name}.key").read_bytes(), None)), False
        _say(f"generating certificate authority {name}")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mlops-dev-{name}")])
        return _issue(pki, name, subject, ca=None, days=3650), True

    ca, fresh_ca = ensure_ca("ca")
    # Separate CA for the aggregation layer's request-header authentication, as kubeadm does.
    front_proxy_ca, fresh_front_proxy_ca = ensure_ca("front-proxy-ca")

    def cn(common: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    first_service_ip = next(ipaddress.ip_network(devnode.service_cidr()).hosts())
    loopback = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    wanted = {
        "apiserver": dict(
            subject=cn("kube-apiserver"),
            server_sans=loopback
            + [x509.DNSName(n) for n in ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                         "kubernetes.default.svc.cluster.local")]
            + [x509.IPAddress(first_service_ip), x509.IPAddress(ipaddress.ip_address(devnode.NODE_IP))],
        ),
        # The API server's client certificate towards kubelets (logs, exec, port-forward).
        "apiserver-kubelet-client": dict(subject=cn("kube-apiserver-kubelet-client", "system:masters"), client=True),
        "admin": dict(subject=cn("mlops-dev-admin", "system:masters"), client=True),
        "controller-manager": dict(subject=cn("system:kube-controller-manager"), client=True),
        "controller-manager-serving": dict(subject=cn("kube-controller-manager"), server_sans=loopback),
    }
    for name, spec in wanted.items():
        if (fresh_ca or not _still_valid(_load_cert(pki / f"{name}.crt")) or not (pki / f"{name}.key").exists()
                or not _has_sans(_load_cert(pki / f"{name}.crt"), spec.get("server_sans"))):
            _issue(pki, name, ca=ca, days=365, **spec)
    name = "front-proxy-client"
    if fresh_front_proxy_ca or not _still_valid(_load_cert(pki / f"{name}.crt")) or not (pki / f"{name}.key").exists():
        _issue(pki, name, cn(name), ca=front_proxy_ca, days=365, client=True)

    if fresh_ca or not (pki / "sa.key").exists() or not (pki / "sa.pub").exists():
        # ServiceAccount tokens are signed with this RSA key by the apiserver (TokenRequest)
        # and the token controller (legacy secrets); the apiserver verifies with sa.pub.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki / "sa.key", sa_key)
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return pki


def _has_sans(cert: x509.Certificate | None, sans: list[x509.GeneralName] | None) -> bool:
    if cert is None or not sans:
        return True
    try:
        have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return False
    return set(sans) <= have


def _node_cert_issuer(pki: Path) -> Any:
    """issue_cert(name, cn, org, client=False, server_ips=()) for hack/devnode.py (reuses valid ones)."""
    ca = (_load_cert(pki / "ca.crt"), serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None))

    def issue(name: str, common: str, org: str | None, *, client: bool = False, server_ips: tuple[str, ...] = ()) -> None:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips] or None
        cert = _load_cert(pki / f"{name}.crt")
        if (_still_valid(cert) and (pki / f"{name}.key").exists() and _has_sans(cert, sans)
                and cert.subject == x509.Name(attrs) and cert.issuer == ca[0].subject):
            return
        _issue(pki, name, x509.Name(attrs), ca=ca, days=365, server_sans=sans, client=client)

    return issue


def _kubeconfig_text(server: str, pki: Path, user: str, cert: str) -> str:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    # JSON-compatible YAML, written by hand to stay on the standard library.
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {b64('ca.crt')}\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"    client-certificate-data: {b64(cert + '.crt')}\n"
        f"    client-key-data: {b64(cert + '.key')}\n"
        "contexts:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  context:\n"
        f"    cluster: {CLUSTER_NAME}\n"
        f"    user: {user}\n"
        "    namespace: default\n"
        f"current-context: {CLUSTER_NAME}\n"
    )


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


# ---------------------------------------------------------------- HTTP probes


def _admin_ssl(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body); status 0 when the server is not reachable."""
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def _wait_for(
    what: str,
    probe: Any,
    procs: list[dict[str, Any]],
    deadline: float,
) -> None:
    """Poll ``probe() -> (ok, detail)`` until ok; fail fast if a started process dies."""
    start = time.monotonic()
    last_report = start
    while True:
        ok, detail = probe()
        if ok:
            _say(f"{what}: ok after {time.monotonic() - start:.1f}s")
            return
        for p in procs:
            if _has_exited(p):
                raise DevClusterError(f"{p['name']} exited while waiting for {what}; last log lines:\n{_log_tail(p)}")
        now = time.monotonic()
        if now >= deadline:
            raise DevClusterError(f"timed out waiting for {what}: {detail}")
        if now - last_report >= 5:
            _say(f"waiting for {what} ({now - start:.0f}s){': ' + detail if detail else ''}")
            last_report = now
        time.sleep(0.25)


def _readyz_probe(port: int, pki: Path, host: str = "127.0.0.1") -> Any:
    ctx = _admin_ssl(pki)

    def probe() -> tuple[bool, str]:
        code, body = _get(f"https://{host}:{port}/readyz?verbose", ctx)
        if code == 200:
            return True, ""
        failing = [ln.strip() for ln in body.splitlines() if ln.startswith("[-]")]
        return False, ", ".join(failing) or (f"HTTP {code}" if code else "not listening yet")

    return probe


# ---------------------------------------------------------------- public API


def build_binaries(extra: tuple[str, ...] = ()) -> Path:
    """Run hack/build-binaries.sh (progress on stderr) and return the bin directory it prints."""
    if extra:  # the default set first (its own call), then the extra ones
        build_binaries()
    out = subprocess.run(["bash", str(BUILD_SCRIPT), *extra], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise DevClusterError(f"{BUILD_SCRIPT} failed with exit code {out.returncode}")
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise DevClusterError(f"{BUILD_SCRIPT} printed no bin directory")
    return Path(lines[-1])


def _healthy(state: dict[str, Any], d: Path, patience: float = 10.0) -> bool:
    """All recorded processes are ours and alive, and the endpoints answer healthy.

    With live processes the probes are retried for ``patience`` seconds, so a briefly busy
    machine does not get a working cluster torn down.
    """
    procs = state.get("processes", [])
    wanted = set(COMPONENTS) | (set(devnode.NODE_COMPONENTS) if state.get("node") else set())
    if {p["name"] for p in procs} != wanted or not all(_is_ours(p, d) for p in procs):
        return False
    pki = d / "pki"
    ports = state["ports"]
    host = state.get("host", "127.0.0.1")
    admin = _admin_ssl(pki)
    kcm_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    deadline = time.monotonic() + patience
    while True:
        api_ok = _get(f"https://{host}:{ports['apiserver']}/readyz", admin)[0] == 200
        kcm_ok = _get(f"https://127.0.0.1:{ports['controller_manager']}/healthz", kcm_ctx)[0] == 200
        node_ok = not state.get("node") or (api_ok and devnode.node_healthy(_api_json_for(state["server"], pki)))
        if api_ok and kcm_ok and node_ok:
            return True
        if time.monotonic() >= deadline or not all(_is_ours(p, d) for p in procs):
            return False
        time.sleep(0.5)


def node_wanted() -> bool:
    """``MLOPS_DEV_NODE=1`` (``make cluster-up NODE=1``): the cluster gets a real node."""
    return os.environ.get("MLOPS_DEV_NODE", "").lower() in ("1", "true", "yes")


def ensure_cluster(path: str | os.PathLike[str] | None = None, node: bool | None = None) -> Path:
    """Start the dev cluster unless a healthy one is already recorded; return its kubeconfig path.

    With ``node`` (default: :func:`node_wanted`) the cluster also gets a real node
    (hack/devnode.py); a running cluster without one is restarted with one, a running cluster with
    one is kept. This always manages the dev cluster in :func:`dev_dir` (``path``); honouring
    ``KUBECONFIG`` is the caller's decision (the CLI and the pytest fixture do).
    """
    d = dev_dir(path)
    node = node_wanted() if node is None else node
    with _locked(d):
        state = _read_state(d)
        if state and (state.get("node") or not node) and _healthy(state, d):
            _say(f"already running ({state['server']}{', with node ' + devnode.NODE_NAME if state.get('node') else ''})")
            return kubeconfig_path(d)
        if state:
            stale = [p for p in state.get("processes", []) if _is_ours(p, d)]
            why = "has no node" if node and not state.get("node") and stale else "is not healthy"
            _say(f"recorded cluster {why}; stopping {len(stale)} leftover process(es)")
            _stop_all(state, d)
            _state_file(d).unlink(missing_ok=True)
        return _start_cluster(d, node)


def _api_json_for(server: str, pki: Path) -> Any:
    ctx = _admin_ssl(pki)

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                return err.code, json.loads(err.read() or b"{}")
            except ValueError:
                return err.code, {}
        except (urllib.error.URLError, OSError):
            return 0, {}

    return call


def _stop_all(state: dict[str, Any], d: Path) -> None:
    """Stop the node's processes (pods first), then the control plane, then undo host changes."""
    procs = state.get("processes", [])
    node_procs = [p for p in procs if p["name"] in devnode.NODE_COMPONENTS]
    if state.get("node") or node_procs:
        by_name = {p["name"]: p for p in node_procs}
        # The scheduler first (no new Pods), then kubelet (nothing restarts containers) and the rest.
        _stop_processes([by_name[n] for n in ("kube-scheduler", "kubelet", "kube-proxy", "coredns") if n in by_name], d)
        if "containerd" in by_name and _is_ours(by_name["containerd"], d):
            devnode.stop_pods(d)
        _stop_processes([by_name[n] for n in ("containerd",) if n in by_name], d)
    _stop_processes([p for p in procs if p["name"] not in devnode.NODE_COMPONENTS], d)
    if state.get("node"):
        devnode.release_host(d, Path(state["bin_dir"]) if state.get("bin_dir") else None)


def _controllers(node: bool = False) -> str:
    extra = [c.strip() for c in os.environ.get("MLOPS_DEV_CONTROLLERS", "").split(",") if c.strip()]
    return ",".join(dict.fromkeys([*DEFAULT_CONTROLLERS, *(NODE_CONTROLLERS if node else ()), *extra]))


def _start_cluster(d: Path, node: bool = False) -> Path:
    t0 = time.monotonic()
    if node:
        devnode.prepare_host(d)  # packages, stale node cleaned up, the bridge the API server binds
    bin_dir = build_binaries(devnode.NODE_BINARIES if node else ())
    pki = _ensure_pki(d)
    etcd_data = d / "etcd"
    shutil.rmtree(etcd_data, ignore_errors=True)  # every start is a clean cluster
    (d / "logs").mkdir(parents=True, exist_ok=True)
    etcd_client, etcd_peer, api_port, kcm_port = _free_ports(4)
    # With a node, the API server serves on the bridge address: Pods reach it through the
    # `kubernetes` Service, whose endpoint is that address; the host reaches it directly.
    host = devnode.NODE_IP if node else "127.0.0.1"
    server = f"https://{host}:{api_port}"
    kubeconfig = kubeconfig_path(d)
    kcm_kubeconfig = d / "controller-manager.kubeconfig"
    _write_private(kubeconfig, _kubeconfig_text(server, pki, "mlops-dev-admin", "admin"))
    _write_private(kcm_kubeconfig, _kubeconfig_text(server, pki, "system:kube-controller-manager", "controller-manager"))

    state: dict[str, Any] = {
        "dev_dir": str(d),
        "bin_dir": str(bin_dir),
        "kubeconfig": str(kubeconfig),
        "server": server,
        "host": host,
        "node": node,
        "ports": {"etcd_client": etcd_client, "etcd_peer": etcd_peer, "apiserver": api_port,
                  "controller_manager": kcm_port},
        "started_at": _now().isoformat(timespec="seconds"),
        "processes": [],
    }
    procs: list[dict[str, Any]] = state["processes"]
    deadline = time.monotonic() + START_TIMEOUT_S

    def launch(name: str, args: list[str], binary: Path | None = None) -> dict[str, Any]:
        procs.append(_start(name, binary or bin_dir / name, args, d))
        _write_state(d, state)  # recorded at once, so a failed start can still be cleaned up
        return procs[-1]

    try:
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        launch("etcd", [
            "--name=dev",
            f"--data-dir={etcd_data}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=dev={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",  # throwaway data: skip fsync, much faster on slow disks
            "--log-level=warn",
        ])
        _wait_for(
            "etcd /health",
            lambda: (('"health":"true"' in _get(f"{etcd_url}/health")[1]), ""),
            procs, deadline,
        )

        node_args = [
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
        ] if node else [
            # The kubernetes Service cannot have a loopback endpoint; nothing in-cluster needs it.
            "--endpoint-reconciler-type=none",
        ]
        launch("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={devnode.service_cidr()}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--cert-dir={pki}",  # never touch /var/run/kubernetes
            # Aggregation layer; also lets delegated authn (controller-manager) find its CA.
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            *node_args,
            "--allow-privileged=true",
            "--profiling=false",
            "--event-ttl=30m",
        ])
        _wait_for("kube-apiserver /readyz", _readyz_probe(api_port, pki, host), procs, deadline)

        launch("kube-controller-manager", [
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--tls-cert-file={pki / 'controller-manager-serving.crt'}",
            f"--tls-private-key-file={pki / 'controller-manager-serving.key'}",
            "--leader-elect=false",
            f"--controllers={_controllers(node)}",
            "--use-service-account-credentials=true",  # each controller acts under its own RBAC role
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--profiling=false",
        ])
        kcm_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        _wait_for(
            "kube-controller-manager /healthz",
            lambda: (_get(f"https://127.0.0.1:{kcm_port}/healthz", kcm_ctx)[0] == 200, ""),
            procs, deadline,
        )
        admin = _admin_ssl(pki)
        # The default ServiceAccount appearing proves controllers act through the API.
        _wait_for(
            "ServiceAccount default/default",
            lambda: (_get(f"{server}/api/v1/namespaces/default/serviceaccounts/default", admin)[0] == 200, ""),
            procs, deadline,
        )
        if node:
            node_deadline = time.monotonic() + START_TIMEOUT_S  # after builds/imports, a fresh budget
            devnode.start_node(
                d, state,
                launch=lambda name, binary, args: launch(name, args, binary),
                wait_for=lambda what, probe: _wait_for(what, probe, procs, max(deadline, node_deadline)),
                issue_cert=_node_cert_issuer(pki),
                kubeconfig_text=lambda srv, user, cert: _kubeconfig_text(srv, pki, user, cert),
                api_json=_api_json_for(server, pki),
                free_ports=_free_ports,
            )
            _write_state(d, state)
    except BaseException as err:
        _say(f"start failed ({type(err).__name__}: {err}); stopping what was started")
        with contextlib.suppress(DevClusterError, devnode.NodeError):
            _stop_all(state, d)
        _state_file(d).unlink(missing_ok=True)
        if isinstance(err, devnode.NodeError):
            raise DevClusterError(str(err)) from err
        raise

    _say(f"cluster ready in {time.monotonic() - t0:.1f}s: {server}")
    _say(f"export KUBECONFIG={kubeconfig}")
    return kubeconfig


def stop_cluster(path: str | os.PathLike[str] | None = None) -> bool:
    """Stop exactly the recorded processes and wipe state and etcd data (certificates stay).

    Returns False if no cluster was recorded.
    """
    d = dev_dir(path)
    with _locked(d):
        state = _read_state(d)
        if state is None:
            _say(f"no cluster recorded in {d}")
            return False
        _stop_all(state, d)
        shutil.rmtree(d / "etcd", ignore_errors=True)
        for name in ("state.json", "kubeconfig", "controller-manager.kubeconfig"):
            (d / name).unlink(missing_ok=True)
        _say("stopped")
        return True


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def cluster_status(path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The recorded state plus live facts (per-process ``running``/``rss_kib``, ``ready``), or None."""
    d = dev_dir(path)
    state = _read_state(d)
    if state is None:
        return None
    for p in state.get("processes", []):
        p["running"] = _is_ours(p, d)
        p["rss_kib"] = _rss_kib(p["pid"]) if p["running"] else None
    state["ready"] = _healthy(state, d, patience=2.0)
    return state


# ---------------------------------------------------------------- CLI


def _external_kubeconfig() -> str | None:
    return os.environ.get("KUBECONFIG") or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig", "env"])
    parser.add_argument("--node", action="store_true", default=None,
                        help="up: also start a real node (containerd, kubelet, ...); default $MLOPS_DEV_NODE")
    args = parser.parse_args(argv)
    external = _external_kubeconfig()

    if args.command == "kubeconfig":
        print(external or kubeconfig_path())
        return 0
    if args.command == "env":
        print(f"export KUBECONFIG={external or kubeconfig_path()}")
        state = _read_state(dev_dir())
        if state:
            print(f"export PATH={state['bin_dir']}:$PATH")
        return 0
    if external and args.command in ("up", "down"):
        _say(f"KUBECONFIG is set ({external}); using that cluster, nothing to {args.command}")
        return 0
    try:
        if args.command == "up":
            ensure_cluster(node=args.node)
            return 0
        if args.command == "down":
            stop_cluster()
            return 0
    except (DevClusterError, devnode.NodeError) as err:
        _say(f"error: {err}")
        return 1

    # status
    if external:
        print(f"using external cluster from KUBECONFIG={external}")
    status = cluster_status()
    if status is None:
        print(f"no dev cluster recorded in {dev_dir()}")
        return 3
    print(f"dev cluster {status['server']} ({'ready' if status['ready'] else 'NOT ready'}), started {status['started_at']}")
    for p in status["processes"]:
        rss = f"{p['rss_kib'] / 1024:.0f} MiB" if p["rss_kib"] else "-"
        print(f"  {p['name']:<24} pid {p['pid']:<8} {'running' if p['running'] else 'gone':<8} rss {rss}")
    print(f"  kubeconfig {status['kubeconfig']}")
    print(f"  binaries   {status['bin_dir']}")
    return 0 if status["ready"] else 1


if __name__ == "__main__":
    sys.exit(main())
