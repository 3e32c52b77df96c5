"""The URI policy: which dataset and model URIs the operator may read on a tenant's behalf.

The operator reads these URIs with its own privileges (its files, its network position), so a URI
is checked before any work starts: its scheme must be allowed, it must start with an allowed prefix
(when prefixes are configured), a ``file://`` URI or plain path must lie under an allowed root
(symbolic links resolved), and an ``http(s)://`` host must not resolve to a loopback, link-local
(cloud metadata), private or otherwise internal address unless that network is allowed. The
operator's artifact root is shared by all namespaces: a URI into its per-namespace areas
(``<root>/models/``, ``<root>/inference/``, ``<root>/drift-reports/``) must stay in the namespace's own
part of them, whatever the other rules allow, so one namespace cannot read another's model versions,
profiles, inference logs or drift reports (nor list the root). The data dir holds the operator's own
state (run directories with every namespace's training data, model servers, caches, logs): of it, only
the namespace's own ``<dataDir>/labels/<namespace>/`` and ``<dataDir>/datasets/<namespace>/`` (and the
artifact root, as above) may be read. Redirects
are not followed when a dataset is fetched over HTTP (:mod:`mlops_operator.backends.datasets`), so
the checked host is the one read. ``sklearn://`` built-ins are always allowed.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import posixpath
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import unquote, urljoin, urlsplit

from mlops_operator.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]


class HostLookupFailed(OSError):
    """A host could not be looked up for now (DNS temporarily failing): transient, not a refusal."""


@dataclass(frozen=True)
class UriPolicy:
    """What may be read: see the module docstring and the ``MLOPS_URI_*`` settings."""

    schemes: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    file_roots: tuple[str, ...] = ()
    allowed_networks: tuple[Network, ...] = ()
    artifact_root: str = ""
    """The operator's artifact root (a URI; a local path for file://): its namespaces' parts are kept apart."""
    data_dir: str = ""
    """The operator's data dir (a local path): only its TENANT_AREAS may be read."""

    @classmethod
    def from_settings(cls, settings: Settings) -> UriPolicy:
        roots = list(settings.uri_file_roots)
        if not roots:
            roots.append(str(settings.data_dir))
            artifact = urlsplit(settings.artifact_root_uri)
            if artifact.scheme in ("", "file"):
                roots.append(unquote(artifact.path) if artifact.scheme else settings.artifact_root_uri)
        artifact = urlsplit(settings.artifact_root_uri)
        artifact_root = (os.path.realpath(unquote(artifact.path)) if artifact.scheme in ("", "file")
                         else settings.artifact_root_uri.rstrip("/"))
        return cls(schemes=tuple(s.strip().lower() for s in settings.uri_schemes),
                   prefixes=tuple(settings.uri_prefixes),
                   file_roots=tuple(os.path.realpath(os.path.expanduser(r)) for r in roots),
                   allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in settings.uri_allowed_networks),
                   artifact_root=artifact_root, data_dir=os.path.realpath(os.path.expanduser(settings.data_dir)))


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not public, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for kind, flag in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                       ("unspecified", address.is_unspecified), ("multicast", address.is_multicast),
                       ("private or cluster-internal", address.is_private), ("reserved", address.is_reserved)):
        if flag:
            return kind
    return None


TENANT_AREAS = ("labels", "datasets")
"""The data dir's directories for files tenants give the operator to read (e.g. the examples' label feed), one
directory per namespace in each: ``<dataDir>/labels/<namespace>/``."""
NAMESPACED_AREAS = ("models", "inference", "drift-reports")
"""The artifact root's parts that are kept per namespace: the model registry, the inference logs, the drift reports."""


def _other_namespace_problem(root: str, path: str, namespace: str | None, display: str) -> str | None:
    """Why ``path`` (normalised, in the artifact root's own terms) is not in ``namespace``'s part of the
    artifact root ``root``, or None (also when it is not in the artifact root at all)."""
    if not root or not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None
    parts = [part for part in path[len(root.rstrip("/")):].split("/") if part]
    if parts and parts[0] not in NAMESPACED_AREAS:
        return None  # not the operator's per-namespace data (e.g. a label feed a tenant keeps there)
    if namespace and len(parts) >= 2 and parts[1] == namespace:
        return None
    own = (", ".join(f"{display}/{area}/{namespace}/" for area in NAMESPACED_AREAS) if namespace
           else "none")
    return (f"it is in the operator's artifact root outside this namespace's part of it ({own}): "
            f"another namespace's models, inference logs and drift reports cannot be read")


NAMESPACE_PLACEHOLDER = "{namespace}"
"""In a URI prefix, the namespace of the object whose URI is checked: ``s3://team-data/{namespace}/``."""
_SEGMENT = re.compile(r"[^/]+")


