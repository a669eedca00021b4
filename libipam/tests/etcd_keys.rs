//! Calico's etcd v3 key layout and values, byte for byte, on fixed examples written from
//! libcalico-go v3.31's source (`lib/backend/model`: `BlockKey.defaultPath`,
//! `BlockAffinityKey.defaultPath`, `IPAMHandleKey.defaultPath`, `ResourceKey.defaultPath`, the
//! `AllocationBlock`, `BlockAffinity`, `IPAMHandle`, `IPAMConfig` structs and their JSON tags,
//! `ipam_block.go` `newBlock`, and `keys_test.go`'s values), as Go's `encoding/json` writes them.

use ipnet::IpNet;
use libipam::datastore::etcd::keys;
use libipam::model::{
    AffinityState, AffinityType, BlockAffinity, IpPool, IpamBlock, IpamConfig, IpamHandle,
};
use serde_json::json;

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

const SEQ: u64 = 1_767_225_600_000_000_000;

/// `newBlock(10.244.1.0/30)` claimed by node-1: nil attributes, an empty (non-nil) map.
const FRESH_BLOCK: &str = r#"{"cidr":"10.244.1.0/30","affinity":"host:node-1","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":null,"sequenceNumber":1767225600000000000,"sequenceNumberForAllocation":{},"deleted":false}"#;

/// The same block as Calico v3.32's `claimAffineBlock` writes it: `AffinityClaimTime
/// *metav1.Time` (`json:"affinity_claim_time,omitempty"`, declared after `Affinity`; metav1.Time
/// is RFC 3339 in UTC, whole seconds).
const CLAIMED_BLOCK_V3_32: &str = r#"{"cidr":"10.244.1.0/30","affinity":"host:node-1","affinity_claim_time":"2026-01-01T00:00:00Z","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":null,"sequenceNumber":1767225600000000000,"sequenceNumberForAllocation":{},"deleted":false}"#;

/// The same block after Calico's `autoAssign` gave ordinal 0 to a pod (`&` escaped as Go does).
const USED_BLOCK: &str = r#"{"cidr":"10.244.1.0/30","affinity":"host:node-1","allocations":[0,null,null,null],"unallocated":[1,2,3],"attributes":[{"handle_id":"k8s-pod-network.abc","secondary":{"namespace":"default","node":"node-1","pod":"web\u00260","timestamp":"2026-01-01 00:00:00.000000000 +0000 UTC"}}],"sequenceNumber":1767225600000000001,"sequenceNumberForAllocation":{"0":1767225600000000000},"deleted":false}"#;

/// A block nobody owns (`affinity` a nil pointer).
const UNOWNED_BLOCK: &str = r#"{"cidr":"fd00:10:244::/126","affinity":null,"allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":null,"sequenceNumber":1767225600000000000,"sequenceNumberForAllocation":{},"deleted":false}"#;

#[test]
fn block_keys() {
    assert_eq!(
        keys::block_key(&net("10.244.1.0/26")),
        "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26"
    );
    assert_eq!(
        keys::block_key(&net("fd00:10:244::/122")),
        "/calico/ipam/v2/assignment/ipv6/block/fd00:10:244::-122"
    );
    assert_eq!(
        keys::block_key(&net("fd00:0:0:1::40/122")),
        "/calico/ipam/v2/assignment/ipv6/block/fd00:0:0:1::40-122"
    );
    for k in [
        "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26",
        "/calico/ipam/v2/assignment/ipv6/block/fd00:10:244::-122",
    ] {
        let cidr = keys::parse_block_key(k).expect(k);
        assert_eq!(keys::block_key(&cidr), k);
    }
    // keys_test.go's keys that are not blocks.
    for k in [
        "/calico/ipam/v2/assignment/ipv4/1.2.3.4-26",
        "/calico/ipam/v2/assignment/ipv6/block/10.244.1.0-26",
        "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26/x",
        "/calico/ipam/v2/handle/foobar",
    ] {
        assert_eq!(keys::parse_block_key(k), None, "{k}");
    }
}

