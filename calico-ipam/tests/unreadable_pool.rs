//! A pool file that cannot be decoded (torn JSON, a field of the wrong type, a JSON array) on
//! the local store: every ADD used to fail with code 100 naming it. Now it is left out like a
//! pool that does not validate: ADDs from the other pools work and log it, DEL releases what
//! it handed out, `check` names it (exit 3), and the operator repairs it by name with
//! `delete ippool` or `apply -f`, which say what they replaced. The same against a real API
//! server is in `kube.rs` (`an_ippool_that_cannot_be_decoded_takes_nothing_down`).

mod common;

use common::{Store, cni, text};
use serde_json::{Value, json};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ips(out: &std::process::Output) -> Vec<String> {
    assert!(out.status.success(), "{}", text(out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("result");
    v["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i["address"].as_str().expect("address").to_owned())
        .collect()
}

fn write_yaml(store: &Store, name: &str, yaml: &str) -> String {
    let f = store.dir.path().join(name);
    std::fs::write(&f, yaml).expect("write");
    f.to_str().expect("utf8").to_owned()
}

fn pool_yaml(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\n\
         spec: {{cidr: {cidr}, blockSize: 26}}\n"
    )
}

#[test]
fn a_pool_file_that_cannot_be_decoded_takes_nothing_down_and_is_repaired_by_name() {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    store.apply_pools(&pool_yaml("held", "10.60.0.0/24"));
    let conf = store.netconf("1.0.0", "node-a");
    let mut from_held = conf.clone();
    from_held["ipam"]["ipv4_pools"] = json!(["held"]);
    let held = ips(&cni("ADD", "c-held", &[], from_held.to_string().as_bytes()));
    assert!(held[0].starts_with("10.60.0."), "{held:?}");

    // Three ways a pool file stops decoding.
    let pools = store.path().join("pools");
    std::fs::write(
        pools.join("held.json"),
        json!({"revision": "1.1", "value": {"name": "held",
            "spec": {"cidr": "10.60.0.0/24", "blockSize": "26"}}})
        .to_string(),
    )
    .expect("wrong type");
    std::fs::write(pools.join("aa-torn.json"), "{\"revision\":").expect("torn");
    std::fs::write(
        pools.join("arr.json"),
        json!(["1.1", {"name": "arr", "spec": {"cidr": "10.80.0.0/24"}}]).to_string(),
    )
    .expect("array");

    // ADD from the other pools works, and names each one it left out.
    let out = cni("ADD", "c1", &[], conf.to_string().as_bytes());
    let got = ips(&out);
    assert!(
        got[0] == "10.99.0.0/26" && got[1].starts_with("fd00:99::"),
        "{got:?}"
    );
    let log = stderr(&out);
    for name in ["aa-torn", "arr", "held"] {
        assert!(
            log.contains(&format!(
                "IPPool {name} is ignored, and no other pool allocates in its CIDR"
            )),
            "{name}: {log}"
        );
    }
    // Asking for it says why it cannot be used.
    let out = cni("ADD", "c2", &[], from_held.to_string().as_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let e: Value = serde_json::from_slice(&out.stdout).expect("CNI error");
    assert_eq!(e["code"], 7, "{e}");
    assert!(
        e["msg"].as_str().is_some_and(|m| m.starts_with(
            "the given pool (held) cannot be used: IPPool held cannot be read (IPPool file pools/held.json: invalid type: string \"26\", expected u32"
        )),
        "{e}"
    );
    // What it handed out is released.
    let out = cni("DEL", "c-held", &[], from_held.to_string().as_bytes());
    assert!(out.status.success(), "{}", text(&out));

    let out = store.cli(&["ipam", "check"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for rel in ["aa-torn", "arr", "held"] {
        assert!(
            report.contains(&format!(
                "  IPPool file pools/{rel}.json: cannot be decoded ("
            )),
            "{rel}: {report}"
        );
    }
    assert!(
        report.contains("no address is allocated from it, nor by any other pool inside its CIDR"),
        "{report}"
    );
    assert!(report.contains("found 3 problems"), "{report}");

    // get lists the others and says what it cannot show; get and patch of one name it.
    let out = store.cli(&["get", "ippool"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("tiny-v4"));
    assert!(stderr(&out).contains("warning: not shown: IPPool(aa-torn) cannot be read"));
    let out = store.cli(&["get", "ippool", "held"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("IPPool(held) cannot be read (IPPool file pools/held.json: "),
        "{}",
        text(&out)
    );
    let out = store.cli(&[
        "patch",
        "ippool",
        "held",
        "-p",
        r#"{"spec":{"disabled":true}}"#,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("a patch needs the stored object"),
        "{}",
        text(&out)
    );

    // A new pool cannot be checked against one whose CIDR is unknown, nor overlap a known one.
    let before = store.snapshot();
    let new = write_yaml(&store, "new.yaml", &pool_yaml("new", "10.70.0.0/24"));
    let out = store.cli(&["apply", "-f", &new]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "IPPool aa-torn cannot be read (EOF while parsing a value at line 1 column 12) and its CIDR is unknown, so whether pool new overlaps it cannot be checked"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(store.snapshot(), before, "a refused apply writes nothing");

    // Deleted by name: what was deleted is said.
    for name in ["aa-torn", "arr"] {
        let out = store.cli(&["delete", "ippool", name]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            stderr(&out).contains(&format!(
                "IPPool {name} could not be read (IPPool file pools/{name}.json: "
            )) && stderr(&out).contains(
                "so whether it was enabled is unknown; it was deleted, and its CIDR is unknown"
            ),
            "{}",
            text(&out)
        );
    }
    let over = write_yaml(&store, "over.yaml", &pool_yaml("over", "10.60.0.0/16"));
    let out = store.cli(&["apply", "-f", &over]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "pool over (10.60.0.0/16) overlaps IPPool held (10.60.0.0/24), which cannot be read"
        ),
        "{}",
        text(&out)
    );
    // Replaced by a good definition of its name.
    let good = write_yaml(&store, "held.yaml", &pool_yaml("held", "10.60.0.0/24"));
    let out = store.cli(&["apply", "-f", &good]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out)
            .contains("IPPool held could not be read (IPPool file pools/held.json: invalid type")
            && stderr(&out).contains(&format!(
                "its CIDR was 10.60.0.0/24): it was replaced by the definition in {good}"
            )),
        "{}",
        text(&out)
    );
    let out = store.cli(&["apply", "-f", &new]);
    assert!(out.status.success(), "{}", text(&out));
    let out = store.cli(&["ipam", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let again = ips(&cni("ADD", "c3", &[], from_held.to_string().as_bytes()));
    assert!(again[0].starts_with("10.60.0."), "{again:?}");
}

/// calicoctl's rule holds for a pool that can be read, even one left out because it does not
/// validate: enabled and in use, it is not deleted.
#[test]
fn a_pool_that_can_be_read_keeps_the_in_use_rule() {
    let store = Store::new();
    store.apply_pools(&common::tiny_pools());
    let conf = store.netconf("1.0.0", "node-a");
    ips(&cni("ADD", "c1", &[], conf.to_string().as_bytes()));
    // tiny-v4 made unusable by a selector that does not parse (it is still read).
    let path = store.path().join("pools/tiny-v4.json");
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    doc["value"]["spec"]["nodeSelector"] = json!("abé == 'x'");
    std::fs::write(&path, doc.to_string()).expect("write");
    let out = store.cli(&["delete", "ippool", "tiny-v4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("IPPool tiny-v4 (10.99.0.0/26) still has 1 address(es) in use"),
        "{}",
        text(&out)
    );
}
