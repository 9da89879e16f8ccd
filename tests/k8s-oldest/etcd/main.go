// Command etcd is etcd's own server entry point, built from our module.
//
// etcd's go.mod carries replace directives, so `go install go.etcd.io/etcd/server/v3`
// is refused; importing etcdmain from a module of our own sidesteps that and
// lets one go.sum pin etcd together with the kube-apiserver it serves.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
