"""The real Kubeflow Pipelines API server for the tests (KFP 2.17.0's backend, built from source by
hack/build-kfp.sh), with what it needs, all as loopback processes against the test cluster:

* Debian's MariaDB (``mariadb-server``, apt-get installed when missing; root) as a plain process
  with its data in a temporary directory; KFP creates its tables on first start;
* an S3 server (the session's MinIO, tests/s3_support.py); the API server creates its bucket;
* on the cluster: the Argo Workflows CRDs and KFP's ScheduledWorkflow CRD (from the build's
  ``crds/``), a namespace of this session (KFP's ``POD_NAMESPACE``, where runs become Workflows) with
  the ServiceAccount ``pipeline-runner``; the namespace, and so every Workflow and ScheduledWorkflow
  in it, is deleted at the end;
* the API server, the ScheduledWorkflow controller and the persistence agent.

What cannot run here: Argo's workflow controller (no Pods of a pipeline run: KFP's driver needs ML
Metadata, whose server cannot be built here), so a test moves a run by patching its Workflow's
``status.phase``, as Argo's controller would; the persistence agent reports it to the API server.

:func:`start_kfp` starts everything in order and, on any failure or timeout, stops what it started
before raising. The facts behind the settings (ports, environment, the agent's token file, the
API server ignoring a first SIGTERM) are in ``$MLOPS_KFP_SRC/README.md``
(../shared/third_party/kubeflow-pipelines-2.17.0).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from server_support import REPO, LoopbackServer, ServerError, free_ports

BUILD_SCRIPT = REPO / "hack" / "build-kfp.sh"
SKIP_EXIT = 3  # build-kfp.sh: no KFP source here (outside CI)
MARIADB_PACKAGE = "mariadb-server"
# A constant of the persistence agent (backend/src/agent/persistence/client/tokenrefresher): no flag.
AGENT_TOKEN_FILE = Path("/var/run/secrets/kubeflow/tokens/persistenceagent-sa-token")
RUNNER_SERVICE_ACCOUNT = "pipeline-runner"
WORKFLOWS = ("argoproj.io", "v1alpha1")
SCHEDULED_WORKFLOWS = ("kubeflow.org", "v1beta1")


class KfpServerError(ServerError):
    """The KFP backend could not be built or started."""


class KfpUnavailable(Exception):
    """The KFP backend cannot run on this machine (no source, not root, no apt-get): skip, outside CI."""


def _say(message: str) -> None:
    print(f"[kfp-server] {message}", file=sys.stderr, flush=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def build_kfp() -> Path:
    """The directory with the built binaries and CRDs (hack/build-kfp.sh; progress on stderr)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            check=False)
    sys.stderr.write(result.stderr)
    lines = result.stdout.strip().splitlines()
    if result.returncode == SKIP_EXIT:
        raise KfpUnavailable(result.stderr.strip().splitlines()[-1])
    if result.returncode != 0 or not lines:
        raise KfpServerError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}:\n{result.stderr[-3000:]}")
    return Path(lines[-1])


