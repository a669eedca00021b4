package main

// The test PKI: one CA per DIR signs the apiserver's serving certificate and every client
// certificate; static bearer tokens for the admin and calico-cni users.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

type pki struct {
	caPEM      []byte
	adminToken string
	cniToken   string
}

// ensurePKI creates (once per DIR) a CA, a serving certificate (with addr among its SANs),
// client certificates for the admin and calico-cni users and for the apiserver's requests to
// kubelets, a service-account signing key and a static token file.
func ensurePKI(d string, addr net.IP) (*pki, error) {
	caCrt := filepath.Join(d, "ca.crt")
	if _, err := os.Stat(caCrt); err != nil {
		if err := generatePKI(d, addr); err != nil {
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

// validity: an hour back (clock skew) to ten years on.
func validity() (time.Time, time.Time) {
	now := time.Now().Add(-time.Hour)
	return now, now.Add(10 * 365 * 24 * time.Hour)
}

func generatePKI(d string, addr net.IP) error {
	notBefore, notAfter := validity()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kube-testenv-ca"},
		NotBefore:             notBefore,
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

	// Serving certificate: X.509 v3 with SANs (rustls/webpki ignores the CN); the first address
	// of each service range (10.0.0.0/24 alone, or the cluster's dual-stack ranges) included.
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.0.0.1"),
		net.ParseIP("10.96.0.1"), net.ParseIP("fd00:10:96::1")}
	if addr != nil && !addr.IsLoopback() {
		ips = append(ips, addr)
	}
	if err := signLeaf(d, "serving", ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: ips,
	}); err != nil {
		return err
	}
	clients := []struct{ name, cn, org string }{
		{adminUser, adminUser, "system:masters"},
		{cniUser, cniUser, ""},
		// The apiserver's identity towards kubelets (exec, logs, port-forward).
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"},
	}
	for _, c := range clients {
		if err := signClient(d, c.name, ca, caKey, c.cn, orgs(c.org)); err != nil {
			return err
		}
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

func orgs(o string) []string {
	if o == "" {
		return nil
	}
	return strings.Split(o, ",")
}

// signLeaf writes DIR/NAME.{crt,key}: a fresh P-256 key and a certificate from tmpl signed by ca.
func signLeaf(d, name string, ca *x509.Certificate, caKey crypto.Signer, tmpl *x509.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = validity()
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writeCertKey(d, name, der, key)
}

// signClient: a client certificate for user CN in groups O (how Kubernetes reads X.509 subjects).
func signClient(d, name string, ca *x509.Certificate, caKey crypto.Signer, cn string, org []string) error {
	return signLeaf(d, name, ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: org},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// loadCA reads DIR/ca.{crt,key} as generatePKI wrote them.
func loadCA(d string) (*x509.Certificate, crypto.Signer, []byte, error) {
	caPEM, err := os.ReadFile(filepath.Join(d, "ca.crt"))
	if err != nil {
		return nil, nil, nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(d, "ca.key"))
	if err != nil {
		return nil, nil, nil, err
	}
	cb, _ := pem.Decode(caPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, nil, fmt.Errorf("%s: ca.crt or ca.key is not PEM", d)
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, nil, errors.New("ca.key is not a signing key")
	}
	return ca, signer, caPEM, nil
}

// cmdClientCert: `client-cert --dir DIR --name NAME --cn USER [--org GROUP,...] [--server URL]`
// signs DIR/NAME.{crt,key} with DIR's CA and, with --server, writes DIR/NAME.kubeconfig that
// authenticates with them (for kubelets, the scheduler and the controller-manager).
func cmdClientCert(args []string) error {
	fs := flag.NewFlagSet("client-cert", flag.ExitOnError)
	dir := fs.String("dir", "", "the serve DIR (its ca.crt and ca.key sign the certificate)")
	name := fs.String("name", "", "file name stem: DIR/NAME.crt, .key, .kubeconfig")
	cn := fs.String("cn", "", "user name (subject CN)")
	org := fs.String("org", "", "groups (subject O), comma-separated")
	server := fs.String("server", "", "API server URL for DIR/NAME.kubeconfig (none written without it)")
	_ = fs.Parse(args)
	if *dir == "" || *name == "" || *cn == "" || strings.ContainsRune(*name, '/') {
		return errors.New("client-cert: --dir, --name (a file name) and --cn are required")
	}
	ca, caKey, caPEM, err := loadCA(*dir)
	if err != nil {
		return fmt.Errorf("client-cert: %w", err)
	}
	if err := signClient(*dir, *name, ca, caKey, *cn, orgs(*org)); err != nil {
		return err
	}
	if *server == "" {
		return nil
	}
	c := clientcmdapi.NewConfig()
	c.Clusters["kube-testenv"] = &clientcmdapi.Cluster{Server: *server, CertificateAuthorityData: caPEM}
	c.AuthInfos[*cn] = &clientcmdapi.AuthInfo{
		ClientCertificate: filepath.Join(*dir, *name+".crt"),
		ClientKey:         filepath.Join(*dir, *name+".key"),
	}
	c.Contexts["default"] = &clientcmdapi.Context{Cluster: "kube-testenv", AuthInfo: *cn}
	c.CurrentContext = "default"
	return clientcmd.WriteToFile(*c, filepath.Join(*dir, *name+".kubeconfig"))
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
