//! 64 calico-ipam ADD processes, 16 at a time, on one local store: all succeed, all addresses are
//! unique and inside the seed's pools; then all DELs; then `check` is clean and nothing is in use.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use common::{Store, cni, seed_pools, text};
use ipnet::IpNet;
use serde_json::Value;

const PODS: usize = 64;
const PARALLEL: usize = 16;

/// Run `f(i)` for 0..PODS with PARALLEL worker threads, each spawning one process at a time.
fn fan_out<T: Send + 'static>(f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let next = Arc::new(Mutex::new(0usize));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (f, next, results) = (f.clone(), next.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let i = {
                        let mut n = next.lock().expect("counter");
                        if *n >= PODS {
                            return;
                        }
                        *n += 1;
                        *n - 1
                    };
                    let r = f(i);
                    results.lock().expect("results").push(r);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    Arc::try_unwrap(results)
        .map_err(|_| "results still shared")
        .expect("results")
        .into_inner()
        .expect("results")
}

#[test]
fn sixty_four_concurrent_adds_then_dels() {
    let store = Arc::new(Store::new());
    store.apply_pools(&seed_pools());
    let pools: [IpNet; 2] = [
        "10.244.0.0/16".parse().expect("v4"),
        "fd00:10:244::/48".parse().expect("v6"),
    ];

    let conf = Arc::new(store.netconf("1.0.0", "node-a").to_string());
    let c = conf.clone();
    let adds = fan_out(move |i| {
        let out = cni("ADD", &format!("pod{i}"), &[], c.as_bytes());
        (i, out)
    });
    let mut seen = HashSet::new();
    for (i, out) in &adds {
        assert!(out.status.success(), "ADD pod{i}: {}", text(out));
        let result: Value = serde_json::from_slice(&out.stdout).expect("result");
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "pod{i}: {result}");
        for ip in ips {
            let net: IpNet = ip["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("cidr");
            let addr: IpAddr = net.addr();
            assert!(
                pools.iter().any(|p| p.contains(&addr)),
                "{addr} outside the pools"
            );
            assert!(seen.insert(addr), "{addr} handed out twice");
        }
    }
    assert_eq!(seen.len(), 2 * PODS);
    let show = store.show();
    let in_use: u64 = show["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["inUse"].as_u64().expect("n"))
        .sum();
    assert_eq!(in_use, 2 * PODS as u64);

    let c = conf.clone();
    let dels = fan_out(move |i| (i, cni("DEL", &format!("pod{i}"), &[], c.as_bytes())));
    for (i, out) in &dels {
        assert!(out.status.success(), "DEL pod{i}: {}", text(out));
    }
    let check = store.cli(&["check"]);
    assert!(check.status.success(), "check: {}", text(&check));
    for pool in store.show()["pools"].as_array().expect("pools") {
        assert_eq!(pool["inUse"], 0, "{pool}");
    }
}
