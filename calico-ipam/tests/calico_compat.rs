//! Scenarios of Calico's own suite (`cni-plugin/tests/calico_cni_ipam_test.go`, v3.31.7) that
//! calico-ipam must pass, reproduced against the real kube-apiserver of scripts/kube-testenv:
//! the netconf as Calico's spec writes it (plus a node name and a lock file in the test's
//! directory), and Calico's behaviour asserted on the result, the error and the IPAM objects in
//! the API. The spec each test stands for is named on it.

mod common;
mod kube_env;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Output;

use common::{cni, text};
use kube_env::{KubeEnv, node_yaml, shared, unique};
use libipam::alloc::{AssignIpArgs, Ipam};
use libipam::datastore::kube::{KubeStore, connect};
use libipam::model::AllowedUse;
use serde_json::{Value, json};

const CALICO: &str = "/apis/crd.projectcalico.org/v1";

/// One node of the cluster with its own lock directory, and a pool pair only it uses.
struct Setup {
    kube: KubeEnv,
    node: String,
    dir: tempfile::TempDir,
    u: String,
    _pools: Vec<String>,
}

impl Setup {
    /// `pools`: (name suffix, CIDR); each pool selects no node, so only requests that name it
    /// (or an address in it) allocate from it.
    fn new(pools: &[(&str, &str)]) -> Setup {
        let kube = KubeEnv::get();
        let u = unique();
        let node = format!("compat-ipam-{u}");
        let cidrs: Vec<&str> = pools.iter().map(|(_, c)| *c).collect();
        kube.purge_ipam(&cidrs);
        let mut yaml = node_yaml(&node, &[("calico-rs-test", "compat-ipam")]);
        let mut names = Vec::new();
        for (suffix, cidr) in pools {
            let name = format!("t-compat-{suffix}-{u}");
            yaml.push_str(&format!(
                "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n\
                 spec: {{cidr: '{cidr}', nodeSelector: \"calico-rs-test == 'nobody'\"}}\n---\n"
            ));
            names.push(name);
        }
        kube.apply(&yaml);
        Setup {
            kube,
            node,
            dir: tempfile::tempdir().expect("tempdir"),
            u,
            _pools: names,
        }
    }

    /// The netconf of Calico's IPAM spec (`name: net1`, `ipam: {type: calico-ipam}`).
    fn netconf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "net1",
            "type": "calico",
            "etcd_endpoints": "http://127.0.0.1:2379",
            "kubernetes": {"kubeconfig": self.kube.cni},
            "datastore_type": "kubernetes",
            "nodename": self.node,
            "ipam_lock_file": self.dir.path().join("ipam.lock"),
            "ipam": {"type": "calico-ipam"}
        })
    }

    fn run(&self, command: &str, cid: &str, args: &str, conf: &Value) -> Output {
        cni(
            command,
            cid,
            &[("CNI_ARGS", args)],
            conf.to_string().as_bytes(),
        )
    }

    fn handle(&self, id: &str) -> Option<Value> {
        self.kube
            .get_json(&format!("{CALICO}/ipamhandles/{}", id.to_ascii_lowercase()))
    }

    /// Calico's `IPAM().AssignIP` with a handle of the caller's choosing, the way Calico's
    /// spec makes allocations that predate the plugin's current handle.
    fn assign_with_handle(&self, ip: &str, handle: &str) {
        let args = AssignIpArgs {
            ip: ip.parse::<IpAddr>().expect("ip"),
            handle_id: handle.to_string(),
            attrs: BTreeMap::new(),
            hostname: self.node.clone(),
            intended_use: AllowedUse::Workload,
        };
        let admin = self.kube.admin.clone();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let conn = connect(&admin, "calico-rs-compat-test").await?;
                Ipam::new(KubeStore::new(conn))
                    .assign_ip(&args)
                    .await
                    .map(|_| ())
                    .map_err(|e| libipam::DatastoreError::Other(e.to_string()))
            })
            .expect("AssignIP");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for p in &self._pools {
            self.kube.delete(&format!("{CALICO}/ippools/{p}"));
        }
        self.kube.delete(&format!("/api/v1/nodes/{}", self.node));
    }
}

fn result(out: &Output) -> Value {
    assert!(out.status.success(), "expected success: {}", text(out));
    serde_json::from_slice(&out.stdout).expect("result JSON")
}

/// A DEL that succeeded: exit 0 and nothing on stdout (no addresses in a result).
fn deleted(out: &Output) {
    assert!(out.status.success(), "DEL failed: {}", text(out));
    assert!(out.stdout.is_empty(), "DEL printed: {}", text(out));
}

