"""``kubectl mlops``: approve or roll back a ModelDeployment's rollout, request a retraining, show status.

Installed as the console script ``kubectl-mlops``, which kubectl runs as the plugin ``kubectl mlops``.
Each command sets one annotation the operator watches; nothing here changes a spec::

    kubectl mlops approve <deployment> [--version V]   # mlops.dev/approve=V (default: the candidate)
    kubectl mlops rollback <deployment> [--version V]  # mlops.dev/rollback=V (default: candidate, else stable)
    kubectl mlops retrain <training> --reason TEXT     # mlops.dev/retrain-requested=<time> <reason>
    kubectl mlops status [namespace] [-A]              # deployments and trainings at a glance
    kubectl mlops report <monitor> [-o FILE] [--open]  # mlops.dev/report-requested=<time>: a check and
                                                       #   its HTML drift report, copied to FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from mlops_operator.api.annotations import (
    APPROVE_ANNOTATION,
    REPORT_ANNOTATION,
    RETRAIN_ANNOTATION,
    ROLLBACK_ANNOTATION,
)
from mlops_operator.api.common import GROUP, VERSION
REPORT_WAIT_SECONDS = 120.0


class CommandError(Exception):
    """A command cannot do what was asked; the message says why."""


class ObjectsApi(Protocol):
    """The part of kubernetes' CustomObjectsApi the plugin uses (tests pass a fake)."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str
                                     ) -> dict[str, Any]: ...

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                       body: dict[str, Any]) -> dict[str, Any]: ...

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str
                                      ) -> dict[str, Any]: ...

    def list_cluster_custom_object(self, group: str, version: str, plural: str) -> dict[str, Any]: ...


def approve_version(deployment: dict[str, Any], version: str | None) -> str:
    """The version to approve: the one given, which must be the candidate awaiting approval, or the candidate."""
    status = deployment.get("status") or {}
    candidate = status.get("candidateVersion")
    name = deployment["metadata"]["name"]
    if version is None:
        if not candidate:
            raise CommandError(f"ModelDeployment {name} has no candidate version to approve")
        return str(candidate)
    if candidate and str(version) != str(candidate):
        raise CommandError(f"ModelDeployment {name} is rolling out version {candidate}, not {version}")
    return str(version)


def rollback_version(deployment: dict[str, Any], version: str | None) -> str:
    """The version to roll back: the one given, else the candidate in flight, else the stable version
    (which then returns to the previous stable one)."""
    status = deployment.get("status") or {}
    name = deployment["metadata"]["name"]
    if version is not None:
        return str(version)
    if status.get("candidateVersion"):
        return str(status["candidateVersion"])
    if status.get("stableVersion") and status.get("previousStableVersion"):
        return str(status["stableVersion"])
    raise CommandError(f"ModelDeployment {name} has no rollout in flight and no previous stable version to return to")


