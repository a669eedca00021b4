//! Calico's etcd v3 key layout and values (libcalico-go `lib/backend/model`, as of v3.31), pure:
//! what the etcd datastore writes and how it reads what Calico wrote.
//!
//! | Object | Key | Value |
//! |---|---|---|
//! | block | `/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26` | `AllocationBlock`: `cidr`, `affinity` (null when none), `affinity_claim_time` (when claimed), `allocations`, `unallocated`, `attributes` (`handle_id`, `secondary`), `sequenceNumber`, `sequenceNumberForAllocation`, `deleted` |
//! | affinity | `/calico/ipam/v2/host/<node>/ipv6/block/fd00:10:244::-122` | `{"state":"confirmed","deleted":false}` (node, CIDR and type are in the key) |
//! | handle | `/calico/ipam/v2/handle/<handle ID, as given>` | `{"block":{"10.244.1.0/26":1},"deleted":false}` |
//! | IPAM config | `/calico/ipam/v2/config` | `{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":4}`, each omitted when false or 0 |
//! | pool, reservation, node | `/calico/resources/v3/projectcalico.org/{ippools,ipreservations,nodes}/<name>` | the `projectcalico.org/v3` resource: `kind`, `apiVersion`, `metadata`, `spec` |
//!
//! Values are written as Go's `encoding/json` writes Calico's structs: fields in declaration
//! order, no spaces, `<`, `>` and `&` escaped, nil pointers and slices as `null`. The block's
//! claim time is Calico v3.32's `affinity_claim_time`, after `affinity` (omitted when there is
//! none, as Calico's `omitempty`); a block written with the `affinityClaimTime` this datastore
//! wrote before is still read. Fields Calico's structs do not have (a cooling-down attribute's
//! `releasedAt`, the IPAM config's `ipCooldownSeconds`) come after Calico's: Calico ignores them.
//! Reading accepts what Go writes for an empty slice or map (`null`).

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::{
    AffinityState, AffinityType, BlockAffinity, Extra, IpPool, IpPoolSpec, IpReservation,
    IpReservationSpec, IpamBlock, IpamConfig, IpamHandle, V3_SPEC_FIELDS,
};
use crate::strict;

/// Everything IPAM keeps under this prefix.
pub const IPAM_PREFIX: &str = "/calico/ipam/v2/";
/// The blocks of both families.
pub const BLOCK_PREFIX: &str = "/calico/ipam/v2/assignment/";
/// The handles.
pub const HANDLE_PREFIX: &str = "/calico/ipam/v2/handle/";
/// The IPAM configuration singleton.
pub const CONFIG_KEY: &str = "/calico/ipam/v2/config";
/// Calico's v3 resources.
pub const RESOURCE_PREFIX: &str = "/calico/resources/v3/projectcalico.org/";
/// `kind` and `apiVersion` of a v3 resource.
pub const API_VERSION: &str = "projectcalico.org/v3";

/// Calico's v3 resource kinds this datastore reads or writes: (`kind`, plural in the key).
pub const IP_POOL: (&str, &str) = ("IPPool", "ippools");
/// IPReservation.
pub const IP_RESERVATION: (&str, &str) = ("IPReservation", "ipreservations");
/// Calico's Node (its labels select pools).
pub const NODE: (&str, &str) = ("Node", "nodes");

fn family(cidr: &IpNet) -> u8 {
    match cidr {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    }
}

/// A CIDR as a key segment: Go's `IPNet.String()` with its `/` replaced by `-`.
pub fn cidr_segment(cidr: &IpNet) -> String {
    cidr.to_string().replacen('/', "-", 1)
}

/// The CIDR of a key segment written by [`cidr_segment`].
pub fn parse_cidr_segment(segment: &str) -> Option<IpNet> {
    segment.replacen('-', "/", 1).parse().ok()
}

