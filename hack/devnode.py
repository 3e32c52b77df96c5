"""A real node for the local cluster (hack/devcluster.py ``up --node``): containerd + runc from
Debian, a CNI bridge without uplink, kubelet, kube-scheduler and kube-proxy built from the
``hack/kube`` module, and CoreDNS (its Go module) so Pods resolve Service names.

Only one node can run per machine: the kubelet and containerd use fixed host paths
(/var/lib/kubelet/device-plugins, /var/log/containers, /var/lib/cni, /run/netns, /run/containerd),
``kubepods`` cgroups, iptables chains and kernel sysctls. Before changing anything the node writes
a record to ``/run/mlops-operator-node/record.json`` (who owns the node, the sysctls' values and
which fixed paths existed); ``teardown`` undoes all of it, also for a node whose processes died.

What the node changes on the host, all undone by ``make cluster-down``:
- a bridge ``mlops0`` with 10.244.0.1/24, no uplink and no masquerade (Pod traffic stays here);
- iptables/ip6tables chains of kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT)
  and kube-proxy (KUBE-SERVICES, ...);
- sysctls: vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
  kernel.keys.root_max*, net.ipv4.ip_forward;
- mounts (overlay, netns, tmpfs for Secrets) and network namespaces, ``kubepods`` cgroups, and the
  fixed paths above.

Imported by hack/devcluster.py (only the standard library and ``cryptography`` through it).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

BRIDGE = "mlops0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
NODE_NAME = "mlops-node"
CLUSTER_DOMAIN = "cluster.local"

HOST_DIR = Path(os.environ.get("MLOPS_NODE_HOST_DIR", "/run/mlops-operator-node"))
RECORD = HOST_DIR / "record.json"

PACKAGES = {  # what must exist -> the Debian package that provides it
    "/usr/bin/containerd": "containerd",
    "/usr/bin/ctr": "containerd",
    "/usr/sbin/runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/sbin/iptables": "iptables",
    "/usr/sbin/conntrack": "conntrack",
    "/usr/bin/mmdebstrap": "mmdebstrap",
    "/usr/bin/buildah": "buildah",
}

SYSCTLS = (
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
)
FIXED_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/netns",
               "/run/containerd")

NODE_COMPONENTS = ("containerd", "coredns", "kubelet", "kube-scheduler", "kube-proxy")
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "coredns")  # hack/build-binaries.sh targets


class NodeError(RuntimeError):
    """The node could not be started or cleaned up."""


def _say(msg: str) -> None:
    print(f"[devnode] {msg}", file=sys.stderr, flush=True)


def _sh(cmd: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if check and out.returncode != 0:
        raise NodeError(f"{' '.join(cmd)} failed (exit {out.returncode}): {out.stdout.strip()[-2000:]}")
    return out


def node_dir(d: Path) -> Path:
    return d / "node"


def containerd_root() -> Path:
    """containerd's content and snapshots live in the cache, so imported images survive a
    cluster-down (only one node per machine uses it)."""
    base = os.environ.get("MLOPS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-operator"
    return Path(base) / "containerd-root"


def containerd_socket(d: Path) -> Path:
    return node_dir(d) / "containerd" / "containerd.sock"


# ---------------------------------------------------------------- preconditions


def why_not_possible() -> str | None:
    """None when this machine can run the node, else the exact reason."""
    if sys.platform != "linux":
        return f"the node needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the node needs root (containerd, kubelet, bridges, iptables); this user is uid " + str(os.geteuid())
    if not Path("/sys/fs/cgroup").exists():
        return "no cgroup filesystem at /sys/fs/cgroup"
    missing = [pkg for path, pkg in PACKAGES.items() if not Path(path).exists()]
    if missing and not shutil.which("apt-get"):
        return f"missing Debian packages {sorted(set(missing))} and no apt-get to install them"
    return None


def ensure_packages() -> None:
    """apt-get install what is missing (progress streamed)."""
    missing = sorted({pkg for path, pkg in PACKAGES.items() if not Path(path).exists()})
    if not missing:
        return
    _say(f"installing Debian packages {' '.join(missing)} (about 30 s)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    start = time.monotonic()
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout
        for line in proc.stdout:
            if line.startswith(("Get:", "Setting up", "Unpacking", "E:")):
                _say("  " + line.rstrip())
        if proc.wait() != 0:
            raise NodeError(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    still = [p for p in PACKAGES if not Path(p).exists()]
    if still:
        raise NodeError(f"still missing after apt-get install: {still}")
    _say(f"packages installed in {time.monotonic() - start:.0f}s")


# ---------------------------------------------------------------- the machine-wide record


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Serialises node start/teardown across every checkout on this machine."""
    HOST_DIR.mkdir(parents=True, exist_ok=True)
    with open(HOST_DIR.parent / "mlops-operator-node.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_record() -> dict[str, Any] | None:
    try:
        return json.loads(RECORD.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_record(rec: dict[str, Any]) -> None:
    HOST_DIR.mkdir(parents=True, exist_ok=True)
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    tmp.replace(RECORD)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctls() -> dict[str, str]:
    out = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            out[name] = _sysctl_path(name).read_text().strip()
    return out


def host_snapshot() -> dict[str, Any]:
    """What a node leaves on the host, for the test that checks teardown left nothing behind."""
    chains = {}
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool + "-save"):
            text = _sh([tool + "-save"], check=False).stdout
            chains[tool] = sorted({ln.split()[0][1:] for ln in text.splitlines()
                                   if ln.startswith(":") and ln[1:].startswith(("KUBE-", "CNI-"))})
    mounts = [m for m in _mounts() if _node_mount(m, None)]
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods*")) + sorted(
        str(p) for p in Path("/sys/fs/cgroup").glob("kubepods*"))
    netns = sorted(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else []
    return {
        "chains": chains,
        "mounts": mounts,
        "cgroups": cgroups,
        "netns": netns,
        "bridge": Path(f"/sys/class/net/{BRIDGE}").exists(),
        "paths": [p for p in FIXED_PATHS if Path(p).exists()],
        "sysctls": _read_sysctls(),
        "record": RECORD.exists(),
    }


# ---------------------------------------------------------------- configuration files


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _containerd_config(d: Path, pause_ref: str) -> Path:
    nd = node_dir(d)
    sock = containerd_socket(d)
    return _write(nd / "containerd.toml", f"""\
version = 2
root = "{containerd_root()}"
state = "{nd / 'containerd' / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_ref}"
  # This VM's bounding set lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{nd / 'containerd' / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{nd / 'cni'}"
""")


def _cni_config(d: Path) -> None:
    nd = node_dir(d)
    net = ipaddress.ip_network(POD_CIDR)
    conf = {
        "cniVersion": "1.0.0",
        "name": "mlops",
        "plugins": [
            {
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net), "gateway": NODE_IP}]],
                    # Only the Service range via the node: no default route, nothing leaves the machine.
                    "routes": [{"dst": service_cidr()}],
                    "dataDir": str(nd / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    cni = nd / "cni"
    shutil.rmtree(cni, ignore_errors=True)
    _write(cni / "10-mlops.conflist", json.dumps(conf, indent=2))


def service_cidr() -> str:
    """The Services' ClusterIP range: ``$MLOPS_DEV_SERVICE_CIDR``, else 10.0.0.0/24 (253 Services)."""
    from_env = os.environ.get("MLOPS_DEV_SERVICE_CIDR")
    return from_env or "10.0.0.0/24"


def _kubelet_config(d: Path, pki: Path) -> Path:
    nd = node_dir(d)
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "resolvConf": "",
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "podLogsDir": str(nd / "pod-logs"),
        "containerRuntimeEndpoint": f"unix://{containerd_socket(d)}",
        "evictionHard": {"memory.available": "1%", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        # Locally imported images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
        "oomScoreAdj": 0,
        "maxPods": 110,
    }
    return _write(nd / "kubelet.json", json.dumps(conf, indent=2))


def _kube_proxy_config(d: Path, kubeconfig: Path, ports: dict[str, int]) -> Path:
    conf = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{ports['proxy_healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['proxy_metrics']}",
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_CIDR,
        "nodePortAddresses": [f"{NODE_IP}/32"],
        # Do not touch the conntrack sysctls (the VM does not allow all of them).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "oomScoreAdj": 0,
    }
    return _write(node_dir(d) / "kube-proxy.json", json.dumps(conf, indent=2))


def _corefile(d: Path, kubeconfig: Path, context: str, health_port: int) -> Path:
    return _write(node_dir(d) / "Corefile", f"""\
.:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{health_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} {context}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 10
}}
""")


# ---------------------------------------------------------------- host setup


def _ensure_bridge() -> None:
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        _sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = _sh(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout
    prefix = ipaddress.ip_network(POD_CIDR).prefixlen
    if f"{NODE_IP}/{prefix}" not in addrs:
        _sh(["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE])
    _sh(["ip", "link", "set", BRIDGE, "up"])


def prepare_host(d: Path) -> None:
    """Before the control plane starts: packages, a clean host (stale node removed), the record
    and the bridge (the API server binds its address)."""
    reason = why_not_possible()
    if reason:
        raise NodeError(reason)
    ensure_packages()
    with machine_lock():
        rec = read_record()
        if rec and rec.get("owner") != str(d):
            owner = Path(rec["owner"])
            alive = _owner_alive(owner)
            if alive:
                raise NodeError(
                    f"a node is already running on this machine for {owner} (pids {alive}); only one can run "
                    f"at a time. Stop it with: MLOPS_DEV_DIR={owner} {sys.executable} hack/devcluster.py down")
            _say(f"a node recorded for {owner} is gone; cleaning up what it left on the host")
        if rec or _leftovers():
            teardown_host(rec, d)
        _write_record({
            "owner": str(d),
            "sysctls": _read_sysctls(),
            "absent_paths": [p for p in FIXED_PATHS if not Path(p).exists()],
            "containerd_socket": str(containerd_socket(d)),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        _ensure_bridge()


def _owner_alive(owner: Path) -> list[int]:
    try:
        state = json.loads((owner / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    alive = []
    for p in state.get("processes", []):
        try:
            argv = Path(f"/proc/{p['pid']}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace") == p["binary"] and any(
                (str(owner) + "/").encode() in a for a in argv[1:]):
            alive.append(p["pid"])
    return alive


def _leftovers() -> bool:
    snap = host_snapshot()
    return bool(any(snap["chains"].values()) or snap["mounts"] or snap["cgroups"] or snap["netns"] or snap["bridge"])


# ---------------------------------------------------------------- start


def start_node(
    d: Path,
    state: dict[str, Any],
    launch: Callable[[str, Path, list[str]], dict[str, Any]],
    wait_for: Callable[[str, Callable[[], tuple[bool, str]]], None],
    issue_cert: Callable[..., None],
    kubeconfig_text: Callable[[str, str, str], str],
    api_json: Callable[..., tuple[int, Any]],
    free_ports: Callable[[int], list[int]],
) -> None:
    """Start containerd, CoreDNS, kubelet, kube-scheduler and kube-proxy and wait for a Ready node.

    The callables come from hack/devcluster.py (process launch and bookkeeping, probes, PKI)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import images  # hack/images.py

    t0 = time.monotonic()
    nd = node_dir(d)
    for sub in ("containerd", "pod-logs", "kubelet", "cni-ipam"):
        (nd / sub).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(nd / "cni-ipam", ignore_errors=True)
    bin_dir = Path(state["bin_dir"])
    server = state["server"]
    pki = d / "pki"

    issue_cert("kubelet", f"system:node:{NODE_NAME}", "system:nodes", client=True)
    issue_cert("kubelet-serving", NODE_NAME, None, server_ips=[NODE_IP])
    issue_cert("kube-scheduler", "system:kube-scheduler", None, client=True)
    issue_cert("kube-proxy", "system:kube-proxy", None, client=True)
    issue_cert("coredns", "mlops-dev:coredns", None, client=True)
    kc = {}
    for name, user in (("kubelet", f"system:node:{NODE_NAME}"), ("kube-scheduler", "system:kube-scheduler"),
                       ("kube-proxy", "system:kube-proxy"), ("coredns", "mlops-dev:coredns")):
        kc[name] = _write(nd / f"{name}.kubeconfig", kubeconfig_text(server, user, name), 0o600)

    # CoreDNS reads Services, EndpointSlices, Pods and Namespaces (the rules of its upstream role).
    def put(path: str, body: dict[str, Any]) -> None:
        code, answer = api_json("PUT", path, body)
        if code not in (200, 201):
            raise NodeError(f"PUT {path}: HTTP {code} {answer.get('message', '')}")

    put("/apis/rbac.authorization.k8s.io/v1/clusterroles/mlops-dev:coredns", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "mlops-dev:coredns"},
        "rules": [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ]})
    put("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/mlops-dev:coredns", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "mlops-dev:coredns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "mlops-dev:coredns"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mlops-dev:coredns"}],
    })

    pause = images.pause_image()
    cfg = _containerd_config(d, pause.ref)
    _cni_config(d)
    launch("containerd", Path("/usr/bin/containerd"), [f"--config={cfg}", "--log-level=warn"])
    sock = containerd_socket(d)
    wait_for("containerd", lambda: (_sh(_ctr(d, "version"), check=False).returncode == 0, ""))
    # containerd answers `ctr version` before its CRI plugin has loaded its state (longer with many
    # cached images); a kubelet started then exits with "server is not initialized yet".
    wait_for("containerd's CRI", lambda: _cri_ready(sock))
    import_images(d, [pause])

    ports = dict(zip(("scheduler", "proxy_healthz", "proxy_metrics", "coredns_health"), free_ports(4)))
    state["ports"].update({f"node_{k}": v for k, v in ports.items()})

    corefile = _corefile(d, kc["coredns"], "mlops-dev", ports["coredns_health"])
    launch("coredns", bin_dir / "coredns", ["-conf", str(corefile)])

    kubelet_cfg = _kubelet_config(d, pki)
    launch("kubelet", bin_dir / "kubelet", [
        f"--config={kubelet_cfg}",
        f"--kubeconfig={kc['kubelet']}",
        f"--root-dir={nd / 'kubelet'}",
        f"--cert-dir={nd / 'kubelet' / 'pki'}",
        f"--node-ip={NODE_IP}",
        f"--hostname-override={NODE_NAME}",
        "--v=1",
    ])
    sched_certs = nd / "scheduler-certs"
    sched_certs.mkdir(exist_ok=True)
    launch("kube-scheduler", bin_dir / "kube-scheduler", [
        f"--kubeconfig={kc['kube-scheduler']}",
        f"--authentication-kubeconfig={kc['kube-scheduler']}",
        f"--authorization-kubeconfig={kc['kube-scheduler']}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['scheduler']}",
        f"--cert-dir={sched_certs}",
        "--leader-elect=false",
        "--profiling=false",
    ])
    proxy_cfg = _kube_proxy_config(d, kc["kube-proxy"], ports)
    launch("kube-proxy", bin_dir / "kube-proxy", [f"--config={proxy_cfg}"])

    def node_ready() -> tuple[bool, str]:
        code, body = api_json("GET", f"/api/v1/nodes/{NODE_NAME}")
        if code != 200:
            return False, "not registered yet"
        conds = {c["type"]: c for c in body.get("status", {}).get("conditions", [])}
        ready = conds.get("Ready", {})
        taints = [t["key"] for t in body.get("spec", {}).get("taints", []) or []]
        if ready.get("status") == "True" and not taints:
            return True, ""
        return False, f"Ready={ready.get('status')} {ready.get('message', '')} taints={taints}"

    wait_for(f"node {NODE_NAME} Ready", node_ready)

    def kubernetes_endpoints() -> tuple[bool, str]:
        code, body = api_json("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
        eps = [a for e in (body.get("endpoints") or [] if code == 200 else []) for a in e.get("addresses", [])]
        return (NODE_IP in eps), f"kubernetes EndpointSlice addresses {eps}"

    wait_for("Service kubernetes has endpoints", kubernetes_endpoints)
    _say(f"node {NODE_NAME} ready in {time.monotonic() - t0:.1f}s (pods {POD_CIDR} on bridge {BRIDGE})")


def _cri_ready(sock: Path) -> tuple[bool, str]:
    """Whether containerd's CRI answers RuntimeService.Status (what kubelet validates at start), and why not."""
    import grpc  # a dependency of the project's venv (through kfp)

    try:
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            status = channel.unary_unary("/runtime.v1.RuntimeService/Status",
                                         request_serializer=lambda b: b, response_deserializer=lambda b: b)
            status(b"", timeout=5)
        return True, ""
    except grpc.RpcError as error:
        return False, f"CRI: {error.details() if hasattr(error, 'details') else error}"


def _ctr(d: Path, *args: str) -> list[str]:
    return ["/usr/bin/ctr", "--address", str(containerd_socket(d)), "--namespace", "k8s.io", *args]


def import_images(d: Path, imgs: list[Any]) -> None:
    """``ctr images import`` each docker-archive unless containerd already has that reference."""
    have = set(_sh(_ctr(d, "images", "ls", "-q"), check=False).stdout.split())
    for img in imgs:
        if img.ref in have:
            continue
        _say(f"importing {img.ref} into the node's containerd ({img.size_mib():.0f} MiB)")
        start = time.monotonic()
        _sh(_ctr(d, "images", "import", "--snapshotter", "overlayfs", str(img.archive)))
        _say(f"imported {img.ref} in {time.monotonic() - start:.1f}s")


def node_healthy(api_json: Callable[..., tuple[int, Any]]) -> bool:
    code, body = api_json("GET", f"/api/v1/nodes/{NODE_NAME}")
    if code != 200:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in body.get("status", {}).get("conditions", []))


# ---------------------------------------------------------------- teardown


def _mounts() -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            out.append(mp)
    return out


def _node_mount(mp: str, d: Path | None) -> bool:
    prefixes = ["/run/netns/", "/run/containerd/", "/var/lib/kubelet/", str(containerd_root()) + "/"]
    if d is not None:
        prefixes.append(str(node_dir(d)) + "/")
    else:
        prefixes.append("/node/kubelet/")  # any dev dir's kubelet root
        prefixes.append("/node/containerd/")
    return any(mp.startswith(p) or (p.startswith("/node/") and p in mp) for p in prefixes)


def _kill_pids(pids: list[int], what: str) -> None:
    for pid in pids:
        _say(f"killing leftover {what} pid {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _not_zombie(p) for p in pids):
        time.sleep(0.1)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _pod_pids() -> list[int]:
    """Processes in kubepods cgroups (containers and their sandboxes)."""
    pids: set[int] = set()
    for procs in list(Path("/sys/fs/cgroup").glob("*/kubepods*/**/cgroup.procs")) + list(
            Path("/sys/fs/cgroup").glob("kubepods*/**/cgroup.procs")):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(x) for x in procs.read_text().split())
    pids.discard(os.getpid())
    return sorted(pids)


def _node_process_pids(owner: Path) -> list[int]:
    """Processes of a node whose state is lost: argv[0] is one of ours and an argument points
    into ``<owner>/node/`` (the config files every node process is started with)."""
    marker = (str(node_dir(owner)) + "/").encode()
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).name in NODE_COMPONENTS and any(marker in a for a in argv[1:]):
            out.append(int(p.name))
    return out


def _shim_pids(sock: str) -> list[int]:
    """containerd-shim processes started by our containerd (their argv names its socket)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and sock.encode() in b" ".join(argv):
            out.append(int(p.name))
    return out


def stop_pods(d: Path) -> None:
    """With kubelet stopped and containerd still up: kill every container task, then the shims."""
    sock = containerd_socket(d)
    if not sock.exists():
        return
    tasks = _sh(_ctr(d, "tasks", "ls", "-q"), check=False)
    ids = tasks.stdout.split() if tasks.returncode == 0 else []
    if ids:
        _say(f"killing {len(ids)} container task(s)")
    for cid in ids:
        _sh(_ctr(d, "tasks", "kill", "--signal", "SIGKILL", cid), check=False)
    deadline = time.monotonic() + 15
    for cid in ids:
        while time.monotonic() < deadline:
            if _sh(_ctr(d, "tasks", "delete", cid), check=False).returncode == 0:
                break
            time.sleep(0.2)


def _iptables_cleanup() -> None:
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool + "-save"):
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            text = _sh([tool + "-save", "-t", table], check=False).stdout
            ours = [ln.split()[0][1:] for ln in text.splitlines()
                    if ln.startswith(":") and ln[1:].startswith(("KUBE-", "CNI-"))]
            if not ours:
                continue
            # Rules in other chains that jump to ours first, then our chains.
            for ln in text.splitlines():
                if ln.startswith("-A ") and ln.split()[1] not in ours and any(f"-j {c}" in ln for c in ours):
                    _sh([tool, "-w", "-t", table, "-D", *ln.split()[1:]], check=False)
            for c in ours:
                _sh([tool, "-w", "-t", table, "-F", c], check=False)
            for c in ours:
                _sh([tool, "-w", "-t", table, "-X", c], check=False)


def _unmount_all(d: Path | None) -> None:
    for attempt in range(3):
        mps = sorted({m for m in _mounts() if _node_mount(m, d)}, key=len, reverse=True)
        if not mps:
            return
        for mp in mps:
            if _sh(["umount", mp], check=False).returncode != 0:
                _sh(["umount", "-l", mp], check=False)
    left = [m for m in _mounts() if _node_mount(m, d)]
    if left:
        raise NodeError(f"mounts still present after unmounting: {left}")


def _remove_cgroups() -> None:
    roots = list(Path("/sys/fs/cgroup").glob("*/kubepods*")) + list(Path("/sys/fs/cgroup").glob("kubepods*"))
    for root in roots:
        if not root.is_dir():
            continue
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for p in [*dirs, root]:
            for _ in range(20):
                try:
                    p.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def teardown_host(rec: dict[str, Any] | None, d: Path | None, kube_proxy: Path | None = None) -> None:
    """Undo every host change a node makes (its processes must already be stopped)."""
    owner = Path(rec["owner"]) if rec else d
    sock = rec.get("containerd_socket") if rec else (str(containerd_socket(d)) if d else None)
    if owner:
        stray = _node_process_pids(owner)
        if stray:
            _kill_pids(stray, "node process")
    if sock:
        shims = _shim_pids(sock)
        if shims:
            _kill_pids(shims, "containerd shim")
    pods = _pod_pids()
    if pods:
        _kill_pids(pods, "pod process")
    if kube_proxy and kube_proxy.exists():
        _sh([str(kube_proxy), "--cleanup"], check=False)
    _iptables_cleanup()
    _unmount_all(owner)
    _unmount_all(None)
    if Path("/run/netns").is_dir():
        for ns in Path("/run/netns").iterdir():
            if ns.name.startswith("cni-"):
                ns.unlink(missing_ok=True)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _sh(["ip", "link", "del", BRIDGE], check=False)
    _remove_cgroups()
    if rec:
        for name, value in rec.get("sysctls", {}).items():
            with contextlib.suppress(OSError):
                if _sysctl_path(name).read_text().strip() != value:
                    _sysctl_path(name).write_text(value)
        for p in rec.get("absent_paths", []):
            shutil.rmtree(p, ignore_errors=True)
    if owner:
        for sub in ("containerd", "kubelet", "cni-ipam", "pod-logs", "scheduler-certs"):
            shutil.rmtree(node_dir(owner) / sub, ignore_errors=True)
    RECORD.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        HOST_DIR.rmdir()


def release_host(d: Path, bin_dir: Path | None) -> None:
    """After the node's processes stopped: undo the host changes under the machine lock."""
    with machine_lock():
        rec = read_record()
        if rec and rec.get("owner") != str(d):
            _say(f"the node record belongs to {rec.get('owner')}; leaving the host alone")
            return
        teardown_host(rec, d, (bin_dir / "kube-proxy") if bin_dir else None)
    with contextlib.suppress(OSError):
        (HOST_DIR.parent / "mlops-operator-node.lock").unlink()
