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
    assert uri_problem(str(tmp_path / "data" / "datasets" / "x.csv"), p, resolve) is None
    assert uri_problem((tmp_path / "data" / "labels" / "iris").as_uri() + "/", p, resolve) is None
    assert uri_problem("s3://bucket/data.csv", p, resolve) is None
    assert uri_problem("https://data.example.com/iris.csv", p, resolve) is None


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "/etc/passwd", "file:///etc/../etc/passwd"])
def test_files_outside_the_roots_are_refused(tmp_path, uri):
    problem = uri_problem(uri, policy(tmp_path), resolve)
    assert problem and "/etc/passwd is outside the directories" in problem and "MLOPS_URI_FILE_ROOTS" in problem


@pytest.mark.parametrize("inside", ["runs/team-b/iris-1/train.parquet", "serving/team-b/iris/state.json", "operator.log",
                                    "model-cache/0123/model.joblib", "x.csv", "", "datasets/../runs/a.csv"])
def test_the_operators_own_state_in_the_data_dir_is_refused(tmp_path, inside):
    """Whatever the file roots allow (the tests' operators allow all of /tmp): run directories hold every
    namespace's training data, and the rest is the operator's."""
    p = policy(tmp_path, uri_file_roots=[str(tmp_path)])
    problem = uri_problem(str(tmp_path / "data" / inside), p, resolve, namespace="ml")
    assert problem and "the operator's own state in its data dir" in problem, problem
    assert f"{tmp_path}/data/labels/ml/ and {tmp_path}/data/datasets/ml/" in problem


def test_a_namespace_reads_only_its_own_directories_of_the_data_dirs_tenant_areas(tmp_path):
    """The data dir's labels/ and datasets/ hold a directory per namespace: team-b's label feed is not
    ml's to read (spelt any way), and a file beside the namespaces' directories is nobody's."""
    p = policy(tmp_path, uri_file_roots=[str(tmp_path)])
    data = tmp_path / "data"
    for own in ("labels/ml/iris/", "labels/ml", "datasets/ml/iris.csv", "datasets/ml/a/b.parquet"):
        assert uri_problem((data / own).as_uri(), p, resolve, namespace="ml") is None, own
    for other in ("labels/team-b/iris/", "datasets/team-b/iris.csv", "labels/ml/../team-b/x.csv", "labels/x.csv",
                  "labels", "datasets/"):
        problem = uri_problem(f"{data.as_uri()}/{other}", p, resolve, namespace="ml")
        assert problem and "not in this namespace's directories of the data dir" in problem, other
        assert f"({data}/labels/ml/ and {data}/datasets/ml/)" in problem, problem
    (data / "labels" / "team-b").mkdir(parents=True)
    (tmp_path / "feed").symlink_to(data / "labels" / "team-b")
    assert "not in this namespace's" in uri_problem(str(tmp_path / "feed" / "x.csv"), p, resolve, namespace="ml")
    # Inside a run (no namespace known: the spec passed with its own), any namespace's directory.
    assert uri_problem((data / "labels" / "team-b" / "x.csv").as_uri(), p, resolve) is None


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
    for own in ("models/ml/iris/1", "models/ml/iris/1/profile.json", "inference/ml/iris/", "labels/iris/",
                "datasets/team-b/iris.csv"):  # the artifact root's other parts are no namespace's
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


def test_a_prefix_per_namespace(tmp_path):
    """``{namespace}`` in a prefix is the object's namespace: each team reads its own part of a shared bucket."""
    p = policy(tmp_path, uri_prefixes=["s3://team-data/{namespace}/", "https://data.example.com/shared/"])
    assert uri_problem("s3://team-data/team-a/iris.csv", p, resolve, namespace="team-a") is None
    assert uri_problem("https://data.example.com/shared/iris.csv", p, resolve, namespace="team-a") is None
    problem = uri_problem("s3://team-data/team-b/iris.csv", p, resolve, namespace="team-a")
    assert problem == ("not under an allowed prefix (MLOPS_URI_PREFIXES: s3://team-data/team-a/, "
                       "https://data.example.com/shared/)")
    # .. does not climb out of the namespace's part; a namespace that only starts like another is another.
    assert uri_problem("s3://team-data/team-a/../team-b/iris.csv", p, resolve, namespace="team-a")
    assert uri_problem("s3://team-data/team-a-evil/iris.csv", p, resolve, namespace="team-a")
    assert uri_problem("s3://team-data/team-a/./sub//x.csv", p, resolve, namespace="team-a") is None
    # Where no namespace is known (a fetch-time check in a run), the placeholder is any one segment.
    assert uri_problem("s3://team-data/team-b/iris.csv", p, resolve) is None
    assert uri_problem("s3://team-data/iris.csv", p, resolve)
    # Without a placeholder, normalised too.
    plain = policy(tmp_path, uri_prefixes=["s3://data/team-a/"])
    assert uri_problem("s3://data/team-a/../team-b/x.csv", plain, resolve)
    assert uri_problem("s3://data/team-a/sub/../x.csv", plain, resolve) is None


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


