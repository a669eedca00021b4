//! Calico v3 resources written as calicoctl writes them: with a `uid` and a
//! `creationTimestamp` in their metadata. Last writer wins.

use serde_json::{Map, Value};

use super::{EtcdStore, keys, segment};
use crate::datastore::DsResult;
use crate::model::time;

/// A random version 4 UUID (the `uid` calicoctl gives a resource it creates).
pub(super) fn new_uid() -> String {
    let mut b = [0u8; 16];
    let seeded = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !seeded {
        let n = time::now_nanos().to_le_bytes();
        b[..8].copy_from_slice(&n);
        b[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Writes a Calico v3 resource as calicoctl would (for tests and tools that seed a cluster:
/// nodes, reservations). Last writer wins.
pub async fn put_resource(
    store: &EtcdStore,
    kind: (&str, &str),
    name: &str,
    metadata: Map<String, Value>,
    spec: Map<String, Value>,
) -> DsResult<()> {
    segment(kind.0, name)?;
    let key = keys::resource_key(kind, name);
    let mut metadata = metadata;
    metadata.insert("name".into(), name.into());
    metadata
        .entry("uid")
        .or_insert_with(|| Value::String(new_uid()));
    metadata
        .entry("creationTimestamp")
        .or_insert_with(|| Value::String(time::rfc3339(time::now_nanos())));
    store
        .put(&key, keys::encode_resource(kind.0, metadata, spec))
        .await
}
