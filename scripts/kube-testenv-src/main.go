// kube-testenv: a real kube-apiserver with embedded etcd, in one process, on 127.0.0.1,
// for the tests of the Rust Calico CNI. Test tooling only; not part of the product.
//
// Subcommands:
//
//	serve  --dir DIR [--port N] [--etcd-port N] [--v N] [--apiserver-arg ARG]...
//	apply  [--kubeconfig FILE] [--timeout D] -f FILE [-f FILE]...   (multi-doc YAML/JSON, create-or-update)
//	get    [--kubeconfig FILE] PATH [NAME] [-o json]                  (raw GET, prints the JSON body)
//	delete [--kubeconfig FILE] [--ignore-not-found] [--grace-period N] PATH [NAME]  (raw DELETE, default grace 0)
//	version
//
// The kubeconfig defaults to $KUBECONFIG. get/delete exit 2 on HTTP 404, 1 on other errors.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	if len(os.Args) < 2 {
		usage()
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
  kube-testenv serve --dir DIR [--port N] [--etcd-port N] [--v N] [--apiserver-arg ARG]...
  kube-testenv apply [--kubeconfig FILE] [--timeout 60s] -f FILE [-f FILE]...
  kube-testenv get [--kubeconfig FILE] PATH [NAME] [-o json]
  kube-testenv delete [--kubeconfig FILE] [--ignore-not-found] [--grace-period 0] PATH [NAME]
  kube-testenv version`)
	os.Exit(64)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// ---------------------------------------------------------------------------------------------
// serve

const (
	adminUser = "admin"
	cniUser   = "calico-cni"
)

func cmdServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "", "state directory (certs, etcd data, kubeconfigs, audit.log)")
	port := fs.Int("port", 0, "apiserver secure port on 127.0.0.1 (0 = pick a free one)")
	etcdPort := fs.Int("etcd-port", 0, "etcd client port on 127.0.0.1 (0 = pick a free one)")
	verbosity := fs.Int("v", 0, "apiserver log verbosity")
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

	p, err := ensurePKI(d)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", *port)
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
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(*port),
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(d, "apiserver-certs"),
		"--tls-cert-file=" + filepath.Join(d, "serving.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "serving.key"),
		"--client-ca-file=" + filepath.Join(d, "ca.crt"),
		"--token-auth-file=" + filepath.Join(d, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=" + server,
		"--service-account-key-file=" + filepath.Join(d, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(d, "sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--disable-admission-plugins=ServiceAccount",
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

type pki struct {
	caPEM      []byte
	adminToken string
	cniToken   string
}

// ensurePKI creates (once per DIR) a CA, a serving certificate, client certificates for the
// admin and calico-cni users, a service-account signing key and a static token file.
func ensurePKI(d string) (*pki, error) {
	caCrt := filepath.Join(d, "ca.crt")
	if _, err := os.Stat(caCrt); err != nil {
		if err := generatePKI(d); err != nil {
			return nil, err
		}
	}
	caPEM, err := os.ReadFile(caCrt)
	if err != nil {
		return nil, err
	}
	at, err := os.ReadFile(filepath.Join(d, "admin.token"))
	if err != nil {
		return nil, err
	}
	ct, err := os.ReadFile(filepath.Join(d, "calico-cni.token"))
	if err != nil {
		return nil, err
	}
	return &pki{caPEM: caPEM, adminToken: strings.TrimSpace(string(at)), cniToken: strings.TrimSpace(string(ct))}, nil
}

func generatePKI(d string) error {
	now := time.Now().Add(-time.Hour)
	notAfter := now.Add(10 * 365 * 24 * time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kube-testenv-ca"},
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writeCertKey(d, "ca", caDER, caKey); err != nil {
		return err
	}

	leaf := func(name string, tmpl *x509.Certificate) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore, tmpl.NotAfter = now, notAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.BasicConstraintsValid = true
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		return writeCertKey(d, name, der, key)
	}
	// Serving certificate: X.509 v3 with SANs (rustls/webpki ignores the CN).
	if err := leaf("serving", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.0.0.1")},
	}); err != nil {
		return err
	}
	if err := leaf(adminUser, &x509.Certificate{
		Subject:     pkix.Name{CommonName: adminUser, Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return err
	}
	if err := leaf(cniUser, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cniUser},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return err
	}

	// Service-account signing key pair.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(d, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(d, "sa.pub"), "PUBLIC KEY", pub); err != nil {
		return err
	}

	// Static tokens: token,user,uid,"groups".
	at, ct := randHex(24), randHex(24)
	csv := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n%s,%s,%s\n", at, adminUser, adminUser, ct, cniUser, cniUser)
	if err := os.WriteFile(filepath.Join(d, "tokens.csv"), []byte(csv), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d, "admin.token"), []byte(at+"\n"), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "calico-cni.token"), []byte(ct+"\n"), 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n.Add(n, big.NewInt(1))
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func writeCertKey(d, name string, der []byte, key crypto.Signer) error {
	if err := writePEM(filepath.Join(d, name+".crt"), "CERTIFICATE", der); err != nil {
		return err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(filepath.Join(d, name+".key"), "PRIVATE KEY", kb)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// writeClientFiles writes DIR/kubeconfig (admin), DIR/kubeconfig-cni (calico-cni) and DIR/env.
// Both kubeconfigs authenticate with a bearer token from the static token file and embed the CA.
func writeClientFiles(d, server string, p *pki) error {
	write := func(path, user, token string) error {
		c := clientcmdapi.NewConfig()
		c.Clusters["kube-testenv"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.caPEM}
		c.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
		c.Contexts[user+"@kube-testenv"] = &clientcmdapi.Context{Cluster: "kube-testenv", AuthInfo: user, Namespace: "default"}
		c.CurrentContext = user + "@kube-testenv"
		return clientcmd.WriteToFile(*c, path)
	}
	if err := write(filepath.Join(d, "kubeconfig"), adminUser, p.adminToken); err != nil {
		return err
	}
	if err := write(filepath.Join(d, "kubeconfig-cni"), cniUser, p.cniToken); err != nil {
		return err
	}
	env := fmt.Sprintf(`KUBECONFIG=%[1]s/kubeconfig
