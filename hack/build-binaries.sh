#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules into a cache outside the checkout,
# keyed by version, so a fresh clone (and CI) reuses them and a warm run does nothing.
#   kube-apiserver, kube-controller-manager, kubectl  <- hack/kube (k8s.io/kubernetes + staging replaces)
#   etcd                                              <- hack/etcd (etcdmain.Main)
#   helm                                              <- go install helm.sh/helm/v3/cmd/helm
#   promtool (only when asked: `build-binaries.sh promtool`) <- go install .../prometheus/cmd/promtool
#   kubelet, kube-scheduler, kube-proxy (only when asked)    <- hack/kube, like kube-apiserver
#   coredns (only when asked: the local node's DNS)         <- go install github.com/coredns/coredns
#   argocd-lua (only when asked: `build-binaries.sh argocd-lua`) <- hack/argocd-lua: Argo CD's Lua
#       runtime for health scripts (gopher-lua + Argo CD's safe os library from argo-cd/v3 $ARGOCD_VERSION);
#       it has its own directory, keyed by that version, printed on the last line instead
#   prometheus (only when asked)      <- go install .../prometheus/cmd/prometheus (Kubernetes SD only)
#   minio (only when asked)           <- go install github.com/minio/minio (the S3 server the tests use)
# Prints the bin directory on the last line of stdout; progress goes to stderr.
set -euo pipefail

KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.21.4
# Prometheus tags its Go module v0.3MM.P for release v3.MM.P; this one is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION=v0.316.0
COREDNS_VERSION=v1.15.0
# Argo CD whose health-script runtime hack/argocd-lua reproduces (keep go.mod's versions equal to its).
ARGOCD_VERSION=v3.6.1
# MinIO publishes no semver module tags; this pseudo-version is the RELEASE.2026-02-12 commit the proxy serves.
MINIO_MODULE_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c

here=$(cd "$(dirname "$0")" && pwd)
cache=${MLOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlops-operator}
bin="$cache/bin-kube-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
mkdir -p "$bin"

log() { printf '[build-binaries] %s\n' "$*" >&2; }

# Keep the progress line alive during long, silent Go builds.
. "$(dirname "${BASH_SOURCE[0]}")/ticker.sh"

build_kube() {
  local name=$1
  [ -x "$bin/$name" ] && return 0
  log "building $name $KUBE_VERSION from k8s.io/kubernetes (first build takes several minutes)"
  local pkg=version
  local ld="-s -w"
  ld+=" -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  ld+=" -X k8s.io/component-base/version.gitMajor=1"
  ld+=" -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ld+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  ld+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
  ld+=" -X k8s.io/client-go/pkg/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  (cd "$here/kube" && with_ticker "$name" env CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$ld" \
      -o "$bin/$name.tmp" "k8s.io/kubernetes/cmd/$name")
  mv "$bin/$name.tmp" "$bin/$name"
}