class Served:
    """Real HTTP servers on loopback addresses, each recording the paths it was asked for; ``routes`` maps a
    path to ``(status, location or body)``."""

    def __init__(self) -> None:
        self.servers: list[ThreadingHTTPServer] = []

    def start(self, address: str, routes: dict[str, tuple[int, str]]) -> tuple[str, list[str]]:
        served: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                served.append(self.path)
                status, value = routes.get(self.path, (404, ""))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", value)
                self.end_headers()
                if status == 200:
                    self.wfile.write(value.encode())

            def log_message(self, *_: object) -> None:
                pass

        server = ThreadingHTTPServer((address, 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return f"http://{address}:{server.server_port}", served

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def served():
    servers = Served()
    yield servers
    servers.stop()


CSV = "target,x\n0,1\n1,2\n"


def test_redirects_are_followed_only_to_targets_the_policy_allows(tmp_path, monkeypatch, served):
    """127.0.0.1 is allowed, 127.0.0.2 (loopback too) is not: a redirect there is refused before any
    request reaches it, naming the rule and where it was redirected from; allowed redirects are followed."""
    monkeypatch.setenv("MLOPS_URI_ALLOWED_NETWORKS", "127.0.0.1/32")
    forbidden, forbidden_served = served.start("127.0.0.2", {"/data.csv": (200, CSV)})
    base, base_served = served.start("127.0.0.1", {
        "/data.csv": (200, CSV), "/moved.csv": (302, f"{forbidden}/data.csv"), "/here.csv": (301, "/data.csv"),
        "/metadata.csv": (307, "http://169.254.169.254/latest/meta-data/"), "/loop.csv": (302, "/loop.csv"),
        "/ftp.csv": (302, "ftp://127.0.0.1/x.csv")})
    frame, _ = datasets.load_dataset(f"{base}/here.csv")  # a relative redirect to an allowed target
    assert list(frame.columns) == ["target", "x"] and len(frame) == 2
    with pytest.raises(DatasetUnavailable) as refused:
        datasets.load_dataset(f"{base}/moved.csv")
    message = str(refused.value)
    assert f"{forbidden}/data.csv (redirected from {base}/moved.csv) refused by the URI policy" in message
    assert "127.0.0.2, a loopback address" in message and "MLOPS_URI_ALLOWED_NETWORKS" in message
    with pytest.raises(DatasetUnavailable, match="169.254.169.254, a link-local address"):
        datasets.load_dataset(f"{base}/metadata.csv")
    with pytest.raises(DatasetUnavailable, match="scheme 'ftp' is not http"):
        datasets.load_dataset(f"{base}/ftp.csv")
    with pytest.raises(DatasetUnavailable, match="more than 5 redirects"):
        datasets.load_dataset(f"{base}/loop.csv")
    with pytest.raises(DatasetUnavailable, match="not found"):
        datasets.load_dataset(f"{base}/missing.csv")
    assert forbidden_served == []
    assert base_served.count("/moved.csv") == 1 and base_served.count("/loop.csv") == 6


def test_the_checked_address_is_the_one_connected_to(tmp_path, served):
    """DNS rebinding: a name that resolves to an allowed address for the check and to a forbidden one a
    moment later. The fetch looks the name up once, checks that answer and connects to it."""
    from mlops_operator.backends.uri_policy import UriRefused, http_get

    allowed, allowed_served = served.start("127.0.0.1", {"/data.csv": (200, CSV)})
    forbidden, forbidden_served = served.start("127.0.0.2", {"/data.csv": (200, "secret")})
    answers = iter([["127.0.0.1"], ["127.0.0.2"], ["127.0.0.2"]])
    lookups: list[str] = []

    def rebinding(host: str) -> list[str]:
        lookups.append(host)
        return next(answers)

    p = policy(tmp_path, uri_allowed_networks=["127.0.0.1/32"])
    port = allowed.rsplit(":", 1)[1]
    assert http_get(f"http://data.example.test:{port}/data.csv", p, resolve=rebinding) == CSV.encode()
    assert lookups == ["data.example.test"] and allowed_served == ["/data.csv"]
    # The next read looks up again and gets the forbidden answer: refused, nothing sent there.
    with pytest.raises(UriRefused, match="127.0.0.2, a loopback address"):
        http_get(f"http://data.example.test:{forbidden.rsplit(':', 1)[1]}/data.csv", p, resolve=rebinding)
    assert forbidden_served == []


def test_credentials_go_to_the_first_host_only(tmp_path, served):
    from mlops_operator.backends.uri_policy import http_get

    seen: list[str | None] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            if self.path == "/moved.csv":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.2:{other.server_port}/data.csv")
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(CSV.encode())

        def log_message(self, *_: object) -> None:
            pass

    first, other = ThreadingHTTPServer(("127.0.0.1", 0), Recorder), ThreadingHTTPServer(("127.0.0.2", 0), Recorder)
    served.servers += [first, other]
    for server in (first, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    p = policy(tmp_path, uri_allowed_networks=["127.0.0.0/8"])
    body = http_get(f"http://127.0.0.1:{first.server_port}/moved.csv", p, headers={"Authorization": "Bearer t0ken-value"})
    assert body == CSV.encode() and seen == ["Bearer t0ken-value", None]


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


def test_every_http_reader_of_the_operator_checks_redirects(monkeypatch, served, tmp_path):
    """Labels, profiles and metrics, model files and pipelines over http(s) go through the same fetch
    (fsspec's HTTP filesystem would follow a redirect anywhere)."""
    import asyncio

    from mlops_operator.api.errors import InvalidSpec
    from mlops_operator.api.modeltraining import ModelTrainingSpec
    from mlops_operator.backends import artifacts, drift_data, model_source, training
    from mlops_operator.backends.uri_policy import UriRefused

    monkeypatch.setenv("MLOPS_URI_ALLOWED_NETWORKS", "127.0.0.1/32")
    forbidden, forbidden_served = served.start("127.0.0.2", {})
    base, _ = served.start("127.0.0.1", {
        "/labels.csv": (200, "id,label\na,1\n"), "/moved/labels.csv": (302, f"{forbidden}/labels.csv"),
        "/moved/profile.json": (302, f"{forbidden}/profile.json"), "/model/model.joblib": (200, "bytes"),
        "/moved/model/model-settings.json": (302, f"{forbidden}/model-settings.json"),
        "/moved/model/model.joblib": (302, f"{forbidden}/model.joblib"),
        "/moved/pipeline.yaml": (302, f"{forbidden}/pipeline.yaml")})
    assert list(drift_data.read_labels(f"{base}/labels.csv")["label"]) == [1]
    with pytest.raises(UriRefused, match="127.0.0.2, a loopback address"):
        drift_data.read_labels(f"{base}/moved/labels.csv")
    with pytest.raises(UriRefused, match="redirected from"):
        artifacts.read_json_uri(f"{base}/moved/profile.json")
    model_source.check_model_uri(f"{base}/model")
    assert (model_source.local_model_dir(f"{base}/model", tmp_path) / "model.joblib").read_bytes() == b"bytes"
    with pytest.raises(model_source.ModelUnavailable, match="refused by the URI policy"):
        model_source.check_model_uri(f"{base}/moved/model")
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path))
    spec = ModelTrainingSpec.model_validate({"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"},
                                             "pipeline": {"uri": f"{base}/moved/pipeline.yaml"}})
    from mlops_operator.settings import Settings

    with pytest.raises(InvalidSpec, match="spec.pipeline.uri: cannot read .*refused by the URI policy"):
        asyncio.run(training.pipeline_source(spec, "ml", Settings()))
    assert forbidden_served == []
