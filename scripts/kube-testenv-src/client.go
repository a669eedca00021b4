package main

// Client subcommands for scripts: raw get/delete against an API path, and apply
// (create-or-update of multi-document YAML/JSON).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

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
)

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
