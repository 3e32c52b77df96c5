// Argo CD's Lua runtime for the health-check tests: gopher-lua and gopher-json at the versions
// github.com/argoproj/argo-cd/v3 v3.6.1 pins, with its safe os library (oslib_safe.go, taken from
// that module at build time by hack/build-binaries.sh argocd-lua).
module mlops.dev/hack/argocd-lua

go 1.24

require (
	github.com/yuin/gopher-lua v1.1.2
	layeh.com/gopher-json v0.0.0-20190114024228-97fed8db8427
)