fn error(out: &Output) -> Value {
    assert!(!out.status.success(), "expected failure: {}", text(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a CNI error ({e}): {}", text(out)))
}

/// ipam specs 391, 396 and 405 "Requesting an explicit IP address": `IP=` in `CNI_ARGS` comes
/// back as the address alone (/32; /128 for IPv6), not with its block's prefix; it can be had
/// again after a DEL; it cannot be had twice.
#[test]
fn a_requested_address_comes_back_as_a_host_address() {
    let _g = shared();
    let s = Setup::new(&[("req4", "10.160.0.0/16"), ("req6", "fd00:160::/112")]);
    let conf = s.netconf();
    let cid = format!("req{}", s.u);
    let args = "IP=10.160.123.123";

    let first = result(&s.run("ADD", &cid, args, &conf));
    assert_eq!(
        first,
        json!({"cniVersion": "1.0.0",
               "ips": [{"address": "10.160.123.123/32"}],
               "routes": [{"dst": "10.160.123.123/32"}],
               "dns": {}})
    );
    let handle = s.handle(&format!("net1.{cid}")).expect("handle in the API");
    assert_eq!(handle["spec"]["block"], json!({"10.160.123.64/26": 1}));

    // Again after a DEL in the middle (the DEL ignores IP=, as Calico's does).
    deleted(&s.run("DEL", &cid, args, &conf));
    assert!(s.handle(&format!("net1.{cid}")).is_none(), "released");
    let again = result(&s.run("ADD", &cid, args, &conf));
    assert_eq!(again["ips"], first["ips"]);

    // Not twice: the second ADD fails and the first allocation stays.
    let e = error(&s.run("ADD", &cid, args, &conf));
    assert_eq!(e["code"], 102, "{e}");
    assert!(
        e["msg"]
            .as_str()
            .is_some_and(|m| m.contains("10.160.123.123") && m.contains("already assigned")),
        "{e}"
    );
    let handle = s.handle(&format!("net1.{cid}")).expect("still held");
    assert_eq!(handle["spec"]["block"], json!({"10.160.123.64/26": 1}));
    deleted(&s.run("DEL", &cid, args, &conf));

    // IPv6: /128.
    let cid6 = format!("req6{}", s.u);
    let r = result(&s.run("ADD", &cid6, "IP=fd00:160::7b", &conf));
    assert_eq!(r["ips"], json!([{"address": "fd00:160::7b/128"}]), "{r}");
    deleted(&s.run("DEL", &cid6, "", &conf));
    assert!(s.handle(&format!("net1.{cid6}")).is_none(), "released");
}

/// ipam spec 350 "Pass an invalid pool fails to get an IP": a requested pool that does not
/// exist is named as Calico names it, in the message, and nothing is allocated; a disabled
/// pool and a CIDR with host bits are named the same way.
#[test]
fn a_requested_pool_that_does_not_exist_is_named_as_calico_names_it() {
    let _g = shared();
    let s = Setup::new(&[("pool4", "10.162.0.0/16"), ("off4", "10.163.0.0/16")]);
    s.kube.apply(&format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {{name: t-compat-off4-{}}}\n\
         spec: {{cidr: '10.163.0.0/16', disabled: true}}\n",
        s.u
    ));
    let cid = format!("bad{}", s.u);
    for (pools, named) in [
        (json!(["10.162.0.0/16", "10.161.1.0/24"]), "10.161.1.0/24"),
        (json!(["10.161.1.0/24", "10.162.0.0/16"]), "10.161.1.0/24"),
        (json!(["10.162.0.0/16", "10.161.1.7/24"]), "10.161.1.0/24"),
        (json!(["10.163.0.0/16"]), "10.163.0.0/16"),
    ] {
        let mut conf = s.netconf();
        conf["ipam"]["assign_ipv4"] = json!("true");
        conf["ipam"]["ipv4_pools"] = pools.clone();
        let e = error(&s.run("ADD", &cid, "", &conf));
        assert_eq!(
            e["msg"],
            format!("the given pool ({named}) does not exist, or is not enabled"),
            "{pools}: {e}"
        );
        assert_eq!(e["code"], 7, "{e}");
        assert!(s.handle(&format!("net1.{cid}")).is_none(), "{pools}");
    }
}

/// ipam spec 437 "Run IPAM DEL when using old IPAM handle should remove the old handle": an
/// allocation under Calico's pre-v3 workload handle (the container ID outside Kubernetes,
/// `<namespace>.<pod>` for a pod) is released by DEL, and so is one under today's handle.
#[test]
fn del_releases_the_legacy_workload_handle() {
    let _g = shared();
    let s = Setup::new(&[("old4", "10.164.0.0/16")]);
    let conf = s.netconf();
    let cid = format!("legacy{}", s.u);

    s.assign_with_handle("10.164.123.123", &cid);
    assert!(s.handle(&cid).is_some(), "the old handle is in the API");
    deleted(&s.run("DEL", &cid, "IP=10.164.123.123", &conf));
    assert!(s.handle(&cid).is_none(), "the old handle must be gone");

    let new_style = format!("net1.{cid}");
    s.assign_with_handle("10.164.123.123", &new_style);
    deleted(&s.run("DEL", &cid, "IP=10.164.123.123", &conf));
    assert!(
        s.handle(&new_style).is_none(),
        "today's handle must be gone"
    );

    // A Kubernetes pod: `<namespace>.<pod>`.
    let pod_handle = format!("compat-{}.web-0", s.u);
    s.assign_with_handle("10.164.123.124", &pod_handle);
    let args = format!("K8S_POD_NAMESPACE=compat-{};K8S_POD_NAME=web-0", s.u);
    deleted(&s.run("DEL", &format!("pod{}", s.u), &args, &conf));
    assert!(
        s.handle(&pod_handle).is_none(),
        "the pod's old handle must be gone"
    );
    let blocks = s.kube.calico("ipamblocks");
    let held: Vec<&Value> = blocks
        .iter()
        .filter(|b| b["spec"]["cidr"].as_str() == Some("10.164.123.64/26"))
        .flat_map(|b| b["spec"]["allocations"].as_array().into_iter().flatten())
        .filter(|a| !a.is_null())
        .collect();
    assert!(held.is_empty(), "addresses still allocated: {held:?}");
}