def retrain_request(reason: str, now: datetime | None = None) -> str:
    """The retrain annotation's value: unique per request (a time), readable (the reason)."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp} {reason}".strip()


def _annotate(api: ObjectsApi, namespace: str, plural: str, name: str, key: str, value: str) -> None:
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name,
                                       {"metadata": {"annotations": {key: value}}})


def _condition(obj: dict[str, Any], type_: str) -> str:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return str(condition.get("status"))
    return "-"


def _traffic(obj: dict[str, Any]) -> str:
    parts = []
    for target in (obj.get("status") or {}).get("traffic") or []:
        suffix = " mirrored" if target.get("shadow") else ""
        parts.append(f"{target['predictor']}@{target['version']}={target['weight']}%{suffix}")
    return ",".join(parts) or "-"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def status_tables(deployments: Sequence[dict[str, Any]], trainings: Sequence[dict[str, Any]], out: TextIO,
                  all_namespaces: bool = False) -> None:
    """Print deployments and trainings as kubectl prints tables."""
    ns = ["NAMESPACE"] if all_namespaces else []
    if deployments:
        rows = [ns + ["DEPLOYMENT", "READY", "PHASE", "STABLE", "CANDIDATE", "TRAFFIC", "ENDPOINT"]]
        for obj in deployments:
            status = obj.get("status") or {}
            rows.append(([obj["metadata"]["namespace"]] if all_namespaces else []) + [
                obj["metadata"]["name"], _condition(obj, "Ready"), status.get("phase") or "-",
                str(status.get("stableVersion") or "-"), str(status.get("candidateVersion") or "-"),
                _traffic(obj), status.get("endpoint") or "-"])
        _table(rows, out)
    if trainings:
        if deployments:
            out.write("\n")
        rows = [ns + ["TRAINING", "PHASE", "LATEST RUN", "VALIDATED VERSION"]]
        for obj in trainings:
            status = obj.get("status") or {}
            latest = status.get("latestRun") or {}
            rows.append(([obj["metadata"]["namespace"]] if all_namespaces else []) + [
                obj["metadata"]["name"], status.get("phase") or "-",
                f"{latest.get('name', '-')} ({latest.get('state', '-')})" if latest else "-",
                str((status.get("latestValidatedModel") or {}).get("version") or "-")])
        _table(rows, out)
    if not deployments and not trainings:
        out.write("No ModelDeployments or ModelTrainings found.\n")


def run(args: argparse.Namespace, api: ObjectsApi, namespace: str, out: TextIO) -> int:
    """Carry out one parsed command against ``api``."""
    if args.command == "approve":
        deployment = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", args.name)
        version = approve_version(deployment, args.version)
        _annotate(api, namespace, "modeldeployments", args.name, APPROVE_ANNOTATION, version)
        out.write(f"modeldeployment.mlops.dev/{args.name} version {version} approved\n")
    elif args.command == "rollback":
        deployment = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", args.name)
        version = rollback_version(deployment, args.version)
        _annotate(api, namespace, "modeldeployments", args.name, ROLLBACK_ANNOTATION, version)
        out.write(f"modeldeployment.mlops.dev/{args.name} version {version} rolled back\n")
    elif args.command == "retrain":
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeltrainings", args.name)  # exists?
        value = retrain_request(args.reason)
        _annotate(api, namespace, "modeltrainings", args.name, RETRAIN_ANNOTATION, value)
        out.write(f"modeltraining.mlops.dev/{args.name} retraining requested ({value})\n")
    elif args.command == "report":
        return _report(args, api, namespace, out)
    else:
        listing = args.all_namespaces or False
        where = args.status_namespace or namespace

        def items(plural: str) -> list[dict[str, Any]]:
            if listing:
                return api.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
            return api.list_namespaced_custom_object(GROUP, VERSION, where, plural)["items"]

        status_tables(items("modeldeployments"), items("modeltrainings"), out, all_namespaces=listing)
    return 0


def _report(args: argparse.Namespace, api: ObjectsApi, namespace: str, out: TextIO) -> int:
    """Ask the operator for a check and its report (unless --no-refresh), wait for it, copy it here."""
    import time

    monitor = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "driftmonitors", args.name)
    if not args.no_refresh:
        value = retrain_request("kubectl mlops report")
        _annotate(api, namespace, "driftmonitors", args.name, REPORT_ANNOTATION, value)
        out.write(f"driftmonitor.mlops.dev/{args.name}: report requested ({value}); waiting for the check")
        out.flush()
        deadline = time.monotonic() + args.timeout
        while True:
            monitor = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "driftmonitors", args.name)
            if ((monitor.get("status") or {}).get("report") or {}).get("request") == value:
                out.write(" done\n")
                break
            if time.monotonic() > deadline:
                out.write("\n")
                ready = next((c for c in (monitor.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                             {})
                raise CommandError(f"no report after {args.timeout:g} s (Ready: {ready.get('reason', '?')}: "
                                   f"{ready.get('message', '')}); is the operator running?")
            out.write(".")
            out.flush()
            time.sleep(1.0)
    report = (monitor.get("status") or {}).get("report") or {}
    if not report.get("uri"):
        raise CommandError(f"DriftMonitor {args.name} has no report yet")
    import fsspec

    try:
        with fsspec.open(report["uri"], "rb") as handle:
            data = handle.read()
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read {report['uri']}: {error} (the artifact root must be readable from here)") from None
    target = args.output or f"{args.name}-drift-report.html"
    with open(target, "wb") as handle:
        handle.write(data)
    out.write(f"{report.get('verdict', '?')} at {report.get('time', '?')}: wrote {target} ({len(data)} bytes) "
              f"from {report['uri']}\n")
    if args.open:
        import webbrowser
        from pathlib import Path

        webbrowser.open(Path(target).resolve().as_uri())
    return 0


def parser() -> argparse.ArgumentParser:
    """The plugin's command line."""
    top = argparse.ArgumentParser(prog="kubectl mlops", description=__doc__.splitlines()[0])
    top.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    top.add_argument("--kubeconfig", help="path of the kubeconfig (default: $KUBECONFIG or ~/.kube/config)")
    top.add_argument("--context", help="kubeconfig context to use")
    commands = top.add_subparsers(dest="command", required=True)
    approve = commands.add_parser("approve", help="approve the candidate version of a ModelDeployment")
    approve.add_argument("name")
    approve.add_argument("--version", help="version to approve (default: the candidate)")
    rollback = commands.add_parser("rollback", help="roll back a ModelDeployment's rollout (or its stable version)")
    rollback.add_argument("name")
    rollback.add_argument("--version", help="version to roll back (default: the candidate, else the stable one)")
    retrain = commands.add_parser("retrain", help="request a new run of a ModelTraining")
    retrain.add_argument("name")
    retrain.add_argument("--reason", required=True, help="why (recorded in the run's trigger)")
    status = commands.add_parser("status", help="show ModelDeployments and ModelTrainings")
    status.add_argument("status_namespace", nargs="?", metavar="namespace",
                        help="namespace (default: -n or the context's)")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    report = commands.add_parser("report", help="write (and open) the HTML drift report of a DriftMonitor")
    report.add_argument("name")
    report.add_argument("-o", "--output", help="file to write (default: <monitor>-drift-report.html)")
    report.add_argument("--open", action="store_true", help="open it in the web browser")
    report.add_argument("--no-refresh", action="store_true",
                        help="copy the last report instead of asking for a check now")
    report.add_argument("--timeout", type=float, default=REPORT_WAIT_SECONDS, help="seconds to wait for the check")
    for sub in (approve, rollback, retrain, report):
        sub.add_argument("-n", "--namespace", dest="sub_namespace", help=argparse.SUPPRESS)
    return top