def _normal(uri: str) -> str:
    """``uri`` with its path's ``.``/``..`` segments and doubled slashes resolved (a trailing slash kept)."""
    scheme, sep, rest = uri.partition("://")
    netloc, _, path = rest.partition("/") if sep else ("", "", uri)
    if not path:
        return uri
    normal = posixpath.normpath(("/" if sep else "") + path)
    if path.endswith("/") and not normal.endswith("/"):
        normal += "/"
    return f"{scheme}://{netloc}{normal}" if sep else normal


def _under_prefix(uri: str, prefix: str, namespace: str | None) -> bool:
    """Whether ``uri`` (normalised: a/team-a/../team-b is not under a/team-a/) starts with ``prefix``, whose
    ``{namespace}`` is the object's namespace; where no namespace is known (a fetch-time check inside a run,
    the spec having passed with its namespace), any one path segment."""
    uri = _normal(uri)
    if NAMESPACE_PLACEHOLDER not in prefix:
        return uri.startswith(prefix)
    if namespace:
        return uri.startswith(prefix.replace(NAMESPACE_PLACEHOLDER, namespace))
    pattern = _SEGMENT.pattern.join(re.escape(part) for part in prefix.split(NAMESPACE_PLACEHOLDER))
    return re.match(pattern, uri) is not None


def _under(path: str, root: str) -> bool:
    return bool(root) and (path == root or path.startswith(root.rstrip(os.sep) + os.sep))


def uri_problem(uri: str, policy: UriPolicy, resolve: Resolver = _resolve, namespace: str | None = None) -> str | None:
    """Why the policy refuses ``uri`` (naming the rule), or None. ``resolve`` maps a host to its addresses;
    ``namespace`` is the object's (None: no part of the artifact root is its own)."""
    if uri.startswith("sklearn://"):
        return None if "sklearn" in policy.schemes else "scheme 'sklearn' is not allowed (MLOPS_URI_SCHEMES)"
    parts = urlsplit(uri)
    scheme = parts.scheme.lower() if "://" in uri else "file"
    if scheme not in policy.schemes:
        return f"scheme {scheme!r} is not allowed (MLOPS_URI_SCHEMES: {', '.join(policy.schemes)})"
    if policy.prefixes and not any(_under_prefix(uri, prefix, namespace) for prefix in policy.prefixes):
        shown = ", ".join(prefix.replace(NAMESPACE_PLACEHOLDER, namespace) if namespace else prefix
                          for prefix in policy.prefixes)
        return f"not under an allowed prefix (MLOPS_URI_PREFIXES: {shown})"
    if scheme == "file":
        path = unquote(parts.path) if "://" in uri else uri
        if parts.netloc not in ("", "localhost") and "://" in uri:
            return f"file:// URIs name a local path, not host {parts.netloc!r}"
        real = os.path.realpath(path)
        problem = _other_namespace_problem(policy.artifact_root, real, namespace, policy.artifact_root)
        if problem:
            return problem
        if not any(_under(real, root) for root in policy.file_roots):
            return (f"path {real} is outside the directories the operator may read "
                    f"(MLOPS_URI_FILE_ROOTS: {', '.join(policy.file_roots) or 'none'})")
        if policy.data_dir and _under(real, policy.data_dir) and not _under(real, policy.artifact_root):
            return _data_dir_problem(real, policy.data_dir, namespace)
        return None
    if "://" in policy.artifact_root:
        # The same object under another spelling (a/../b, a//b) is the same key to the store's client.
        normal = f"{scheme}://{parts.netloc}{posixpath.normpath('/' + parts.path.lstrip('/'))}"
        for candidate in (uri.rstrip("/"), normal.rstrip("/")):
            problem = _other_namespace_problem(policy.artifact_root, candidate, namespace, policy.artifact_root)
            if problem:
                return problem
    if scheme in ("http", "https"):
        return _host_problem(parts.hostname or "", policy, resolve)
    return None


def _data_dir_problem(real: str, data_dir: str, namespace: str | None) -> str | None:
    """Why a path in the data dir (not in the artifact root) may not be read for ``namespace``: it is not in a
    tenant area, or it is in another namespace's directory of one. Where no namespace is known (a fetch-time
    check inside a run, the spec having passed with its namespace), any namespace's directory."""
    parts = os.path.relpath(real, data_dir).split(os.sep)
    own = " and ".join(f"{os.path.join(data_dir, area, namespace or NAMESPACE_PLACEHOLDER)}/"
                       for area in TENANT_AREAS)
    if parts[0] not in TENANT_AREAS:
        return f"path {real} is the operator's own state in its data dir; of the data dir only {own} hold tenants' files"
    if len(parts) < 2 or (namespace is not None and parts[1] != namespace):
        return (f"path {real} is not in this namespace's directories of the data dir ({own}): another namespace's "
                f"files there cannot be read")
    return None


