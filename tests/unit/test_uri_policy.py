"""The URI policy: schemes, prefixes, file roots (symlinks resolved), internal HTTP targets, redirects."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlops_operator.api.errors import DatasetUnavailable
from mlops_operator.backends import datasets
from mlops_operator.backends.uri_policy import UriPolicy, uri_problem, uri_problems
from mlops_operator.settings import Settings

PUBLIC = {"data.example.com": ["93.184.215.14"], "metadata.google.internal": ["169.254.169.254"],
          "minio.minio.svc": ["10.96.3.7"], "v6.example.com": ["fe80::1"], "mixed.example.com": ["93.184.215.14", "127.0.0.1"]}


def resolve(host: str) -> list[str]:
    if host not in PUBLIC:
        raise OSError(f"unknown host {host}")
    return PUBLIC[host]


def policy(tmp_path: Path, **overrides) -> UriPolicy:
    settings = Settings(data_dir=tmp_path / "data", **overrides)
    return UriPolicy.from_settings(settings)


def test_defaults_allow_the_data_dir_artifact_root_and_builtins(tmp_path):
    p = policy(tmp_path)
    assert uri_problem("sklearn://iris", p, resolve) is None
    own = (tmp_path / "data" / "artifacts" / "models" / "ml" / "iris" / "1").as_uri()
    assert uri_problem(own, p, resolve, namespace="ml") is None
    assert uri_problem(str(tmp_path / "data" / "x.csv"), p, resolve) is None
    assert uri_problem("s3://bucket/data.csv", p, resolve) is None
    assert uri_problem("https://data.example.com/iris.csv", p, resolve) is None


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "/etc/passwd", "file:///etc/../etc/passwd"])
def test_files_outside_the_roots_are_refused(tmp_path, uri):
    problem = uri_problem(uri, policy(tmp_path), resolve)
    assert problem and "/etc/passwd is outside the directories" in problem and "MLOPS_URI_FILE_ROOTS" in problem


def test_a_symlink_out_of_a_root_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "escape.csv").symlink_to("/etc/passwd")
    assert "outside" in uri_problem(str(tmp_path / "data" / "escape.csv"), policy(tmp_path), resolve)
    # a sibling directory whose name only starts like the root is not under it
    assert "outside" in uri_problem(str(tmp_path / "data-other" / "x.csv"), policy(tmp_path), resolve)


@pytest.mark.parametrize("artifact_root", [None, "s3://shared/mlops"])
def test_other_namespaces_parts_of_the_artifact_root_are_refused(tmp_path, artifact_root):
    """Whatever the roots and prefixes allow, a URI into the artifact root must be in the object's own
    namespace's models/ or inference/ (spelt any way: .., //, a trailing slash)."""
    p = policy(tmp_path, artifact_root=artifact_root, uri_file_roots=[str(tmp_path)])
    root = artifact_root or (tmp_path / "data" / "artifacts").as_uri()
    for own in ("models/ml/iris/1", "models/ml/iris/1/profile.json", "inference/ml/iris/", "labels/iris/"):
        assert uri_problem(f"{root}/{own}", p, resolve, namespace="ml") is None, own
    for other in ("models/team-b/iris/1", "inference/team-b/iris/", "models/ml/../team-b/iris/1",
                  "models//team-b/iris/1", "models", "", "drift-reports/team-b/iris/latest.html",
                  "labels/../models/team-b/iris/1", "models/ml-x/iris/1"):
        problem = uri_problem(f"{root}/{other}", p, resolve, namespace="ml")
        assert problem and "outside this namespace's part of it" in problem, other
        assert "/models/ml/, " in problem and problem.endswith("cannot be read"), problem
    # With no namespace nothing in the artifact root is anyone's.
    assert "outside this namespace's part" in uri_problem(f"{root}/models/ml/iris/1", p, resolve)
    if artifact_root is None:  # a symbolic link into another namespace's models is resolved first
        (tmp_path / "data" / "artifacts" / "models" / "team-b" / "iris" / "1").mkdir(parents=True)
        (tmp_path / "link").symlink_to(tmp_path / "data" / "artifacts" / "models" / "team-b")
        assert "outside this namespace's part" in uri_problem(str(tmp_path / "link" / "iris" / "1"), p, resolve,
                                                              namespace="ml")


def test_configured_roots_replace_the_defaults(tmp_path):
    p = policy(tmp_path, uri_file_roots=[str(tmp_path / "shared")])
    assert uri_problem(str(tmp_path / "shared" / "x.csv"), p, resolve) is None
    assert "outside" in uri_problem(str(tmp_path / "data" / "x.csv"), p, resolve)
    assert "not host" in uri_problem("file://otherhost/etc/x.csv", p, resolve)