/// A name that is one key segment: not empty, no `/`.
pub fn check_segment(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') {
        Err(format!(
            "{what} {name:?} cannot be an etcd key segment (empty, or contains '/')"
        ))
    } else {
        Ok(())
    }
}

/// The key of a block.
pub fn block_key(cidr: &IpNet) -> String {
    format!(
        "{BLOCK_PREFIX}ipv{}/block/{}",
        family(cidr),
        cidr_segment(cidr)
    )
}

/// The CIDR of a block key, `None` for any other key.
pub fn parse_block_key(key: &str) -> Option<IpNet> {
    let rest = key.strip_prefix(BLOCK_PREFIX)?;
    let (fam, rest) = rest.split_once('/')?;
    let segment = rest.strip_prefix("block/")?;
    let cidr = parse_cidr_segment(segment)?;
    (fam == format!("ipv{}", family(&cidr)) && !segment.contains('/')).then_some(cidr)
}

/// Where the affinities of one type are: `/calico/ipam/v2/host/`.
pub fn affinity_type_prefix(t: AffinityType) -> String {
    format!("{IPAM_PREFIX}{}/", t.as_str())
}

/// Where one host's affinities (both families) are: `/calico/ipam/v2/host/<node>/`.
pub fn host_affinity_prefix(host: &str) -> String {
    format!("{}{host}/", affinity_type_prefix(AffinityType::Host))
}

/// The key of an affinity.
pub fn affinity_key(t: AffinityType, node: &str, cidr: &IpNet) -> String {
    format!(
        "{}{node}/ipv{}/block/{}",
        affinity_type_prefix(t),
        family(cidr),
        cidr_segment(cidr)
    )
}

/// The type, node and CIDR of an affinity key, `None` for any other key.
pub fn parse_affinity_key(key: &str) -> Option<(AffinityType, String, IpNet)> {
    let rest = key.strip_prefix(IPAM_PREFIX)?;
    let (t, rest) = rest.split_once('/')?;
    let t = match t {
        "host" => AffinityType::Host,
        "virtual" => AffinityType::Virtual,
        _ => return None,
    };
    let mut parts = rest.split('/');
    let (node, fam, block, segment) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || node.is_empty() || block != "block" {
        return None;
    }
    let cidr = parse_cidr_segment(segment)?;
    (fam == format!("ipv{}", family(&cidr))).then(|| (t, node.to_owned(), cidr))
}

/// The key of a handle: the ID as given (Calico does not change its case in etcd).
pub fn handle_key(handle_id: &str) -> String {
    format!("{HANDLE_PREFIX}{handle_id}")
}

/// The handle ID of a handle key.
pub fn parse_handle_key(key: &str) -> Option<&str> {
    key.strip_prefix(HANDLE_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Where the resources of a kind are: `/calico/resources/v3/projectcalico.org/ippools/`.
pub fn resource_prefix(kind: (&str, &str)) -> String {
    format!("{RESOURCE_PREFIX}{}/", kind.1)
}

/// The key of a (cluster-scoped) v3 resource.
pub fn resource_key(kind: (&str, &str), name: &str) -> String {
    format!("{}{name}", resource_prefix(kind))
}

/// Writes JSON as Go's `encoding/json` does (`json.Marshal`): compact, with `<`, `>`, `&`,
/// U+2028 and U+2029 escaped.
pub fn go_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Serializing maps with string keys, strings and numbers to a Vec cannot fail.
    if value.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(b"null");
    }
    out
}

struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escaped.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// `fields` first, in that order (those present), then the rest as they were.
fn ordered(mut map: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for f in fields {
        if let Some(v) = map.remove(*f) {
            out.insert((*f).to_owned(), v);
        }
    }
    out.extend(map);
    out
}

fn to_map<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Go's `omitempty`: drops these fields when false, 0, "" or an empty list.
fn omit_empty(map: &mut Map<String, Value>, fields: &[&str]) {
    for f in fields {
        let empty = match map.get(*f) {
            Some(Value::Bool(b)) => !b,
            Some(Value::Number(n)) => n.as_f64() == Some(0.0),
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            map.remove(*f);
        }
    }
}

