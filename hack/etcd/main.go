// Command etcd is the upstream etcd server, built from go.etcd.io/etcd/server/v3.
// etcd's own go.mod carries replace lines, so `go install` of it fails; this tiny module
// calls the same entry point instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
