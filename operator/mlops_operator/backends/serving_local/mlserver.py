"""One MLServer process on the loopback per (deployment, predictor, model version).

Working dir ``<data_dir>/serving/<namespace>/<deployment>/<predictor>-v<version>/`` holds
``settings.json``, ``model-settings.json`` (the model's own, with an absolute ``uri``),
``state.json``, ``pid`` and ``mlserver.log``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .processes import LOOPBACK, read_json, write_json_atomic
from .supervisor import Phase, ProcessRecord, ProcessStatus, SupervisedProcess

MODEL_SETTINGS = "model-settings.json"
SKLEARN_RUNTIME = "mlserver_sklearn.SKLearnModel"


def safe_path_part(value: str) -> str:
    """A string usable as one path component (versions may hold ``/`` or ``:``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value)
    return cleaned if cleaned not in ("", ".", "..") else f"_{cleaned}"


def predictor_workdir(data_dir: Path, namespace: str, deployment: str, predictor: str, version: str) -> Path:
    """Working dir of the MLServer of one predictor at one model version."""
    return Path(data_dir) / "serving" / namespace / deployment / f"{safe_path_part(predictor)}-v{safe_path_part(version)}"


def build_server_settings(http_port: int, grpc_port: int) -> dict:
    """MLServer ``settings.json``: everything on 127.0.0.1, no separate metrics server."""
    return {
        "host": LOOPBACK,
        "http_port": http_port,
        # gRPC cannot be switched off in MLServer 1.7; it listens on the loopback only.
        "grpc_port": grpc_port,
        # No third port: the router exports per-predictor request metrics itself.
        "metrics_endpoint": None,
        # Inference in the server process itself. MLServer 1.7.1's parallel inference workers
        # crash under uvloop 0.23 (the version mlserver 1.7.1 pulls in), so they stay off.
        "parallel_workers": 0,
        # debug=True logs every request; the inference log already records them.
        "debug": False,
        "load_models_at_startup": True,
    }


def build_model_settings(model_dir: Path, version: str, default_name: str) -> dict:
    """The model's ``model-settings.json`` made position-independent (absolute ``uri``), at ``version``.

    A model dir without one is taken to hold a scikit-learn ``model.joblib``.
    """
    model_dir = Path(model_dir).resolve()
    settings = read_json(model_dir / MODEL_SETTINGS) or {
        "name": default_name,
        "implementation": SKLEARN_RUNTIME,
        "parameters": {"uri": "./model.joblib"},
    }
    settings = dict(settings)
    settings.setdefault("name", default_name)
    parameters = dict(settings.get("parameters") or {})
    uri = parameters.get("uri") or "./model.joblib"
    if "://" not in uri and not os.path.isabs(uri):
        uri = str((model_dir / uri).resolve())
    parameters["uri"] = uri
    parameters["version"] = version
    settings["parameters"] = parameters
    return settings


def mlserver_command(workdir: Path) -> list[str]:
    """``mlserver start <workdir>`` with this interpreter's MLServer."""
    entrypoint = Path(sys.executable).parent / "mlserver"
    if entrypoint.exists():
        return [sys.executable, str(entrypoint), "start", str(workdir)]
    return [sys.executable, "-m", "mlserver.cli.main", "start", str(workdir)]


@dataclass(frozen=True)
class PredictorState:
    """A predictor's model server as the caller sees it."""

    namespace: str
    deployment: str
    predictor: str
    version: str
    model_dir: str
    model_name: str
    phase: Phase
    url: str | None
    """Base URL of its V2 REST endpoint (``http://127.0.0.1:<port>``)."""
    pid: int | None
    restarts: int
    last_error: str | None
    workdir: Path

    @property
    def ready(self) -> bool:
        return self.phase == Phase.READY


class MLServerProcess(SupervisedProcess):
    """Supervises one ``mlserver start`` process serving one model version."""

    kind = "mlserver"
    port_names = ("http", "grpc")
    log_name = "mlserver.log"

    @classmethod
    def for_predictor(
        cls,
        data_dir: Path,
        namespace: str,
        deployment: str,
        predictor: str,
        model_dir: Path,
        version: str,
    ) -> "MLServerProcess":
        """The process object for a predictor at a version, loading its saved record if any."""
        workdir = predictor_workdir(data_dir, namespace, deployment, predictor, version)
        record = cls.load_record(workdir) or ProcessRecord(
            kind=cls.kind, namespace=namespace, deployment=deployment, name=predictor, workdir=str(workdir)
        )
        process = cls(workdir, record)
        model_dir = Path(model_dir).resolve()
        default_name = model_dir.parent.name or "model"
        model_settings = build_model_settings(model_dir, version, default_name)
        process.desired_spec = {
            "modelDir": str(model_dir),
            "version": version,
            "modelName": model_settings["name"],
            "modelUri": model_settings["parameters"]["uri"],
        }
        process.model_settings = model_settings
        return process

    @classmethod
    def from_workdir(cls, workdir: Path) -> "MLServerProcess | None":
        """The process saved in ``workdir`` (for adoption, when the caller does not know the spec)."""
        record = cls.load_record(workdir)
        if record is None or record.kind != cls.kind or not record.spec:
            return None
        process = cls(workdir, record)
        process.desired_spec = dict(record.spec)
        process.model_settings = read_json(workdir / MODEL_SETTINGS) or {}
        return process

    @property
    def spec_changed(self) -> bool:
        """True when the running process serves something else than asked (same dir, other model)."""
        return bool(self.record.spec) and self.record.spec != self.desired_spec

    def prepare(self) -> None:
        self.record.spec = dict(self.desired_spec)
        write_json_atomic(self.workdir / "settings.json",
                          build_server_settings(self.record.ports["http"], self.record.ports["grpc"]))
        write_json_atomic(self.workdir / MODEL_SETTINGS, self.model_settings)

    def command(self) -> list[str]:
        return mlserver_command(self.workdir)

    def env(self) -> dict:
        # MLSERVER_* variables of the operator's environment would override settings.json.
        return {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}

    @property
    def url(self) -> str | None:
        port = self.record.ports.get("http")
        return f"http://{LOOPBACK}:{port}" if port else None

    @property
    def model_name(self) -> str:
        return self.desired_spec["modelName"]

    def readiness_urls(self) -> list[str]:
        return [f"{self.url}/v2/health/ready", f"{self.url}/v2/models/{self.model_name}/ready"]

    def predictor_state(self, status: ProcessStatus) -> PredictorState:
        """Caller-facing view of a status snapshot."""
        r = self.record
        return PredictorState(
            namespace=r.namespace,
            deployment=r.deployment,
            predictor=r.name,
            version=self.desired_spec["version"],
            model_dir=self.desired_spec["modelDir"],
            model_name=self.model_name,
            phase=status.phase,
            url=self.url,
            pid=status.pid,
            restarts=status.restarts,
            last_error=status.last_error,
            workdir=self.workdir,
        )
