# mlops-operator. `make demo` runs the whole loop; `make test` runs the tests. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
CACHE      ?= $(HOME)/.cache/mlops-operator
UV_HOME    := $(CACHE)/uv-$(UV_VERSION)
UV         := $(UV_HOME)/bin/uv
VENV       := .venv
PY         := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(UV):
	@echo "[make] bootstrapping uv $(UV_VERSION) into $(UV_HOME)"
	python3 -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet uv==$(UV_VERSION)

# Bytecode is compiled at install: with PYTHONDONTWRITEBYTECODE set (as on these machines and in the
# image) nothing is ever cached, and every process (each training step, operator, test helper)
# would compile kfp, pandas, scikit-learn, scipy and this package from source again: seconds per
# process. (An edited module is compiled anew in memory, as before.)
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	@echo "[make] installing the locked Python dependencies into $(VENV) (and compiling their bytecode)"
	$(UV) sync --frozen --compile-bytecode
	$(PY) -m compileall -q operator/mlops_operator
	@touch $@

.PHONY: venv
venv: $(VENV)/.synced ## Create the project virtualenv from uv.lock

.PHONY: lock
lock: | $(UV) ## Re-resolve uv.lock after changing pyproject.toml
	$(UV) lock

.PHONY: binaries
binaries: ## Build etcd, kube-apiserver, kube-controller-manager, kubectl, helm (cached by version) and Seldon's controller
	hack/build-binaries.sh >/dev/null
	python3 hack/seldon.py build --optional >/dev/null

.PHONY: seldon
seldon: ## Build Seldon Core v1.17.1's controller and executor from $$MLOPS_SELDON_SRC (cached by source hash)
	python3 hack/seldon.py build

.PHONY: cluster-up
cluster-up: venv ## Start the local control plane (or use $$KUBECONFIG's cluster); NODE=1 adds a real node (root)
	$(PY) hack/devcluster.py up $(if $(filter 1 true yes,$(NODE)),--node)

.PHONY: cluster-down
cluster-down: venv ## Stop exactly the processes cluster-up started and undo the node's host changes
	$(PY) hack/devcluster.py down

.PHONY: manifests
manifests: venv ## Regenerate everything generated from source (CRDs, compiled pipelines)
	$(PY) -m mlops_operator.api.crd write crds/
	$(PY) pipelines/tabular.py
	$(PY) hack/gen-settings-table.py write
	$(PY) hack/gen-manifests.py write

.PHONY: check-generated
check-generated: venv ## Fail when a generated file is stale
	$(PY) -m mlops_operator.api.crd check crds/
	$(PY) hack/gen-settings-table.py check
	$(PY) hack/gen-manifests.py check

.PHONY: lint
lint: venv ## Import layering contracts
	$(VENV)/bin/lint-imports

.PHONY: browser
browser: ## Headless Chromium for the drift report test (Debian's chromium, installed with apt-get when missing)
	@if command -v chromium >/dev/null 2>&1 || [ -n "$${MLOPS_CHROMIUM:-}" ]; then :; else \
	  echo "[make] installing Debian's chromium for the drift report browser test (apt-get, a few minutes)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium; \
	fi

.PHONY: test
test: venv browser ## Run every test (starts the local control plane unless KUBECONFIG is set)
	@if [ -z "$${KUBECONFIG:-}" ]; then $(PY) hack/devcluster.py up; fi
	$(MAKE) --no-print-directory lint
	python3 hack/seldon.py build --optional >/dev/null
	@# CI (MLOPS_DEV_TEARDOWN=1) stops the control plane this target started, whatever pytest's result.
	@status=0; $(VENV)/bin/pytest || status=$$?; \
	if [ "$${MLOPS_DEV_TEARDOWN:-}" = 1 ] && [ -z "$${KUBECONFIG:-}" ]; then $(PY) hack/devcluster.py down; fi; \
	exit $$status

.PHONY: kfp-server
kfp-server: ## Build KFP 2.17.0's API server, ScheduledWorkflow controller and persistence agent for the real-server tests (MLOPS_KFP_SRC; cached)
	bash hack/build-kfp.sh

.PHONY: images
images: venv ## Build the node's images (pause, base, the Dockerfile's operator image, Seldon's; cached by input hash)
	$(PY) hack/images.py build pause base uv operator
	@if python3 hack/seldon.py src >/dev/null; then $(PY) hack/images.py build seldon-executor mlserver rclone; fi

.PHONY: e2e
e2e: venv ## Only the e2e tests: a real node, the operator image, the chart installed as a Pod (root)
	$(VENV)/bin/pytest -q tests/e2e

.PHONY: helm-check
helm-check: venv ## Chart, manifests, Argo CD health checks and alerts (promtool is built on first use)
	$(PY) hack/gen-manifests.py check
	$(VENV)/bin/pytest -q tests/unit/test_helm_chart.py tests/unit/test_alerts.py tests/unit/test_argocd_health.py

.PHONY: helm-test
helm-test: venv ## The chart on the local control plane: dry-run, install, RBAC, operator as the chart's ServiceAccount
	@if [ -z "$${KUBECONFIG:-}" ]; then $(PY) hack/devcluster.py up; fi
	$(VENV)/bin/pytest -q tests/integration/test_helm.py

.PHONY: test-as-chart-sa
test-as-chart-sa: venv ## The integration suite with every operator running as the chart's ServiceAccount
	@if [ -z "$${KUBECONFIG:-}" ]; then $(PY) hack/devcluster.py up; fi
	PYTHONPATH=tests $(VENV)/bin/pytest -p chart_sa_plugin tests/integration

.PHONY: demo
demo: venv ## The whole loop on the local control plane: train, serve, drift, retrain, canary
	$(PY) hack/demo.py

.PHONY: demo-down
demo-down: venv ## Stop the demo's operator and model servers (the control plane keeps running)
	$(PY) hack/demo.py down

.PHONY: run
run: venv ## Run the operator in the foreground against the current cluster
	KUBECONFIG=$${KUBECONFIG:-$$($(PY) hack/devcluster.py kubeconfig)} $(PY) -m mlops_operator

.PHONY: bench
bench: venv ## Benchmarks: training overhead, router overhead, drift engine vs Evidently and scipy, the operator at scale vs a kopf floor
	@for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

.PHONY: clean
clean: ## Remove the virtualenv and local state (not the binary cache)
	-$(PY) hack/devcluster.py down
	-MLOPS_DEV_DIR=$(CURDIR)/.dev-e2e $(PY) hack/devcluster.py down
	rm -rf $(VENV) .dev .dev-e2e
