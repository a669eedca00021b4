//! `ipam check` reads every object the allocator depends on, each on its own (issue 10 item 7:
//! it once said "consistent" with a corrupt pool file while every ADD failed). A file that
//! does not decode, one stored under a name its lookups never use, and values that decode but
//! mean nothing are each reported by name with exit 3; check changes nothing.

mod common;

use common::{Store, cni, text};
use serde_json::json;

/// A store holding one of everything: the tiny pools, an IPAMConfig, a reservation, a node's
/// labels, and one dual-stack allocation (its blocks, affinities and handle).
fn populated() -> Store {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    let out = store.cli(&["ipam", "configure", "--strictaffinity=true"]);
    assert!(out.status.success(), "{}", text(&out));
    let put = |rel: &str, value: serde_json::Value| {
        let path = store.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        let doc = json!({"revision": "1.1", "value": value});
        std::fs::write(path, doc.to_string()).expect("write");
    };
    put(
        "reservations/r1.json",
        json!({"name": "r1", "spec": {"reservedCIDRs": ["10.99.0.60/30"]}}),
    );
    put("nodes/node-a.json", json!({"labels": {"zone": "a"}}));
    let conf = store.netconf("1.0.0", "node-a").to_string();
    let out = cni("ADD", "c1", &[], conf.as_bytes());
    assert!(out.status.success(), "{}", text(&out));
    let clean = store.cli(&["check"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    store
}

/// Runs check, which must find problems (exit 3), mention each of `says`, and write nothing.
fn check_finds(store: &Store, case: &str, says: &[&str]) -> String {
    let before = store.snapshot();
    let out = store.cli(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // 3: check found problems (see `calico-ipam --help`).
    assert_eq!(out.status.code(), Some(3), "{case}: {}", text(&out));
    assert!(!stdout.contains("found 0 problems"), "{case}: {stdout}");
    for s in says {
        assert!(stdout.contains(s), "{case}: {s:?} missing from:\n{stdout}");
    }
    assert_eq!(store.snapshot(), before, "{case}: check changed the store");
    stdout
}

#[test]
fn every_object_file_that_does_not_decode_is_named_with_exit_3() {
    let store = populated();
    let files = [
        ("IPPool", "pools/tiny-v4.json"),
        ("IPAMConfig", "config.json"),
        ("IPReservation", "reservations/r1.json"),
        ("Node", "nodes/node-a.json"),
        ("IPAMBlock", "blocks/10-99-0-0-26.json"),
        ("IPAMBlock", "blocks/fd00-99---122.json"),
        ("IPAMHandle", "handles/k8s-pod-network.c1.json"),
        ("BlockAffinity", "affinities/node-a/10-99-0-0-26.json"),
    ];
    for (kind, rel) in files {
        let path = store.path().join(rel);
        let good = std::fs::read(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for (how, bad) in [
            ("truncated", &b"{\"revision\":"[..]),
            ("a JSON array", b"[\"1.1\", 7]"),
            ("empty", b""),
        ] {
            std::fs::write(&path, bad).expect("corrupt");
            // A pool that cannot be read is left out; anything else fails its readers.
            let consequence = if kind == "IPPool" {
                "no address is allocated from it, nor by any other pool inside its CIDR"
            } else {
                "every request that reads it fails until it is fixed"
            };
            let out = check_finds(
                &store,
                &format!("{rel} {how}"),
                &[
                    &format!("  {kind} file {rel}: cannot be decoded ("),
                    consequence,
                ],
            );
            assert!(
                out.contains("Check complete; found "),
                "{rel}: the rest is still checked:\n{out}"
            );
        }
        std::fs::write(&path, good).expect("restore");
    }
    // With every file back, check is clean again.
    let out = store.cli(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn objects_stored_where_their_lookups_never_look_are_named() {
    let store = populated();
    let root = store.path();
    // A copy of the IPv4 block under the name of another block: a lookup of 10.99.0.0/26
    // finds the original, never this one.
    std::fs::copy(
        root.join("blocks/10-99-0-0-26.json"),
        root.join("blocks/10-98-0-0-26.json"),
    )
    .expect("copy");
    std::fs::copy(
        root.join("handles/k8s-pod-network.c1.json"),
        root.join("handles/other.json"),
    )
    .expect("copy");
    std::fs::create_dir_all(root.join("affinities/node-b")).expect("mkdir");
    std::fs::copy(
        root.join("affinities/node-a/10-99-0-0-26.json"),
        root.join("affinities/node-b/10-99-0-0-26.json"),
    )
    .expect("copy");
    check_finds(
        &store,
        "misplaced",
        &[
            "IPAMBlock file blocks/10-98-0-0-26.json: holds block 10.99.0.0/26, whose file is blocks/10-99-0-0-26.json",
            "IPAMHandle file handles/other.json: holds handle k8s-pod-network.c1, whose file is handles/k8s-pod-network.c1.json",
            "BlockAffinity file affinities/node-b/10-99-0-0-26.json: holds the affinity of node-a for 10.99.0.0/26, whose file is affinities/node-a/10-99-0-0-26.json",
        ],
    );
}

#[test]
fn config_and_reservation_values_that_mean_nothing_are_named() {
    let store = populated();
    let root = store.path();
    let put = |rel: &str, value: serde_json::Value| {
        let doc = json!({"revision": "1.1", "value": value});
        std::fs::write(root.join(rel), doc.to_string()).expect("write");
    };
    put(
        "reservations/r1.json",
        json!({"name": "r1", "spec": {"reservedCIDRs": ["10.99.0.60/30", "junk"]}}),
    );
    put(
        "config.json",
        json!({"strictAffinity": true, "autoAllocateBlocks": true, "kubeVirtVMAddressPersistence": "Sometimes"}),
    );
    check_finds(
        &store,
        "values",
        &[
            "IPReservation r1: \"junk\" is neither a CIDR nor an address: it reserves nothing",
            "IPAMConfig default: kubeVirtVMAddressPersistence \"Sometimes\" is not Enabled or Disabled",
            "Check complete; found 2 problems.",
        ],
    );
}

/// An object file over the bound (16 MiB) is not read whole: check names it; a pool file is
/// left out like any pool that cannot be read (logged naming the bound), and an ADD that needs
/// another such file fails naming the bound; neither changes anything.
#[test]
fn an_object_file_over_the_bound_is_refused_unread() {
    let store = populated();
    let conf = store.netconf("1.0.0", "node-a").to_string();
    for (rel, kind) in [
        ("pools/tiny-v4.json", "IPPool"),
        ("config.json", "IPAMConfig"),
    ] {
        let path = store.path().join(rel);
        let good = std::fs::read(&path).expect("object");
        let mut big = good.clone();
        big.resize(17 << 20, b' ');
        std::fs::write(&path, &big).expect("write");
        check_finds(
            &store,
            "large",
            &[&format!(
                "  {kind} file {rel}: cannot be read ({rel}: larger than 16777216 bytes (16 MiB), the most an object file may hold"
            )],
        );
        let before = store.snapshot();
        let out = cni("ADD", "c2", &[], conf.as_bytes());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let (said, where_) = if kind == "IPPool" {
            // The only IPv4 pool is left out: nothing to allocate from, and the log says why.
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("there is no enabled IPv4 pool"),
                "{}",
                text(&out)
            );
            (String::from_utf8_lossy(&out.stderr), "stderr")
        } else {
            (String::from_utf8_lossy(&out.stdout), "stdout")
        };
        assert!(
            said.contains("larger than 16777216 bytes (16 MiB)"),
            "{rel} {where_}: {}",
            text(&out)
        );
        assert_eq!(store.snapshot(), before, "the ADD changed the store");
        std::fs::write(&path, good).expect("restore");
    }
}