KUBECONFIG_CNI=%[1]s/kubeconfig-cni
KUBE_TESTENV_DIR=%[1]s
KUBE_TESTENV_SERVER=%[2]s
KUBE_TESTENV_CA=%[1]s/ca.crt
KUBE_TESTENV_ADMIN_TOKEN=%[3]s
KUBE_TESTENV_CNI_TOKEN=%[4]s
KUBE_TESTENV_AUDIT_LOG=%[1]s/audit.log
`, d, server, p.adminToken, p.cniToken)
	return os.WriteFile(filepath.Join(d, "env"), []byte(env), 0o600)
}

// ---------------------------------------------------------------------------------------------
// client helpers

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	if kubeconfig == "" {
		return nil, errors.New("no kubeconfig: pass --kubeconfig or set KUBECONFIG")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 100, 200
	cfg.Timeout = 30 * time.Second
	cfg.UserAgent = "kube-testenv"
	return cfg, nil
}

// splitFlags separates "--flag[=v]"/"-o json" style options from positional args so that flags
// may follow the positional ones (as in `get /api/v1/nodes -o json`).
func splitFlags(args []string, valueFlags map[string]bool) (flags, pos []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && valueFlags[name] && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return
}

// ---------------------------------------------------------------------------------------------
// get / delete: raw requests against an API path

func cmdRaw(method string, args []string) error {
	name := strings.ToLower(method)
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default $KUBECONFIG)")
	output := fs.String("o", "json", "output format (only json)")
	ignoreNotFound := fs.Bool("ignore-not-found", false, "exit 0 on 404")
	grace := fs.Int("grace-period", 0, "delete: DeleteOptions.gracePeriodSeconds; 0 = immediately (no kubelet "+
		"here, so a bound Pod deleted gracefully would stay Terminating for ever); -1 = server default")
	flags, pos := splitFlags(args, map[string]bool{"kubeconfig": true, "o": true, "grace-period": true})
	_ = fs.Parse(flags)
	if *output != "json" {
		return fmt.Errorf("%s: only -o json is supported", name)
	}
	if len(pos) < 1 || len(pos) > 2 || !strings.HasPrefix(pos[0], "/") {
		return fmt.Errorf("%s: want PATH [NAME], PATH like /api/v1/nodes or /apis/crd.projectcalico.org/v1/ipamblocks", name)
	}
	path := pos[0]
	if len(pos) == 2 {
		q := ""
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path, q = path[:i], path[i:]
		}
		path = strings.TrimRight(path, "/") + "/" + pos[1] + q
	}
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return err
	}
	var reqBody io.Reader
	if method == http.MethodDelete && *grace >= 0 {
		reqBody = strings.NewReader(fmt.Sprintf(`{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":%d}`, *grace))
	}
	req, err := http.NewRequest(method, strings.TrimRight(cfg.Host, "/")+path, reqBody)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if reqBody != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusNotFound {
		if *ignoreNotFound {
			return nil
		}
		return exitError{2, fmt.Sprintf("%s %s: %s\n%s", method, path, resp.Status, strings.TrimSpace(string(body)))}
	}
	if resp.StatusCode/100 != 2 {
		return exitError{1, fmt.Sprintf("%s %s: %s\n%s", method, path, resp.Status, strings.TrimSpace(string(body)))}
	}
	os.Stdout.Write(body)
	if len(body) > 0 && body[len(body)-1] != '\n' {
		fmt.Println()
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// apply: create-or-update every object of multi-document YAML/JSON files

func cmdApply(args []string) error {
	fs := flag.NewFlagSet("apply", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default $KUBECONFIG)")
	timeout := fs.Duration("timeout", 60*time.Second, "per-object retry budget (missing CRD/namespace, conflicts, server not ready)")
	var files multiFlag
	fs.Var(&files, "f", "YAML/JSON file, may hold several documents; '-' = stdin (repeatable)")
	flags, pos := splitFlags(args, map[string]bool{"kubeconfig": true, "timeout": true, "f": true})
	_ = fs.Parse(flags)
	files = append(files, pos...)
	if len(files) == 0 {
		return errors.New("apply: -f FILE required")
	}
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	var objs []*unstructured.Unstructured
	for _, f := range files {
		o, err := readObjects(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		objs = append(objs, o...)
	}
	ctx := context.Background()
	for _, obj := range objs {
		deadline := time.Now().Add(*timeout)
		for {
			res, err := applyOne(ctx, dyn, mapper, obj.DeepCopy())
			if err == nil {
				fmt.Printf("%s/%s %s\n", strings.ToLower(obj.GetKind()), obj.GetName(), res)
				break
			}
			if !retriable(err) || time.Now().After(deadline) {
				return fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
			}
			if meta.IsNoMatchError(err) {
				mapper.Reset()
			}
			time.Sleep(300 * time.Millisecond)
		}
		if obj.GroupVersionKind().GroupKind() == (schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}) {
			if err := waitEstablished(ctx, dyn, obj.GetName(), *timeout); err != nil {
				return err
			}
			mapper.Reset()
		}
	}
	return nil
}

func readObjects(path string) ([]*unstructured.Unstructured, error) {
	var r io.Reader
	if path == "-" {
		r = os.Stdin
	} else {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(r, 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]interface{}
		if err := dec.Decode(&m); err != nil {
			if err == io.EOF {
				return out, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.IsList() {
			l, err := u.ToList()
			if err != nil {
				return nil, err
			}
			for i := range l.Items {
				out = append(out, &l.Items[i])
			}
			continue
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("document without apiVersion/kind: %v", m)
		}
		out = append(out, u)
	}
}

func applyOne(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, obj *unstructured.Unstructured) (string, error) {
	gvk := obj.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return "", err
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			obj.SetNamespace("default")
		}
		ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	if obj.GetName() == "" {
		if _, err := ri.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return "", err
		}
		return "created", nil
	}
	cur, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := ri.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return "", err
		}
		return "created", nil
	}
	if err != nil {
		return "", err
	}
	obj.SetResourceVersion(cur.GetResourceVersion())
	if _, err := ri.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return "", err
	}
	return "configured", nil
}