/// A value's JSON object, or why it is not one.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(bytes).map_err(|e| e.to_string())? {
        Value::Object(m) => Ok(m),
        other => Err(format!("{} is not a JSON object", strict::kind_of(&other))),
    }
}

/// `null` (Go's nil slice or map) read as `empty`.
fn null_as(map: &mut Map<String, Value>, field: &str, empty: Value) {
    if map.get(field).is_some_and(Value::is_null) {
        map.insert(field.to_owned(), empty);
    }
}

fn decode<T: serde::de::DeserializeOwned>(map: Map<String, Value>) -> Result<T, String> {
    strict::from_value(&Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// A block's value.
pub fn encode_block(block: &IpamBlock) -> Vec<u8> {
    let mut map = to_map(block);
    // Calico's etcd model has no strictAffinity (deprecated, always false here).
    if map.get("strictAffinity") == Some(&Value::Bool(false)) {
        map.remove("strictAffinity");
    }
    // A nil *string and a nil slice: what Calico writes for a block nobody owns, and for one
    // that never had an attribute.
    map.entry("affinity").or_insert(Value::Null);
    // Calico v3.32's `AffinityClaimTime *metav1.Time `json:"affinity_claim_time,omitempty"``,
    // declared right after `Affinity`.
    if let Some(t) = map.remove("affinityClaimTime") {
        map.insert("affinity_claim_time".into(), t);
    }
    if map
        .get("attributes")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        map.insert("attributes".into(), Value::Null);
    }
    if let Some(Value::Array(attrs)) = map.get_mut("attributes") {
        for a in attrs.iter_mut() {
            if let Value::Object(m) = a {
                m.entry("handle_id").or_insert(Value::Null);
                m.entry("secondary").or_insert(Value::Null);
                *m = ordered(std::mem::take(m), &["handle_id", "secondary"]);
            }
        }
    }
    go_json(&ordered(
        map,
        &[
            "cidr",
            "affinity",
            "affinity_claim_time",
            "allocations",
            "unallocated",
            "attributes",
            "sequenceNumber",
            "sequenceNumberForAllocation",
            "deleted",
            "hostAffinity",
        ],
    ))
}

/// A block from its value.
pub fn decode_block(bytes: &[u8]) -> Result<IpamBlock, String> {
    let mut map = object(bytes)?;
    null_as(&mut map, "unallocated", Value::Array(Vec::new()));
    null_as(&mut map, "attributes", Value::Array(Vec::new()));
    null_as(
        &mut map,
        "sequenceNumberForAllocation",
        Value::Object(Map::new()),
    );
    if map.get("affinity").is_some_and(Value::is_null) {
        map.remove("affinity");
    }
    // Calico (v3.32 on) writes the claim time as `affinity_claim_time`; earlier versions of
    // this datastore wrote it as `affinityClaimTime` after Calico's fields.
    match map.remove("affinity_claim_time") {
        Some(Value::Null) | None => {}
        Some(t) => {
            map.insert("affinityClaimTime".into(), t);
        }
    }
    // A block written before `affinity` existed names its host in `hostAffinity`.
    if !map.contains_key("affinity")
        && let Some(host) = map.get("hostAffinity").and_then(Value::as_str)
    {
        let affinity = Value::String(format!("host:{host}"));
        map.insert("affinity".into(), affinity);
    }
    if let Some(Value::Array(attrs)) = map.get_mut("attributes") {
        for a in attrs.iter_mut() {
            if let Value::Object(m) = a {
                m.retain(|k, v| !((k == "handle_id" || k == "secondary") && v.is_null()));
            }
        }
    }
    decode(map)
}

/// An affinity's value (its node, CIDR and type are in its key).
pub fn encode_affinity(affinity: &BlockAffinity) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("state".into(), affinity.state.as_str().into());
    map.insert("deleted".into(), affinity.deleted.into());
    for (k, v) in &affinity.extra {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
    go_json(&map)
}

/// An affinity from its key's parts and its value.
pub fn decode_affinity(
    affinity_type: AffinityType,
    node: &str,
    cidr: IpNet,
    bytes: &[u8],
) -> Result<BlockAffinity, String> {
    // Affinities written before Calico v3.0.7 have no value at all.
    let mut map = if bytes.trim_ascii().is_empty() {
        Map::new()
    } else {
        object(bytes)?
    };
    let state: AffinityState = match map.remove("state") {
        None | Some(Value::Null) => AffinityState::Confirmed,
        Some(v) => serde_json::from_value(v).map_err(|e| format!("state: {e}"))?,
    };
    let deleted = match map.remove("deleted") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => return Err(format!("deleted: {} is not a boolean", other)),
    };
    Ok(BlockAffinity {
        state,
        node: node.to_owned(),
        affinity_type,
        cidr,
        deleted,
        extra: map,
    })
}