build_etcd() {
  [ -x "$bin/etcd" ] && return 0
  log "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3"
  local ld="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
  (cd "$here/etcd" && with_ticker etcd env CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$ld" -o "$bin/etcd.tmp" .)
  mv "$bin/etcd.tmp" "$bin/etcd"
}

build_helm() {
  [ -x "$bin/helm" ] && return 0
  log "building helm $HELM_VERSION (go install)"
  local gobin
  gobin=$(mktemp -d)
  with_ticker helm env CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$gobin/helm" "$bin/helm"
  rmdir "$gobin"
}

build_promtool() {
  [ -x "$bin/promtool" ] && return 0
  log "building promtool from github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION (go install)"
  local gobin
  gobin=$(mktemp -d)
  # remove_all_sd drops the service-discovery plugins (promtool's rule checks do not need them; one of
  # them, nomad/api, is not served by the module proxy).
  with_ticker promtool env CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath -tags remove_all_sd -ldflags "-s -w" \
      "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
  mv "$gobin/promtool" "$bin/promtool"
  rmdir "$gobin"
}

build_coredns() {
  [ -x "$bin/coredns" ] && [ "$(cat "$bin/coredns.version" 2>/dev/null)" = "$COREDNS_VERSION" ] && return 0
  log "building coredns $COREDNS_VERSION (go install)"
  local gobin
  gobin=$(mktemp -d)
  with_ticker coredns env CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath \
      -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
      "github.com/coredns/coredns@$COREDNS_VERSION"
  mv "$gobin/coredns" "$bin/coredns"
  echo "$COREDNS_VERSION" >"$bin/coredns.version"
  rmdir "$gobin"
}
# Argo CD v3 needs a newer Go than this project, so its util/lua package cannot be imported: the
# harness copies what it runs (gopher-lua's setup and decodeValue, in main.go) and takes Argo CD's own
# safe os library file from the module as the proxy serves it.
build_argocd_lua() {
  local dir="$cache/argocd-lua-$ARGOCD_VERSION"
  [ -x "$dir/argocd-lua" ] && { echo "$dir"; return 0; }
  mkdir -p "$dir"
  log "building argocd-lua (Argo CD $ARGOCD_VERSION health-script runtime: gopher-lua + its safe os library)"
  local work zip
  work=$(mktemp -d)
  cp "$here/argocd-lua/go.mod" "$here/argocd-lua/main.go" "$work/"
  [ -f "$here/argocd-lua/go.sum" ] && cp "$here/argocd-lua/go.sum" "$work/"
  log "  fetching github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION from the Go module proxy (about 20 MB)"
  # The module's go directive is newer than our Go, so `go mod download` complains after fetching;
  # the verified zip is in the module cache all the same.
  (cd "$work" && GOTOOLCHAIN=local go mod download "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" 2>/dev/null || true)
  zip="$(go env GOMODCACHE)/cache/download/github.com/argoproj/argo-cd/v3/@v/$ARGOCD_VERSION.zip"
  [ -f "$zip" ] || { log "could not fetch argo-cd/v3@$ARGOCD_VERSION (no $zip)"; rm -rf "$work"; return 1; }
  python3 - "$zip" "$work/oslib_safe.go" "$ARGOCD_VERSION" <<'PY'
import sys, zipfile
zip_path, target, version = sys.argv[1:]
name = f"github.com/argoproj/argo-cd/v3@{version}/util/lua/oslib_safe.go"
source = zipfile.ZipFile(zip_path).read(name).decode()
header = f"// Copied at build time from {name} (Apache-2.0). Do not edit.\n"
open(target, "w").write(header + source.replace("package lua\n", "package main\n", 1))
PY
  (cd "$work" && with_ticker argocd-lua env CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" -o "$dir/argocd-lua.tmp" .)
  mv "$dir/argocd-lua.tmp" "$dir/argocd-lua"
  rm -rf "$work"
  echo "$dir"
}
if [ "${1:-}" = argocd-lua ]; then
  command -v go >/dev/null || [ -x "$cache/argocd-lua-$ARGOCD_VERSION/argocd-lua" ] || {
    log "Go is required to build argocd-lua (apt-get install golang, or https://go.dev/dl)"; exit 1; }
  mkdir -p "$cache"
  exec 9>"$cache/.argocd-lua.lock"
  command -v flock >/dev/null && { flock -n 9 || { log "another argocd-lua build is running; waiting for it"; flock 9; }; }
  build_argocd_lua
  exit $?
fi
# Binaries whose version is not part of the bin directory's name are stored as <name>-<version> with a
# <name> symlink beside it, so a version bump rebuilds them and a warm cache reuses them.
build_versioned() {
  local name=$1 version=$2 pkg=$3 tags=$4
  if [ -x "$bin/$name-$version" ]; then
    ln -sfn "$name-$version" "$bin/$name"
    return 0
  fi
  log "building $name from $pkg@$version (go install; several minutes on 2 cores)"
  local gobin
  gobin=$(mktemp -d)
  with_ticker "$name" env CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath -tags "$tags" -ldflags "-s -w" "$pkg@$version"
  mv "$gobin/$name" "$bin/$name-$version"
  rmdir "$gobin"
  ln -sfn "$name-$version" "$bin/$name"
}

# The server with only Kubernetes service discovery compiled in: plugins/plugin_kubernetes.go is built
# under `!remove_all_sd || enable_kubernetes_sd` (checked in v0.316.0's source), every other SD plugin
# only without remove_all_sd.
build_prometheus() {
  build_versioned prometheus "$PROMETHEUS_MODULE_VERSION" github.com/prometheus/prometheus/cmd/prometheus \
      remove_all_sd,enable_kubernetes_sd
}

build_minio() {
  build_versioned minio "$MINIO_MODULE_VERSION" github.com/minio/minio ""
}

want=${*:-etcd kube-apiserver kube-controller-manager kubectl helm}

# Everything there already: no lock (a long build of other binaries must not block this caller).
missing=0
for b in $want; do [ -x "$bin/$b" ] || missing=1; done
[ "$want" = "${want/coredns/}" ] || [ "$(cat "$bin/coredns.version" 2>/dev/null)" = "$COREDNS_VERSION" ] || missing=1
[ "$want" = "${want/minio/}" ] || [ -x "$bin/minio-$MINIO_MODULE_VERSION" ] || missing=1
[ "$want" = "${want/prometheus/}" ] || [ -x "$bin/prometheus-$PROMETHEUS_MODULE_VERSION" ] || missing=1
if [ $missing = 0 ]; then
  echo "$bin"
  exit 0
fi

# Go is only needed when something is missing; a warm cache works without it.
for b in $want; do
  if [ ! -x "$bin/$b" ] && ! command -v go >/dev/null; then
    log "Go is required to build $b (apt-get install golang, or https://go.dev/dl)"
    exit 1
  fi
done
# One build at a time per cache dir (e.g. `make up` and a test session started together). The S3 and
# Prometheus servers, which only some tests need, have their own lock so their long builds do not hold up
# the control plane's.
lock() {
  local file=$1 fd=$2
  command -v flock >/dev/null || return 0
  eval "exec $fd>\"\$file\""
  flock -n "$fd" || { log "another build is running in $bin ($(basename "$file")); waiting for it"; flock "$fd"; }
}
locked_main=
for b in $want; do
  case $b in
    minio|prometheus) lock "$bin/.lock-$b" 8 ;;
    *) [ -n "$locked_main" ] || { lock "$bin/.lock" 9; locked_main=1; } ;;
  esac
  case $b in
    etcd) build_etcd ;;
    helm) build_helm ;;
    promtool) build_promtool ;;
    coredns) build_coredns ;;
    minio) build_minio ;;
    prometheus) build_prometheus ;;
    kube-apiserver|kube-controller-manager|kubectl|kubelet|kube-scheduler|kube-proxy) build_kube "$b" ;;
    *) log "unknown binary $b"; exit 2 ;;
  esac
  case $b in minio|prometheus) exec 8>&- ;; esac
done
log "binaries ready in $bin"
echo "$bin"