#[test]
fn block_values() {
    let mut fresh =
        IpamBlock::new(net("10.244.1.0/30"), Some("host:node-1".into()), SEQ).expect("block");
    // Calico v3.31's block has no claim time.
    let claim_time = fresh.affinity_claim_time.take();
    assert_eq!(claim_time.as_deref(), Some("2026-01-01T00:00:00Z"));
    assert_eq!(
        String::from_utf8(keys::encode_block(&fresh)).expect("utf8"),
        FRESH_BLOCK
    );
    assert_eq!(
        keys::decode_block(FRESH_BLOCK.as_bytes()),
        Ok(fresh.clone())
    );
    // Calico v3.32's has one, right after the affinity, and so has ours.
    fresh.affinity_claim_time = claim_time;
    let with_claim = String::from_utf8(keys::encode_block(&fresh)).expect("utf8");
    assert_eq!(with_claim, CLAIMED_BLOCK_V3_32);
    assert_eq!(
        keys::decode_block(CLAIMED_BLOCK_V3_32.as_bytes()),
        Ok(fresh.clone())
    );
    // What this datastore wrote before it followed v3.32: the claim time last, camel-cased.
    let ours_before = format!(
        "{},\"affinityClaimTime\":\"2026-01-01T00:00:00Z\"}}",
        FRESH_BLOCK.strip_suffix('}').expect("object")
    );
    assert_eq!(
        keys::decode_block(ours_before.as_bytes()),
        Ok(fresh.clone())
    );

    // Calico's allocation, read and written back unchanged.
    let used = keys::decode_block(USED_BLOCK.as_bytes()).expect("decode");
    assert_eq!(used.allocations, vec![Some(0), None, None, None]);
    assert_eq!(used.attributes[0].handle(), Some("k8s-pod-network.abc"));
    assert_eq!(
        used.attributes[0]
            .secondary
            .as_ref()
            .and_then(|s| s.get("pod"))
            .map(String::as_str),
        Some("web&0")
    );
    assert_eq!(used.sequence_number_for_allocation.get("0"), Some(&SEQ));
    assert_eq!(
        String::from_utf8(keys::encode_block(&used)).expect("utf8"),
        USED_BLOCK
    );

    let unowned = IpamBlock::new(net("fd00:10:244::/126"), None, SEQ).expect("block");
    assert_eq!(
        String::from_utf8(keys::encode_block(&unowned)).expect("utf8"),
        UNOWNED_BLOCK
    );
    assert_eq!(keys::decode_block(UNOWNED_BLOCK.as_bytes()), Ok(unowned));

    // A block written before `affinity` existed.
    let legacy = r#"{"cidr":"10.0.0.0/30","hostAffinity":"old-node","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":[]}"#;
    let b = keys::decode_block(legacy.as_bytes()).expect("decode");
    assert_eq!(b.affinity.as_deref(), Some("host:old-node"));
    assert!(keys::decode_block(b"[1,2]").is_err());
}