/// A handle's value (its ID is in its key).
pub fn encode_handle(handle: &IpamHandle) -> Vec<u8> {
    let mut map = Map::new();
    map.insert(
        "block".into(),
        serde_json::to_value(&handle.block).unwrap_or(Value::Null),
    );
    map.insert("deleted".into(), handle.deleted.into());
    for (k, v) in &handle.extra {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
    go_json(&map)
}

/// A handle from its ID (the key's last segment) and its value.
pub fn decode_handle(handle_id: &str, bytes: &[u8]) -> Result<IpamHandle, String> {
    let mut map = object(bytes)?;
    null_as(&mut map, "block", Value::Object(Map::new()));
    map.remove("handleID");
    map.insert("handleID".into(), handle_id.into());
    decode(map)
}

/// The IPAM configuration's value: Calico's three fields (`omitempty`), then ours.
pub fn encode_config(config: &IpamConfig) -> Vec<u8> {
    let mut map = to_map(config);
    let mut out = Map::new();
    out.insert(
        "strict_affinity".into(),
        map.remove("strictAffinity").unwrap_or(Value::Bool(false)),
    );
    out.insert(
        "auto_allocate_blocks".into(),
        map.remove("autoAllocateBlocks")
            .unwrap_or(Value::Bool(false)),
    );
    out.insert(
        "maxBlocksPerHost".into(),
        map.remove("maxBlocksPerHost").unwrap_or(Value::from(0)),
    );
    omit_empty(
        &mut out,
        &[
            "strict_affinity",
            "auto_allocate_blocks",
            "maxBlocksPerHost",
        ],
    );
    out.extend(map);
    go_json(&out)
}

/// The IPAM configuration from its value, with Go's reading of it: a field that is absent is
/// false or 0 (Calico writes `auto_allocate_blocks` only when it is true).
pub fn decode_config(bytes: &[u8]) -> Result<IpamConfig, String> {
    let mut map = object(bytes)?;
    let mut flag = |name: &str| -> Result<bool, String> {
        match map.remove(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(format!("{name}: {other} is not a boolean")),
        }
    };
    let strict_affinity = flag("strict_affinity")?;
    let auto_allocate_blocks = flag("auto_allocate_blocks")?;
    let mut ours = Map::new();
    ours.insert("strictAffinity".into(), strict_affinity.into());
    ours.insert("autoAllocateBlocks".into(), auto_allocate_blocks.into());
    if let Some(v) = map.remove("maxBlocksPerHost")
        && !v.is_null()
    {
        ours.insert("maxBlocksPerHost".into(), v);
    }
    // The Kubernetes spelling of Calico's fields must not shadow the etcd one.
    map.remove("strictAffinity");
    map.remove("autoAllocateBlocks");
    ours.extend(map);
    decode(ours)
}

/// Go's `metav1.ObjectMeta` field order.
const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// A v3 resource's value, as calicoctl stores it: `kind`, `apiVersion`, `metadata` (the one
/// given, in Go's order, without `resourceVersion`, which etcd keeps), `spec`.
pub fn encode_resource(
    kind: &str,
    metadata: Map<String, Value>,
    spec: Map<String, Value>,
) -> Vec<u8> {
    let mut metadata = ordered(metadata, OBJECT_META);
    metadata.remove("resourceVersion");
    let mut map = Map::new();
    map.insert("kind".into(), kind.into());
    map.insert("apiVersion".into(), API_VERSION.into());
    map.insert("metadata".into(), Value::Object(metadata));
    map.insert("spec".into(), Value::Object(spec));
    go_json(&map)
}

/// A pool's value, with `metadata` (see [`encode_resource`]).
pub fn encode_pool(pool: &IpPool, mut metadata: Map<String, Value>) -> Vec<u8> {
    metadata.insert("name".into(), pool.name.clone().into());
    // Every field of Calico's IPPoolSpec but `cidr` is `omitempty`.
    let mut spec = pool.v3_spec();
    omit_empty(&mut spec, &V3_SPEC_FIELDS[1..]);
    encode_resource(IP_POOL.0, metadata, spec)
}

/// What a stored v3 resource holds: its metadata and its spec, each a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `metadata` (empty when absent).
    pub metadata: Map<String, Value>,
    /// `spec` (`None` when absent).
    pub spec: Option<Value>,
    /// `status`, when there is one.
    pub status: Option<Value>,
}

