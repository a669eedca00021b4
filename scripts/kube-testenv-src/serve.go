package main

// serve: embedded etcd and the real kube-apiserver in one process.

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const (
	adminUser = "admin"
	cniUser   = "calico-cni"
)

func cmdServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "", "state directory (certs, etcd data, kubeconfigs, audit.log)")
	port := fs.Int("port", 0, "apiserver secure port (0 = pick a free one)")
	etcdPort := fs.Int("etcd-port", 0, "etcd client port on 127.0.0.1 (0 = pick a free one)")
	verbosity := fs.Int("v", 0, "apiserver log verbosity")
	address := fs.String("address", "127.0.0.1", "address the apiserver binds to and advertises (etcd stays on 127.0.0.1); "+
		"also a SAN of the serving certificate")
	cluster := fs.Bool("cluster", false, "serve kubelets and controllers (scripts/kube-cluster): Node,RBAC authorization, "+
		"the ServiceAccount admission plugin, a client certificate for the kubelets' API, dual-stack services")
	var extra multiFlag
	fs.Var(&extra, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--feature-gates=X=true (repeatable)")
	_ = fs.Parse(args)
	if *dir == "" {
		return errors.New("serve: --dir is required")
	}
	d, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}

	addr := net.ParseIP(*address)
	if addr == nil {
		return fmt.Errorf("serve: --address %q is not an IP address", *address)
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	if *port == 0 {
		*port = ports[0]
	}
	if *etcdPort == 0 {
		*etcdPort = ports[1]
	}
	peerPort := ports[2]

	p, err := ensurePKI(d, addr)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	server := "https://" + net.JoinHostPort(addr.String(), strconv.Itoa(*port))
	if err := writeClientFiles(d, server, p); err != nil {
		return err
	}
	auditPolicy := filepath.Join(d, "audit-policy.yaml")
	// One audit event per request (RequestReceived omitted), Metadata level for everything.
	if err := os.WriteFile(auditPolicy, []byte(`apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
`), 0o600); err != nil {
		return err
	}

	// etcd, embedded.
	cfg := embed.NewConfig()
	cfg.Name = "kube-testenv"
	cfg.Dir = filepath.Join(d, "etcd")
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"stderr"}
	cu := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(*etcdPort))}
	pu := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		return errors.New("etcd took too long to start")
	}
	fmt.Fprintf(os.Stderr, "kube-testenv: etcd ready on %s\n", cu.String())
	go func() {
		if err := <-e.Err(); err != nil {
			fmt.Fprintln(os.Stderr, "kube-testenv: etcd error:", err)
		}
	}()

	apiArgs := []string{
		"--etcd-servers=" + cu.String(),
		"--bind-address=" + addr.String(),
		"--secure-port=" + strconv.Itoa(*port),
		"--advertise-address=" + addr.String(),
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(d, "apiserver-certs"),
		"--tls-cert-file=" + filepath.Join(d, "serving.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "serving.key"),
		"--client-ca-file=" + filepath.Join(d, "ca.crt"),
		"--token-auth-file=" + filepath.Join(d, "tokens.csv"),
		"--service-account-issuer=" + server,
		"--service-account-key-file=" + filepath.Join(d, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(d, "sa.key"),
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--audit-policy-file=" + auditPolicy,
		"--audit-log-path=" + filepath.Join(d, "audit.log"),
		"--audit-log-format=json",
		"--audit-log-mode=blocking",
		"--audit-log-maxsize=0",
		"--audit-log-maxbackup=0",
		"--v=" + strconv.Itoa(*verbosity),
	}
	if *cluster {
		// As kubeadm: kubelets authenticate as system:node:NAME and are authorized by the Node
		// authorizer; pods get service-account tokens (the controller-manager creates the
		// accounts); the apiserver reaches kubelets (exec, logs) at their InternalIP with a
		// client certificate; services are dual-stack, as the seed's cluster.
		apiArgs = append(apiArgs,
			"--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112",
			"--kubelet-client-certificate="+filepath.Join(d, "apiserver-kubelet-client.crt"),
			"--kubelet-client-key="+filepath.Join(d, "apiserver-kubelet-client.key"),
			"--kubelet-preferred-address-types=InternalIP",
		)
	} else {
		// No controller-manager: no default ServiceAccount to admit pods with.
		apiArgs = append(apiArgs,
			"--authorization-mode=RBAC",
			"--service-cluster-ip-range=10.0.0.0/24",
			"--disable-admission-plugins=ServiceAccount",
		)
	}
	apiArgs = append(apiArgs, extra...)
	fmt.Fprintf(os.Stderr, "kube-testenv: starting kube-apiserver %s on %s\n  %s\n", version.Get().GitVersion, server, strings.Join(apiArgs, "\n  "))

	cmd := app.NewAPIServerCommand() // installs the SIGTERM/SIGINT handler; graceful stop on signal
	cmd.SetArgs(apiArgs)
	code := cli.Run(cmd)
	fmt.Fprintf(os.Stderr, "kube-testenv: kube-apiserver exited with code %d; stopping etcd\n", code)
	e.Close()
	os.Exit(code)
	return nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