@pytest.mark.parametrize(("uri", "kind"), [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://metadata.google.internal/computeMetadata/v1/", "link-local"),
    ("http://127.0.0.1:8080/x.csv", "loopback"),
    ("http://[::1]/x.csv", "loopback"),
    ("http://[::ffff:169.254.169.254]/x.csv", "link-local"),
    ("https://v6.example.com/x.csv", "link-local"),
    ("http://minio.minio.svc:9000/bucket/x.csv", "private or cluster-internal"),
    ("http://mixed.example.com/x.csv", "loopback"),
    ("http://0.0.0.0/x.csv", "unspecified"),
])
def test_internal_http_targets_are_refused(tmp_path, uri, kind):
    problem = uri_problem(uri, policy(tmp_path), resolve)
    assert problem and f"a {kind} address" in problem and "MLOPS_URI_ALLOWED_NETWORKS" in problem


def test_allowed_networks_open_internal_targets(tmp_path):
    p = policy(tmp_path, uri_allowed_networks=["10.96.0.0/12", "127.0.0.0/8"])
    assert uri_problem("http://minio.minio.svc:9000/bucket/x.csv", p, resolve) is None
    assert uri_problem("http://127.0.0.1:8080/x.csv", p, resolve) is None
    assert "link-local" in uri_problem("http://169.254.169.254/", p, resolve)


def test_unresolvable_hosts_are_refused(tmp_path):
    assert "does not resolve" in uri_problem("https://nowhere.invalid/x.csv", policy(tmp_path), resolve)


def test_schemes_and_prefixes(tmp_path):
    p = policy(tmp_path, uri_schemes=["s3", "sklearn"], uri_prefixes=["s3://team-a/"])
    assert "scheme 'https' is not allowed" in uri_problem("https://data.example.com/x.csv", p, resolve)
    assert "scheme 'file' is not allowed" in uri_problem(str(tmp_path / "data" / "x.csv"), p, resolve)
    assert "allowed prefix" in uri_problem("s3://team-b/x.csv", p, resolve)
    assert uri_problem("s3://team-a/x.csv", p, resolve) is None
    assert uri_problem("sklearn://iris", p, resolve) is None


def test_problems_name_the_field(tmp_path):
    problems = uri_problems([("spec.dataset.uri", "file:///etc/passwd"), ("spec.pipeline.uri", None)],
                            policy(tmp_path), resolve)
    assert len(problems) == 1 and problems[0].startswith("spec.dataset.uri: file:///etc/passwd refused by the URI policy: ")


def test_settings_parse_comma_separated_lists_and_refuse_bad_networks(monkeypatch):
    monkeypatch.setenv("MLOPS_URI_ALLOWED_NETWORKS", "10.0.0.0/8, fd00::/8")
    monkeypatch.setenv("MLOPS_URI_FILE_ROOTS", "/srv/data,/mnt/shared")
    settings = Settings()
    assert settings.uri_allowed_networks == ["10.0.0.0/8", "fd00::/8"]
    assert settings.uri_file_roots == ["/srv/data", "/mnt/shared"]
    monkeypatch.setenv("MLOPS_URI_ALLOWED_NETWORKS", "10.0.0.0/33")
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        Settings()


def test_http_datasets_do_not_follow_redirects():
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            served.append(self.path)
            if self.path == "/moved.csv":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            if self.path == "/missing.csv":
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"target,x\n0,1\n1,2\n")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        frame, _ = datasets.load_dataset(f"{base}/data.csv")
        assert list(frame.columns) == ["target", "x"] and len(frame) == 2
        with pytest.raises(DatasetUnavailable, match="redirects \\(302\\) to http://169.254.169.254/.*not followed"):
            datasets.load_dataset(f"{base}/moved.csv")
        with pytest.raises(DatasetUnavailable, match="not found"):
            datasets.load_dataset(f"{base}/missing.csv")
    finally:
        server.shutdown()
        server.server_close()
    assert served.count("/moved.csv") == 1


def test_a_resolver_that_is_down_is_no_refusal(tmp_path):
    import socket

    from mlops_operator.backends.uri_policy import HostLookupFailed

    def down(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def unknown(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(HostLookupFailed, match="cannot look up 'data.example.com' now"):
        uri_problem("https://data.example.com/x.csv", policy(tmp_path), down)
    assert "does not resolve" in uri_problem("https://data.example.com/x.csv", policy(tmp_path), unknown)