/// A v3 resource from its value.
pub fn decode_resource(bytes: &[u8]) -> Result<Resource, String> {
    let mut map = object(bytes)?;
    let metadata = match map.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(format!(
                "metadata: {} is not a JSON object",
                strict::kind_of(&other)
            ));
        }
    };
    Ok(Resource {
        metadata,
        spec: map.remove("spec"),
        status: map.remove("status"),
    })
}

/// A pool from its key's name and its value, as the allocator sees it: a pool being deleted
/// or whose status says it is not `Allocatable` is disabled (Calico's `filterIPPool`).
pub fn decode_pool(name: &str, bytes: &[u8]) -> Result<IpPool, (Option<Value>, String)> {
    let r = decode_resource(bytes).map_err(|e| (None, e))?;
    let Some(raw) = r.spec.clone() else {
        return Err((None, "the resource has no spec".into()));
    };
    let mut spec: IpPoolSpec =
        strict::from_value(&raw).map_err(|e| (Some(raw.clone()), format!("spec: {e}")))?;
    let not_allocatable = r
        .status
        .as_ref()
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Allocatable")
                    && c.get("status").and_then(Value::as_str) == Some("False")
            })
        });
    if r.metadata
        .get("deletionTimestamp")
        .is_some_and(|v| !v.is_null())
        || not_allocatable
    {
        spec.disabled = true;
    }
    Ok(IpPool {
        name: name.to_owned(),
        spec,
    })
}

/// A reservation from its key's name and its value.
pub fn decode_reservation(name: &str, bytes: &[u8]) -> Result<IpReservation, String> {
    let r = decode_resource(bytes)?;
    let spec: IpReservationSpec = match r.spec {
        None | Some(Value::Null) => IpReservationSpec {
            reserved_cidrs: Vec::new(),
            extra: Extra::new(),
        },
        Some(v) => strict::from_value(&v).map_err(|e| format!("spec: {e}"))?,
    };
    Ok(IpReservation {
        name: name.to_owned(),
        spec,
    })
}

/// A Calico Node's labels from its value.
pub fn decode_node_labels(
    bytes: &[u8],
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let r = decode_resource(bytes)?;
    match r.metadata.get("labels") {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("metadata.labels: {e}")),
    }
}