def _host_problem(host: str, policy: UriPolicy, resolve: Resolver) -> str | None:
    if not host:
        return "an http(s) URI needs a host"
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host)]
        except socket.gaierror as error:
            if error.errno == socket.EAI_AGAIN:  # the resolver is down, not the name unknown: try again later
                raise HostLookupFailed(f"cannot look up {host!r} now ({error}); the URI policy checks it later"
                                       ) from None
            return f"host {host!r} does not resolve ({error}); an unresolvable host cannot be checked"
        except OSError as error:
            return f"host {host!r} does not resolve ({error}); an unresolvable host cannot be checked"
        if not addresses:
            return f"host {host!r} does not resolve"
    for address in addresses:
        kind = _internal(address)
        if kind and not any(address in network for network in policy.allowed_networks
                            if network.version == address.version):
            return (f"host {host!r} is {address}, a {kind} address; such targets are refused unless "
                    f"allowed (MLOPS_URI_ALLOWED_NETWORKS)")
    return None


def uri_problems(fields: Iterable[tuple[str, str | None]], policy: UriPolicy,
                 resolve: Resolver = _resolve, namespace: str | None = None) -> list[str]:
    """``"<field>: <uri> refused by the URI policy: <rule>"`` for each refused (field, uri) of an object in
    ``namespace``; unset URIs are skipped."""
    problems = []
    for field, uri in fields:
        if uri:
            problem = uri_problem(uri, policy, resolve, namespace)
            if problem:
                problems.append(f"{field}: {uri} refused by the URI policy: {problem}")
    return problems


# ---- reading http(s) URIs under the policy --------------------------------------------------------------

MAX_REDIRECTS = 5
"""Redirects followed by :func:`http_get`, each target checked like the first URI."""
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class UriRefused(OSError):
    """An http(s) read the policy refuses at fetch time (a redirect's target, or a host that now resolves
    elsewhere); the message names the rule."""


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address the policy checked, not to a second lookup of the host name."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with the certificate verified for the URI's host name (SNI too)."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def http_get(uri: str, policy: UriPolicy, *, namespace: str | None = None, headers: dict[str, str] | None = None,
             timeout: float = 60.0, resolve: Resolver = _resolve) -> bytes:
    """The body at an http(s) URI, read under the policy at fetch time.

    The host is looked up once and every address checked; the connection goes to a checked address (a
    name that resolves to a public address for the check and to an internal one a moment later, DNS
    rebinding, still reaches only the checked one). A redirect's target is checked like the first URI
    (scheme, prefixes, artifact root, host) before it is followed, at most MAX_REDIRECTS times, and
    ``headers`` (credentials) go to the first host only. No proxy is used (a proxy would do its own
    lookup). Raises UriRefused naming the rule, FileNotFoundError on 404, OSError otherwise.
    """
    first, current, sent = uri, uri, dict(headers or {})
    for hop in range(MAX_REDIRECTS + 1):
        looked_up: dict[str, list[str]] = {}

        def once(host: str) -> list[str]:
            looked_up[host] = resolve(host)
            return looked_up[host]

        parts = urlsplit(current)
        if parts.scheme.lower() not in ("http", "https"):
            problem = f"scheme {parts.scheme!r} is not http(s)"
        else:
            problem = uri_problem(current, policy, once, namespace)
        if problem:
            via = f" (redirected from {first})" if hop else ""
            raise UriRefused(f"{current}{via} refused by the URI policy: {problem}")
        host = parts.hostname or ""
        address = looked_up[host][0].split("%", 1)[0] if host in looked_up else host.strip("[]")
        kind = _PinnedHTTPSConnection if parts.scheme.lower() == "https" else _PinnedHTTPConnection
        connection = kind(host, parts.port, address, timeout)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", target, headers=sent)
            response = connection.getresponse()
            if response.status in REDIRECT_STATUSES and response.getheader("Location"):
                following = urljoin(current, response.getheader("Location"))
                if urlsplit(following).netloc != parts.netloc or urlsplit(following).scheme != parts.scheme:
                    sent = {}  # credentials are for the host they were given for
                current = following
                continue
            if response.status == 404:
                raise FileNotFoundError(f"{current}: HTTP 404")
            if response.status >= 400:
                raise OSError(f"{current}: HTTP {response.status} {response.reason}")
            return response.read()
        except http.client.HTTPException as error:  # a malformed answer: unreadable, like a broken connection
            raise OSError(f"{current}: {type(error).__name__}: {error}") from None
        finally:
            connection.close()
    raise OSError(f"{first}: more than {MAX_REDIRECTS} redirects")


def environment_policy() -> UriPolicy:
    """The policy of this process's settings (``MLOPS_URI_*``): the operator's, and a local training run's
    (it inherits the operator's environment)."""
    return UriPolicy.from_settings(Settings())


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))