def ensure_mariadb() -> None:
    """Debian's mariadb-server, installed with apt-get when missing (as hack/devnode.py installs containerd)."""
    if shutil.which("mariadbd") and shutil.which("mariadb-install-db"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise KfpUnavailable(f"Debian's {MARIADB_PACKAGE} is not installed and cannot be installed here "
                             "(needs root and apt-get): apt-get install mariadb-server")
    _say(f"installing Debian's {MARIADB_PACKAGE} (apt-get, about a minute)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    start = time.monotonic()
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", MARIADB_PACKAGE]):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout
        for line in proc.stdout:
            if line.startswith(("Get:", "Setting up", "E:")):
                _say("  " + line.rstrip())
        if proc.wait() != 0:
            raise KfpServerError(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    # The package's service may have been started by its postinst; this fixture runs its own server.
    if not shutil.which("mariadbd"):
        raise KfpServerError(f"no mariadbd after apt-get install {MARIADB_PACKAGE}")
    _say(f"{MARIADB_PACKAGE} installed in {time.monotonic() - start:.0f}s")


class _Process(LoopbackServer):
    """A LoopbackServer whose readiness is not an HTTP 200 (or is, via wait_ok)."""

    def wait_for(self, probe, timeout: float, what: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not probe():
            if self.process.poll() is not None:
                raise self.error(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise self.error(f"{self.name}: no {what} within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)


class MariaDb(_Process):
    """One mariadbd on 127.0.0.1 with its data under ``workdir``, and a user for KFP."""

    name = "mariadb"
    error = KfpServerError

    def __init__(self, workdir: Path):
        super().__init__(Path(shutil.which("mariadbd") or "mariadbd"), workdir)
        self.user = "kfp"
        self.password = secrets.token_urlsafe(18)  # generated per run, never logged
        self.socket = workdir / "mysqld.sock"

    def _client(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root", *args],
                              capture_output=True, text=True, timeout=30, check=False)

    def start(self, timeout: float = 90.0) -> None:
        data = self.workdir / "data"
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = ["--user=root"] if os.geteuid() == 0 else []
        init = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", *root,
                               "--auth-root-authentication-method=normal", "--skip-test-db"],
                              capture_output=True, text=True, timeout=300, check=False)
        if init.returncode != 0:
            raise self.error(f"mariadb-install-db failed (exit {init.returncode}):\n"
                             f"{init.stdout[-2000:]}{init.stderr[-2000:]}")
        (self.port,) = free_ports(1)
        self.spawn([str(self.binary), "--no-defaults", f"--datadir={data}", *root, "--bind-address=127.0.0.1",
                    f"--port={self.port}", f"--socket={self.socket}", f"--pid-file={self.workdir / 'mysqld.pid'}",
                    "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=64M"])
        try:
            self.wait_for(lambda: self.socket.exists() and self._client("-e", "SELECT 1").returncode == 0, timeout,
                          "answer on its socket")
            # root only through the socket; KFP's user only from loopback.
            created = self._client("-e", "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost'; "
                                         f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}'; "
                                         f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1'; FLUSH PRIVILEGES;")
            if created.returncode != 0:
                raise self.error(f"creating the KFP user failed: {created.stderr.strip()}")
        except BaseException:
            self.stop()
            raise


class KfpApiServer(_Process):
    """KFP's API server (REST on ``url``, gRPC on ``rpc_port``)."""

    name = "kfp-apiserver"
    error = KfpServerError

    def __init__(self, binary: Path, workdir: Path, kubeconfig: str, namespace: str, db: MariaDb, s3: Any):
        super().__init__(binary, workdir)
        self.kubeconfig, self.namespace, self.db, self.s3 = kubeconfig, namespace, db, s3
        self.rpc_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        config_dir = self.workdir / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        host, port = self.s3.endpoint_url.removeprefix("http://").rsplit(":", 1)
        config = {
            "DBDriverName": "mysql",
            "DBConfig": {"MySQLConfig": {"Host": "127.0.0.1", "Port": str(self.db.port), "User": self.db.user,
                                         "Password": self.db.password, "DBName": "mlpipeline",
                                         "GroupConcatMaxLen": "4194304"},
                         "ConMaxLifeTime": "120s"},
            "ObjectStoreConfig": {"Host": host, "Port": port, "Secure": False, "AccessKey": self.s3.access_key,
                                  "SecretAccessKey": self.s3.secret_key, "BucketName": "mlpipeline",
                                  "PipelinePath": "pipelines", "Region": "us-east-1"},
            "InitConnectionTimeout": "60s",
            "DEFAULTPIPELINERUNNERSERVICEACCOUNT": RUNNER_SERVICE_ACCOUNT,
            "CacheEnabled": "false",
            "CRON_SCHEDULE_TIMEZONE": "UTC",
        }
        config_file = config_dir / "config.json"
        config_file.write_text(json.dumps(config, indent=2))
        config_file.chmod(0o600)  # holds the generated DB and S3 passwords
        self.port, self.rpc_port, webhook_port = free_ports(3)
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, POD_NAMESPACE=self.namespace, MULTIUSER="false",
                   # Only written into compiled Workflows (their Pods do not run here).
                   V2_DRIVER_IMAGE="ghcr.io/kubeflow/kfp-driver:2.17.0",
                   V2_LAUNCHER_IMAGE="ghcr.io/kubeflow/kfp-launcher:2.17.0",
                   # Required at start (config.go), used only by the UI's visualizations.
                   ML_PIPELINE_VISUALIZATIONSERVER_SERVICE_HOST="127.0.0.1",
                   ML_PIPELINE_VISUALIZATIONSERVER_SERVICE_PORT="1")
        # The REST gateway dials "localhost" + rpcPortFlag, so the RPC flag must be ":<port>".
        self.spawn([str(self.binary), f"--config={config_dir}", f"--httpPortFlag=127.0.0.1:{self.port}",
                    f"--rpcPortFlag=:{self.rpc_port}", f"--webhookPortFlag=127.0.0.1:{webhook_port}",
                    "--logtostderr=true", "--sampleconfig="], env=env)
        try:
            self.wait_ok(f"{self.url}/apis/v2beta1/healthz", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 10.0) -> None:
        # The API server ignores the first SIGTERM; the second stops it.
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(1)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        super().stop(grace)


class KfpController(_Process):
    """The ScheduledWorkflow controller or the persistence agent: talks to the cluster and the API server."""

    error = KfpServerError

    def __init__(self, name: str, binary: Path, workdir: Path, kubeconfig: str, namespace: str, api: KfpApiServer):
        self.name = name
        super().__init__(binary, workdir)
        self.kubeconfig, self.namespace, self.api = kubeconfig, namespace, api

    def start(self, argv: list[str], ready_line: str, timeout: float = 60.0) -> None:
        # The ScheduledWorkflow controller reads KUBECONFIG from its environment (the flag alone is not enough).
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, POD_NAMESPACE=self.namespace, MULTIUSER="false")
        self.spawn([str(self.binary), f"--kubeconfig={self.kubeconfig}", f"--namespace={self.namespace}",
                    "--mlPipelineAPIServerName=127.0.0.1", f"--mlPipelineServiceGRPCPort={self.api.rpc_port}",
                    *argv], env=env)
        try:
            self.wait_for(lambda: ready_line in self.log_path.read_text(errors="replace"), timeout, repr(ready_line))
        except BaseException:
            self.stop()
            raise


@dataclass
class KfpBackend:
    """The running KFP backend: ``url`` for kfp.Client, ``namespace`` where runs become Workflows."""

    url: str
    namespace: str
    api_client: Any
    api: KfpApiServer
    processes: list[LoopbackServer] = field(default_factory=list)

    def _custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def scheduled_workflows(self) -> list[dict[str, Any]]:
        custom = self._custom()
        return custom.list_namespaced_custom_object(*SCHEDULED_WORKFLOWS, self.namespace, "scheduledworkflows")["items"]

    def workflows(self, label_selector: str = "") -> list[dict[str, Any]]:
        return self._custom().list_namespaced_custom_object(*WORKFLOWS, self.namespace, "workflows",
                                                            label_selector=label_selector)["items"]

    def workflow_of_run(self, run_id: str) -> dict[str, Any] | None:
        found = self.workflows(f"pipeline/runid={run_id}")
        return found[0] if found else None

    def set_workflow_phase(self, name: str, phase: str, message: str | None = None) -> None:
        """What Argo's workflow controller would write (it cannot run here): the Workflow's phase,
        with its start/finish times; the persistence agent reports it to the API server."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status: dict[str, Any] = {"phase": phase, "startedAt": now}
        if phase in ("Succeeded", "Failed", "Error"):
            status["finishedAt"] = now
        if message:
            status["message"] = message
        body: dict[str, Any] = {"status": status}
        if "finishedAt" in status:  # Argo labels a finished Workflow so; the ScheduledWorkflow controller counts on it
            body["metadata"] = {"labels": {"workflows.argoproj.io/completed": "true"}}
        self._custom().patch_namespaced_custom_object(*WORKFLOWS, self.namespace, "workflows", name, body)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.log_tail(40)}" for p in self.processes)


def _ensure_agent_token(stack: ExitStack) -> None:
    """The persistence agent's token file (a fixed path; single-user KFP does not check the token,
    and it must not end in a newline). Removed at the end when this session wrote it."""
    if AGENT_TOKEN_FILE.exists():
        return
    try:
        AGENT_TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        AGENT_TOKEN_FILE.write_text("mlops-operator-tests")
    except OSError as error:
        raise KfpUnavailable(f"the persistence agent reads its token from {AGENT_TOKEN_FILE}, which cannot be "
                             f"written here ({error.strerror}); run as root") from None
    stack.callback(AGENT_TOKEN_FILE.unlink, missing_ok=True)


def _prepare_cluster(api_client, crds_dir: Path, namespace: str, stack: ExitStack) -> None:
    from kubernetes import client

    from kube_support import install_crds

    bodies = [yaml.safe_load(path.read_text()) for path in sorted(crds_dir.glob("*.yaml"))]
    install_crds(api_client, [b for b in bodies if b and b.get("kind") == "CustomResourceDefinition"],
                 what="Argo Workflows and ScheduledWorkflow CRDs")
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=namespace, labels={"mlops.dev/test": "true"})))
    stack.callback(_delete_namespace, core, namespace)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=RUNNER_SERVICE_ACCOUNT)))


def _delete_namespace(core, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.delete_namespace(namespace)
    except ApiException as err:
        if err.status != 404:
            raise


def start_kfp(kubeconfig: str, api_client, s3: Any, workdir: Path, stack: ExitStack) -> KfpBackend:
    """Build (cached) and start the KFP backend; everything started is registered on ``stack`` (stopped
    in reverse order when it closes), so a failed or timed-out start leaks nothing."""
    started = time.monotonic()
    kubeconfig = str(Path(kubeconfig).resolve())  # the processes run in their own directories
    built = build_kfp()
    ensure_mariadb()
    _ensure_agent_token(stack)
    namespace = f"kfp-{uuid.uuid4().hex[:6]}"
    _say(f"preparing the cluster: CRDs, namespace {namespace}, ServiceAccount {RUNNER_SERVICE_ACCOUNT}")
    _prepare_cluster(api_client, built / "crds", namespace, stack)

    _say("starting MariaDB")
    db = MariaDb(workdir / "mariadb")
    stack.callback(db.stop)
    db.start()
    _say("starting the KFP API server")
    api = KfpApiServer(built / "apiserver", workdir / "apiserver", kubeconfig, namespace, db, s3)
    stack.callback(api.stop)
    api.start()
    (metrics_port,) = free_ports(1)
    swf = KfpController("kfp-scheduledworkflow", built / "scheduledworkflow", workdir / "swf", kubeconfig, namespace,
                        api)
    stack.callback(swf.stop)
    _say("starting the ScheduledWorkflow controller")
    # Each recurring run is looked at every 2 s, not every 30 s (the flag's default): a fire then starts
    # within 2 s of its minute instead of up to 30 s late, and a test of fires waits for the minutes only.
    swf.start([f"--metricsPort={metrics_port}", "--recurringRunResyncIntervalSeconds=2"], "Starting workers")
    agent = KfpController("kfp-persistence-agent", built / "persistence_agent", workdir / "agent", kubeconfig,
                          namespace, api)
    stack.callback(agent.stop)
    _say("starting the persistence agent")
    agent.start([f"--mlPipelineServiceHttpPort={api.port}", "--numWorker=2"], "Starting workers")
    _say(f"KFP backend up at {api.url} in {time.monotonic() - started:.1f}s")
    return KfpBackend(api.url, namespace, api_client, api, [db, api, swf, agent])
