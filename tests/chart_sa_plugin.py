"""A pytest plugin that runs every operator the integration tests start as the Helm chart's
ServiceAccount instead of as cluster admin:

    PYTHONPATH=tests .venv/bin/pytest -p chart_sa_plugin tests/integration

Before an ``OperatorProcess`` starts, the chart's ServiceAccount and RBAC are installed for its
namespace (``chart_support.ChartServiceAccount``, namespaced mode) and the process gets a kubeconfig
with that account's token. The tests themselves keep their admin client. The per-namespace
cluster-scoped objects (kopf's scanning ClusterRole and binding) are deleted at the end.
"""

from __future__ import annotations

from typing import Any

_accounts: dict[str, Any] = {}


def pytest_sessionstart(session: Any) -> None:
    import kube_support
    from chart_support import ChartServiceAccount

    original_start = kube_support.OperatorProcess.start

    def start_as_chart_service_account(self: kube_support.OperatorProcess) -> kube_support.OperatorProcess:
        account = _accounts.get(self.namespace)
        if account is None:
            account = _accounts[self.namespace] = ChartServiceAccount(self.kubeconfig, self.namespace).install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = account.write_kubeconfig(self.data_dir / "chart-service-account.kubeconfig")
        return original_start(self)

    kube_support.OperatorProcess.start = start_as_chart_service_account


def pytest_sessionfinish(session: Any) -> None:
    for account in _accounts.values():
        account.uninstall()


def pytest_report_header(config: Any) -> str:
    return "operators run as the Helm chart's ServiceAccount (chart_sa_plugin)"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """test_helm.py installs the chart and runs its operator as the chart's ServiceAccount on its
    own (with its own admin steps); wrapping that operator again would make it install RBAC with
    the restricted token. Leave it to the plain suite."""
    kept = [item for item in items if "test_helm.py" not in item.nodeid]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
