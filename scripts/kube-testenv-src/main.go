// kube-testenv: a real kube-apiserver with embedded etcd, in one process, and the other
// Kubernetes components (scheduler, controller-manager, kubelet, kubectl) as subcommands of the
// same binary, all from one k8s.io/kubernetes version, for the tests of the Rust Calico CNI
// (scripts/kube-testenv, scripts/kube-cluster). Test tooling only; not part of the product.
//
// Subcommands:
//
//	serve  --dir DIR [--port N] [--etcd-port N] [--address IP] [--cluster] [--v N] [--apiserver-arg ARG]...
//	apply  [--kubeconfig FILE] [--timeout D] -f FILE [-f FILE]...   (multi-doc YAML/JSON, create-or-update)
//	get    [--kubeconfig FILE] PATH [NAME] [-o json]                  (raw GET, prints the JSON body)
//	delete [--kubeconfig FILE] [--ignore-not-found] [--grace-period N] PATH [NAME]  (raw DELETE, default grace 0)
//	client-cert --dir DIR --name NAME --cn USER [--org GROUPS] [--server URL]
//	kube-scheduler|kube-controller-manager|kubelet|kubectl ARGS...    (the real components' CLIs)
//	version
//
// Invoked through a link named kubectl (or any component's name), it is that component.
// The kubeconfig defaults to $KUBECONFIG. get/delete exit 2 on HTTP 404, 1 on other errors.
package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/version"
)

func main() {
	// Multi-call: a link named after a component runs it with all its arguments.
	if run, ok := components[filepath.Base(os.Args[0])]; ok {
		os.Exit(run(os.Args[1:]))
	}
	if len(os.Args) < 2 {
		usage()
	}
	if run, ok := components[os.Args[1]]; ok {
		os.Exit(run(os.Args[2:]))
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = cmdServe(os.Args[2:])
	case "apply":
		err = cmdApply(os.Args[2:])
	case "get":
		err = cmdRaw(http.MethodGet, os.Args[2:])
	case "delete":
		err = cmdRaw(http.MethodDelete, os.Args[2:])
	case "client-cert":
		err = cmdClientCert(os.Args[2:])
	case "version":
		fmt.Println(version.Get().GitVersion)
	default:
		usage()
	}
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, ee.msg)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "kube-testenv:", err)
		os.Exit(1)
	}
}

type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return fmt.Sprintf("exit %d: %s", e.code, e.msg) }

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  kube-testenv serve --dir DIR [--port N] [--etcd-port N] [--address IP] [--cluster] [--v N] [--apiserver-arg ARG]...
  kube-testenv apply [--kubeconfig FILE] [--timeout 60s] -f FILE [-f FILE]...
  kube-testenv get [--kubeconfig FILE] PATH [NAME] [-o json]
  kube-testenv delete [--kubeconfig FILE] [--ignore-not-found] [--grace-period 0] PATH [NAME]
  kube-testenv client-cert --dir DIR --name NAME --cn USER [--org GROUPS] [--server URL]
  kube-testenv kube-scheduler|kube-controller-manager|kubelet|kubectl ARGS...
  kube-testenv version`)
	os.Exit(64)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