def _connect(kubeconfig: str | None, context: str | None) -> tuple[ObjectsApi, str]:
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            active = next(c for c in config.list_kube_config_contexts(config_file=kubeconfig)[0]
                          if c["name"] == context)
        namespace = (active or {}).get("context", {}).get("namespace") or "default"
    except config.ConfigException:
        config.load_incluster_config()
        namespace = "default"
    return client.CustomObjectsApi(), namespace


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, api: ObjectsApi | None = None) -> int:
    """Entry point of ``kubectl-mlops``; returns the exit code."""
    args = parser().parse_args(argv)
    from kubernetes.client.exceptions import ApiException

    try:
        if api is None:
            api, default_namespace = _connect(args.kubeconfig, args.context)
        else:
            default_namespace = "default"
        namespace = getattr(args, "sub_namespace", None) or args.namespace or default_namespace
        return run(args, api, namespace, out)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ApiException as error:
        print(f"error: {api_error_message(error, getattr(args, 'command', None))}", file=sys.stderr)
        return 1


def api_error_message(error: Any, command: str | None = None) -> str:
    """A readable line for an API error: the server's own message (an admission policy's reason), and for
    a refused approve or rollback what permission is missing."""
    try:
        message = json.loads(error.body or "{}").get("message") or ""
    except (TypeError, ValueError):
        message = ""
    if error.status == 404:
        return f"not found ({error.status})" + (f": {message}" if message else "")
    line = f"{error.reason} ({error.status})" + (f": {message}" if message else "")
    if error.status == 403 and command in ("approve", "rollback"):
        line += (f"\nyou are not allowed to {command} this ModelDeployment: that needs the verb 'approve' on "
                 "modeldeployments.mlops.dev (the chart's ClusterRole <release>-approver) besides patch rights; "
                 "ask your cluster administrator for a RoleBinding to it")
    return line


if __name__ == "__main__":
    raise SystemExit(main())
