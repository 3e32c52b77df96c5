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
from pathlib import Path

from server_support import LoopbackServer, ServerError, built_binary, free_ports

REGION = "us-east-1"


class S3ServerError(ServerError):
    """The S3 server could not be built or started."""


def minio_binary() -> Path:
    """Path of the minio binary, built on first use (progress on stderr, cached by version)."""
    return built_binary("minio")


class S3Server(LoopbackServer):
    """One MinIO process on 127.0.0.1 with its data under ``workdir``."""

    name = "minio"
    error = S3ServerError

    def __init__(self, binary: Path, workdir: Path, bucket: str = "mlops-test", host: str = "127.0.0.1"):
        super().__init__(binary, workdir)
        self.bucket = bucket
        self.host = host  # e.g. the local node's bridge address, so Pods reach it
        # Generated per run; never printed (the log file holds only what MinIO writes).
        self.access_key = "test-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

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
        api_port, console_port = free_ports(2)
        self.port = api_port
        env = dict(os.environ, MINIO_ROOT_USER=self.access_key, MINIO_ROOT_PASSWORD=self.secret_key,
                   MINIO_BROWSER="off", MINIO_UPDATE="off", MINIO_CI_CD="1")
        self.spawn([str(self.binary), "server", str(data), "--address", f"{self.host}:{api_port}",
                    "--console-address", f"127.0.0.1:{console_port}", "--quiet"], env=env)
        try:
            self.wait_ok(f"{self.endpoint_url}/minio/health/live", timeout)
            self._make_bucket()
        except BaseException:
            self.stop()
            raise

    def _make_bucket(self) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name=REGION)
        client.create_bucket(Bucket=self.bucket)
