#!/usr/bin/env bash
# Builds Kubeflow Pipelines' backend for the tests that run against the real KFP API server, from a KFP
# source tree (the module proxy answers 403 for github.com/kubeflow/pipelines, so it cannot be fetched):
#   apiserver, scheduledworkflow (the ScheduledWorkflow controller), persistence_agent
#   crds/: the Argo Workflows CRDs (github.com/argoproj/argo-workflows/v4 at the version KFP's go.mod
#          requires, manifests/base/crds/minimal) and KFP's ScheduledWorkflow CRD
# into $cache/kfp-$KFP_VERSION (outside the checkout, keyed by tag; a warm cache does nothing).
# The source comes from MLOPS_KFP_SRC, else ../shared/third_party/kubeflow-pipelines-$KFP_VERSION next to
# the repository, else /work/shared/third_party/...; it is copied to a writable place first.
# No source: exit 3 with the reason on stderr (a failure, exit 1, when CI=true).
# Prints the directory on the last line of stdout; progress goes to stderr.
set -euo pipefail

KFP_VERSION=2.17.0

here=$(cd "$(dirname "$0")" && pwd)
cache=${MLOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlops-operator}
dir="$cache/kfp-$KFP_VERSION"
binaries="apiserver scheduledworkflow persistence_agent"

log() { printf '[build-kfp] %s\n' "$*" >&2; }

ready() {
  for b in $binaries; do [ -x "$dir/$b" ] || return 1; done
  [ -f "$dir/crds/scheduled-workflow-crd.yaml" ] && [ -f "$dir/crds/argo.done" ]
}
ready && { echo "$dir"; exit 0; }

src=${MLOPS_KFP_SRC:-}
if [ -z "$src" ]; then
  for candidate in "$here/../../shared/third_party/kubeflow-pipelines-$KFP_VERSION" \
                   "/work/shared/third_party/kubeflow-pipelines-$KFP_VERSION"; do
    [ -f "$candidate/go.mod" ] && { src=$candidate; break; }
  done
fi
if [ -z "$src" ] || [ ! -f "$src/go.mod" ] || [ ! -d "$src/backend/src/apiserver" ]; then
  log "no Kubeflow Pipelines $KFP_VERSION source tree (go.mod, backend/, api/, kubernetes_platform/, third_party/," \
      "manifests/kustomize/base/pipeline/ of kubeflow/pipelines at tag $KFP_VERSION): set MLOPS_KFP_SRC to it" \
      "(looked in ${MLOPS_KFP_SRC:-../shared/third_party/kubeflow-pipelines-$KFP_VERSION and /work/shared/third_party})"
  [ "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" = true ] && exit 1
  exit 3
fi
command -v go >/dev/null || { log "Go is required to build KFP's backend (apt-get install golang, or https://go.dev/dl)"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.kfp-$KFP_VERSION.lock"
if command -v flock >/dev/null; then
  flock -n 9 || { log "another KFP build is running; waiting for it"; flock 9; }
fi
ready && { echo "$dir"; exit 0; }

# Keep the progress line alive during long, silent Go builds.
. "$(dirname "${BASH_SOURCE[0]}")/ticker.sh"

mkdir -p "$dir/crds"
# The tree may live on a read-only mount; go build writes nothing into it with -mod=mod, but the
# go.sum may need entries, so build from a copy.
work="$cache/kfp-src-$KFP_VERSION"
log "copying the KFP $KFP_VERSION source from $src to $work"
rm -rf "$work"
mkdir -p "$work"
cp -a "$src/." "$work/"
chmod -R u+w "$work"

started=$SECONDS
build() {
  local name=$1 pkg=$2
  [ -x "$dir/$name" ] && return 0
  log "building $name ($pkg)${3:+; $3}"
  (cd "$work" && with_ticker "$name" go build -mod=mod -ldflags "-s -w" -o "$dir/$name.tmp" "$pkg")
  mv "$dir/$name.tmp" "$dir/$name"
}
build apiserver ./backend/src/apiserver \
  "cold, it downloads about 4 GB of modules and takes 7-15 minutes on 2 cores; warm, seconds"
build scheduledworkflow ./backend/src/crd/controller/scheduledworkflow
build persistence_agent ./backend/src/agent/persistence

cp "$work/manifests/kustomize/base/pipeline/cluster-scoped/scheduled-workflow-crd.yaml" "$dir/crds/"
argo_version=$(cd "$work" && go list -mod=mod -m -f '{{.Version}}' github.com/argoproj/argo-workflows/v4)
log "taking the Argo Workflows CRDs from github.com/argoproj/argo-workflows/v4@$argo_version"
argo_dir=$(cd "$work" && go mod download -json "github.com/argoproj/argo-workflows/v4@$argo_version" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
rm -f "$dir"/crds/argoproj.io_*.yaml
cp "$argo_dir"/manifests/base/crds/minimal/argoproj.io_*.yaml "$dir/crds/"
chmod u+w "$dir"/crds/*.yaml
echo "$argo_version" >"$dir/crds/argo.done"
rm -rf "$work"
log "KFP $KFP_VERSION backend ready in $dir ($((SECONDS - started))s)"
echo "$dir"