func retriable(err error) bool {
	return meta.IsNoMatchError(err) || apierrors.IsNotFound(err) || apierrors.IsConflict(err) ||
		apierrors.IsAlreadyExists(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) ||
		utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err)
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, name string, timeout time.Duration) error {
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	deadline := time.Now().Add(timeout)
	for {
		crd, err := dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				cm, _ := c.(map[string]interface{})
				if cm["type"] == "Established" && cm["status"] == "True" {
					return waitListable(ctx, dyn, crd, deadline)
				}
			}
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(crd)
			return fmt.Errorf("CRD %s not Established after %s (last error %v): %s", name, timeout, err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitListable lists the new custom resource until it answers: right after a CRD becomes
// Established the apiserver still answers 429 "storage is (re)initializing" for a moment.
func waitListable(ctx context.Context, dyn dynamic.Interface, crd *unstructured.Unstructured, deadline time.Time) error {
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
	scope, _, _ := unstructured.NestedString(crd.Object, "spec", "scope")
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	for _, v := range versions {
		vm, _ := v.(map[string]interface{})
		if served, _ := vm["served"].(bool); !served {
			continue
		}
		name, _ := vm["name"].(string)
		var ri dynamic.ResourceInterface = dyn.Resource(schema.GroupVersionResource{Group: group, Version: name, Resource: plural})
		if scope == "Namespaced" {
			ri = dyn.Resource(schema.GroupVersionResource{Group: group, Version: name, Resource: plural}).Namespace("default")
		}
		for {
			_, err := ri.List(ctx, metav1.ListOptions{Limit: 1})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s.%s/%s not listable: %w", plural, group, name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}
