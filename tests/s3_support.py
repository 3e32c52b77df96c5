"""A real S3 server for the tests: MinIO, built from its Go module by hack/build-binaries.sh.

``S3Server`` starts ``minio server`` on a free loopback port with generated credentials, waits
until it answers, creates a bucket and stops the process (its whole process group) on ``stop()``,
also when the start fails or times out. ``env()`` gives the variables botocore and s3fs read
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``), which is
how the operator and every process it starts find the server.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "build-binaries.sh"
REGION = "us-east-1"


class S3ServerError(RuntimeError):
    """The S3 server could not be built or started."""


def minio_binary() -> Path:
    """Path of the minio binary, built on first use (progress on stderr, cached by version)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "minio"], stdout=subprocess.PIPE, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise S3ServerError(f"{BUILD_SCRIPT} minio failed with exit code {result.returncode}")
    return Path(lines[-1]) / "minio"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


class S3Server:
    """One MinIO process on 127.0.0.1 with its data under ``workdir``."""

    def __init__(self, binary: Path, workdir: Path, bucket: str = "mlops-test"):
        self.binary = binary
        self.workdir = workdir
        self.bucket = bucket
        # Generated per run; never printed (the log file holds only what MinIO writes).
        self.access_key = "test-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "minio.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point botocore/s3fs (and so boto3 and every child process) here."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def storage_options(self) -> dict:
        """s3fs storage options for this server (when the environment is not set)."""
        return {"key": self.access_key, "secret": self.secret_key, "endpoint_url": self.endpoint_url,
                "client_kwargs": {"region_name": REGION}}

    def start(self, timeout: float = 60.0) -> None:
        """Start MinIO and wait until it is live; on any failure the process is stopped before raising."""
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        api_port, console_port = _free_ports(2)
        self.port = api_port
        env = dict(os.environ, MINIO_ROOT_USER=self.access_key, MINIO_ROOT_PASSWORD=self.secret_key,
                   MINIO_BROWSER="off", MINIO_UPDATE="off", MINIO_CI_CD="1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "server", str(data), "--address", f"127.0.0.1:{api_port}",
                 "--console-address", f"127.0.0.1:{console_port}", "--quiet"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group, so stop() reaches everything it started
            )
        try:
            self._wait_live(timeout)
            self._make_bucket()
        except BaseException:
            self.stop()
            raise

    def _wait_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.endpoint_url}/minio/health/live"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise S3ServerError(f"minio exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise S3ServerError(f"minio did not answer {url} within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _make_bucket(self) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name=REGION)
        client.create_bucket(Bucket=self.bucket)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """Stop MinIO's process group: SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(5)