#[test]
fn affinity_keys_and_values() {
    let cidr = net("172.29.128.64/26");
    let key = keys::affinity_key(AffinityType::Host, "happyhost.io", &cidr);
    assert_eq!(
        key,
        "/calico/ipam/v2/host/happyhost.io/ipv4/block/172.29.128.64-26"
    );
    assert_eq!(
        keys::parse_affinity_key(&key),
        Some((AffinityType::Host, "happyhost.io".into(), cidr))
    );
    assert_eq!(
        keys::affinity_key(AffinityType::Host, "node1", &net("fd00:10:244::40/122")),
        "/calico/ipam/v2/host/node1/ipv6/block/fd00:10:244::40-122"
    );
    assert_eq!(
        keys::affinity_key(AffinityType::Virtual, "lb", &net("10.0.1.0/26")),
        "/calico/ipam/v2/virtual/lb/ipv4/block/10.0.1.0-26"
    );
    assert_eq!(
        keys::host_affinity_prefix("node1"),
        "/calico/ipam/v2/host/node1/"
    );
    for k in [
        "calico/ipam/v2/host/0/ipv0/block/0",
        "/calico/ipam/v2/host/foobar/ipv6/block/1.2.3.4-26",
        "/calico/ipam/v2/handle/foobar",
    ] {
        assert_eq!(keys::parse_affinity_key(k), None, "{k}");
    }
    let a = BlockAffinity::host("happyhost.io", cidr, AffinityState::Confirmed);
    assert_eq!(
        keys::encode_affinity(&a),
        br#"{"state":"confirmed","deleted":false}"#
    );
    let p = BlockAffinity::host("happyhost.io", cidr, AffinityState::PendingDeletion);
    assert_eq!(
        keys::encode_affinity(&p),
        br#"{"state":"pendingDeletion","deleted":false}"#
    );
    // keys_test.go's values: with a state, and the pre-3.0.7 ones without (confirmed).
    for (raw, state) in [
        (r#"{"state":"confirmed"}"#, AffinityState::Confirmed),
        (r#"{"state":"pending"}"#, AffinityState::Pending),
        (
            r#"{"state":"pendingDeletion"}"#,
            AffinityState::PendingDeletion,
        ),
        ("", AffinityState::Confirmed),
        ("{}", AffinityState::Confirmed),
    ] {
        let got = keys::decode_affinity(AffinityType::Host, "happyhost.io", cidr, raw.as_bytes())
            .expect(raw);
        assert_eq!(
            got,
            BlockAffinity::host("happyhost.io", cidr, state),
            "{raw}"
        );
    }
}

#[test]
fn handle_keys_and_values() {
    assert_eq!(
        keys::handle_key("k8s-pod-network.abc"),
        "/calico/ipam/v2/handle/k8s-pod-network.abc"
    );
    assert_eq!(
        keys::parse_handle_key("/calico/ipam/v2/handle/foobar"),
        Some("foobar")
    );
    assert_eq!(
        keys::parse_handle_key("/calico/ipam/v2/handle/foobar/baz"),
        None
    );
    let mut h = IpamHandle::new("k8s-pod-network.abc");
    h.increment(&net("10.244.1.0/30"), 1);
    h.increment(&net("fd00:10:244::/126"), 1);
    let raw = r#"{"block":{"10.244.1.0/30":1,"fd00:10:244::/126":1},"deleted":false}"#;
    assert_eq!(keys::encode_handle(&h), raw.as_bytes());
    assert_eq!(
        keys::decode_handle("k8s-pod-network.abc", raw.as_bytes()),
        Ok(h)
    );
}

#[test]
fn config_key_and_values() {
    assert_eq!(keys::CONFIG_KEY, "/calico/ipam/v2/config");
    let c = IpamConfig {
        strict_affinity: true,
        max_blocks_per_host: 4,
        ..IpamConfig::default()
    };
    let raw = r#"{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":4}"#;
    assert_eq!(keys::encode_config(&c), raw.as_bytes());
    assert_eq!(keys::decode_config(raw.as_bytes()), Ok(c));
    // GetIPAMConfig's default, as Calico creates it.
    assert_eq!(
        keys::encode_config(&IpamConfig::default()),
        br#"{"auto_allocate_blocks":true}"#
    );
    // Go reads an absent flag as false.
    assert!(
        !keys::decode_config(b"{}")
            .expect("decode")
            .auto_allocate_blocks
    );
}

#[test]
fn pool_keys_and_values() {
    assert_eq!(
        keys::resource_key(keys::IP_POOL, "default-ipv4-ippool"),
        "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
    );
    assert_eq!(
        keys::resource_key(keys::IP_RESERVATION, "r"),
        "/calico/resources/v3/projectcalico.org/ipreservations/r"
    );
    assert_eq!(
        keys::resource_key(keys::NODE, "node-1"),
        "/calico/resources/v3/projectcalico.org/nodes/node-1"
    );
    // What calicoctl stores for the default pool calico/node creates.
    let raw = r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool","uid":"0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9","creationTimestamp":"2026-01-01T00:00:00Z"},"spec":{"cidr":"10.244.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"}}"#;
    let pool = keys::decode_pool("default-ipv4-ippool", raw.as_bytes()).expect("decode");
    let mut expected = IpPool::new("default-ipv4-ippool", "10.244.0.0/16");
    expected.spec.vxlan_mode = Some("Never".into());
    expected.spec.ipip_mode = Some("Always".into());
    expected.spec.nat_outgoing = true;
    expected.spec.block_size = Some(26);
    expected.spec.node_selector = Some("all()".into());
    expected.spec.allowed_uses = Some(vec!["Workload".into(), "Tunnel".into()]);
    assert_eq!(pool, expected);
    let metadata = serde_json::from_value(json!({
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "uid": "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9",
        "resourceVersion": "12",
    }))
    .expect("map");
    assert_eq!(
        String::from_utf8(keys::encode_pool(&expected, metadata)).expect("utf8"),
        raw
    );
    // Being deleted, or not allocatable: disabled.
    let deleting = raw.replace(
        r#""creationTimestamp":"2026-01-01T00:00:00Z""#,
        r#""creationTimestamp":"2026-01-01T00:00:00Z","deletionTimestamp":"2026-01-02T00:00:00Z""#,
    );
    assert!(
        keys::decode_pool("p", deleting.as_bytes())
            .expect("decode")
            .spec
            .disabled
    );
    // One that does not decode says why and keeps its CIDR.
    let (spec, why) = keys::decode_pool(
        "p",
        br#"{"kind":"IPPool","spec":{"cidr":"10.1.0.0/16","blockSize":-1}}"#,
    )
    .expect_err("bad blockSize");
    assert!(why.contains("blockSize"), "{why}");
    assert_eq!(
        spec.and_then(|s| s["cidr"].as_str().map(str::to_owned))
            .as_deref(),
        Some("10.1.0.0/16")
    );
}

#[test]
fn go_escapes_what_go_escapes() {
    assert_eq!(
        String::from_utf8(keys::go_json(&json!({"s": "<a&b>\u{2028}é"}))).expect("utf8"),
        r#"{"s":"\u003ca\u0026b\u003e\u2028é"}"#
    );
}
