#!/usr/bin/python3
"""Calico's side of scripts/test-install-cni.sh: Calico's own manifest as the input, and the
conflist Calico's installer would write from it as the expected output.

  env CALICO_YAML NODE [VETH_MTU]
      The environment of the install-cni init container of Calico's calico-node DaemonSet, as
      `export NAME=VALUE` lines for bash: literal values as they are, configMapKeyRef values from
      Calico's calico-config ConfigMap (veth_mtu replaced by VETH_MTU when given, as an operator
      sets it), fieldRef spec.nodeName as NODE. Fails if the manifest has no such container.

  expect KUBECONFIG_PATH OWN_TOKEN_FILE
      The conflist Calico v3.31.7's installer (cni-plugin/pkg/install/install.go, writeCNIConfig;
      plus __CALICO_API_GROUP__, which later releases substitute)
      writes for the template and settings in this process's environment, on stdout byte for
      byte: the placeholders replaced one after the other in its order with its defaults, nothing
      escaped, no newline added. KUBECONFIG_PATH is what it substitutes for
      __KUBECONFIG_FILEPATH__ (CNI_NET_DIR/calico-kubeconfig); OWN_TOKEN_FILE holds the pod's own
      token, its __SERVICEACCOUNT_TOKEN__. The etcd TLS placeholders name
      CNI_NET_DIR/calico-tls/etcd-{ca,cert,key} for each file TLS_ASSETS_DIR (default
      /calico-secrets) holds (Calico copies them there), else "".
"""
import os
import shlex
import socket
import sys

import yaml


def calico_env(calico_yaml, node, veth_mtu=None):
    docs = [d for d in yaml.safe_load_all(open(calico_yaml)) if d]
    config = next(d for d in docs if d.get("kind") == "ConfigMap"
                  and d["metadata"]["name"] == "calico-config")["data"]
    if veth_mtu is not None:
        config = dict(config, veth_mtu=veth_mtu)
    node_ds = next(d for d in docs if d.get("kind") == "DaemonSet"
                   and d["metadata"]["name"] == "calico-node")
    container = next(c for c in node_ds["spec"]["template"]["spec"]["initContainers"]
                     if c["name"] == "install-cni")
    out = []
    for e in container["env"]:
        if "value" in e:
            value = e["value"]
        elif "configMapKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["configMapKeyRef"]
            assert ref["name"] == "calico-config", ref
            value = config[ref["key"]]
        elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            value = node
        else:
            raise SystemExit(f"unexpected env source in Calico's install-cni: {e}")
        out.append(f"export {e['name']}={shlex.quote(value)}")
    if not out:
        raise SystemExit("Calico's install-cni container has no env")
    print("\n".join(out))


def calico_expect(kubeconfig_path, own_token_file):
    env = os.environ
    template = env.get("CNI_NETWORK_CONFIG", "")
    if env.get("CNI_NETWORK_CONFIG_FILE"):
        template = open(env["CNI_NETWORK_CONFIG_FILE"]).read()
    own_token = open(own_token_file).read() if os.path.exists(own_token_file) else ""
    hostname = socket.gethostname().lower()
    assets = env.get("TLS_ASSETS_DIR", "/calico-secrets")
    net_dir = env.get("CNI_NET_DIR", "/etc/cni/net.d")

    def tls(name):
        if os.path.exists(os.path.join(assets, name)):
            return f"{net_dir}/calico-tls/{name}"
        return ""

    steps = [
        ("__LOG_LEVEL__", env.get("LOG_LEVEL", "info")),
        ("__LOG_FILE_PATH__", env.get("LOG_FILE_PATH", "/var/log/calico/cni/cni.log")),
        ("__LOG_FILE_MAX_SIZE__", env.get("LOG_FILE_MAX_SIZE", "100")),
        ("__LOG_FILE_MAX_AGE__", env.get("LOG_FILE_MAX_AGE", "30")),
        ("__LOG_FILE_MAX_COUNT__", env.get("LOG_FILE_MAX_COUNT", "10")),
        ("__DATASTORE_TYPE__", env.get("DATASTORE_TYPE", "kubernetes")),
        ("__KUBERNETES_NODE_NAME__", env.get("KUBERNETES_NODE_NAME", hostname)),
        ("__KUBECONFIG_FILEPATH__", kubeconfig_path),
        ("__CNI_MTU__", env.get("CNI_MTU", "1500")),
        ("__KUBERNETES_SERVICE_HOST__", env.get("KUBERNETES_SERVICE_HOST", "")),
        ("__KUBERNETES_SERVICE_PORT__", env.get("KUBERNETES_SERVICE_PORT", "")),
        ("__SERVICEACCOUNT_TOKEN__", own_token),
        ("__CALICO_API_GROUP__", env.get("CALICO_API_GROUP", "crd.projectcalico.org/v1")),
        ("__ETCD_CERT_FILE__", tls("etcd-cert")),
        ("__ETCD_CA_CERT_FILE__", tls("etcd-ca")),
        ("__ETCD_KEY_FILE__", tls("etcd-key")),
        ("__ETCD_ENDPOINTS__", env.get("ETCD_ENDPOINTS", "")),
        ("__ETCD_DISCOVERY_SRV__", env.get("ETCD_DISCOVERY_SRV", "")),
        ("__REQUIRE_MTU_FILE__", env.get("REQUIRE_MTU_FILE", "false")),
    ]
    for placeholder, value in steps:
        template = template.replace(placeholder, value)
    sys.stdout.write(template)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "env":
        calico_env(*sys.argv[2:5])
    elif len(sys.argv) == 4 and sys.argv[1] == "expect":
        calico_expect(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
