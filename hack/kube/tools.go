//go:build tools

// Package tools only exists so that `go mod tidy` keeps the commands we build in go.sum.
package tools
