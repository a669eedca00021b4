//! Kubernetes objects as the API server returns them: the JSON body of a GET (or one LIST
//! item) decoded as each Calico kind the way the kube datastore decodes it
//! (`libipam::datastore::kube::decode`), then used as the allocator uses it.

use libipam::datastore::kube::decode;

use super::Surface;
use super::model::{
    exercise_affinity, exercise_block, exercise_config, exercise_handle, exercise_pool,
    exercise_reservation,
};

pub const KUBE_OBJECTS: Surface = Surface {
    name: "kube-objects",
    about: "an API object body decoded as IPAMBlock, BlockAffinity, IPAMHandle, IPPool (with \
            status), IPAMConfig, IPReservation and ClusterInformation, then used",
    tokens: &[
        "\"apiVersion\"",
        "\"crd.projectcalico.org/v1\"",
        "\"kind\"",
        "\"IPAMBlock\"",
        "\"BlockAffinity\"",
        "\"IPAMHandle\"",
        "\"IPPool\"",
        "\"IPAMConfig\"",
        "\"metadata\"",
        "\"name\"",
        "\"resourceVersion\"",
        "\"uid\"",
        "\"labels\"",
        "\"annotations\"",
        "\"deletionTimestamp\"",
        "\"creationTimestamp\"",
        "\"2026-01-01T00:00:00Z\"",
        "\"spec\"",
        "\"status\"",
        "\"conditions\"",
        "\"Allocatable\"",
        "\"False\"",
        "\"cidr\"",
        "\"affinity\"",
        "\"allocations\"",
        "\"unallocated\"",
        "\"attributes\"",
        "\"handle_id\"",
        "\"handleID\"",
        "\"block\"",
        "\"deleted\"",
        "\"state\"",
        "\"node\"",
        "\"type\"",
        "\"datastoreReady\"",
        "\"reservedCIDRs\"",
        "\"maxBlocksPerHost\"",
        "\"strictAffinity\"",
        "\"blockSize\"",
        "\"nodeSelector\"",
        "\"10.244.0.0/26\"",
        "\"fd00:10:244::/122\"",
        "\"true\"",
        "\"false\"",
    ],
    make: || {
        Box::new(|input| {
            let mut ok = Vec::new();
            if let Ok(Some(b)) = decode::block(input) {
                exercise_block(&b.value);
                ok.push("block");
            }
            if let Ok(Some(a)) = decode::affinity(input) {
                exercise_affinity(&a.value);
                ok.push("affinity");
            }
            if let Ok(Some(h)) = decode::handle(input) {
                exercise_handle(&h.value);
                ok.push("handle");
            }
            if let Ok(p) = decode::pool(input) {
                exercise_pool(&p);
                ok.push(if p.spec.disabled {
                    "pool-disabled"
                } else {
                    "pool"
                });
            }
            if let Ok(c) = decode::config(input) {
                exercise_config(&c);
                ok.push("config");
            }
            if let Ok(r) = decode::reservation(input) {
                exercise_reservation(&r);
                ok.push("reservation");
            }
            if let Ok(ready) = decode::datastore_ready(input) {
                ok.push(if ready { "ready" } else { "not-ready" });
            }
            ok.join(",")
        })
    },
};
