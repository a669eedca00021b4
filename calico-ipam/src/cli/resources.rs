//! Reading `apply -f` files strictly, as calicoctl does (`yaml.UnmarshalStrict`): an unknown
//! field is an error, named with the nearest valid field (`blocksize` → `blockSize`), instead
//! of being dropped silently.
//!
//! Every level (document, metadata, spec) is first read into a `deny_unknown_fields` mirror of
//! Calico's type; only then is the spec read into the model, which keeps unknown fields (so
//! that objects written by a newer Calico still load from the datastore).

use anyhow::{Context, Result, bail};
use libipam::model::{IpPool, IpPoolSpec, IpamConfig};
use libipam::strict::kind_of;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

/// One resource of an `apply` file.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a few per file, never stored in bulk
pub enum Resource {
    Pool(IpPool),
    /// IPAMConfiguration (v3) or IPAMConfig (crd v1), always named `default`.
    Config(ConfigPatch),
}

/// The fields of an IPAM configuration document; absent ones keep their stored values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigPatch {
    pub strict_affinity: Option<bool>,
    pub auto_allocate_blocks: Option<bool>,
    pub max_blocks_per_host: Option<u32>,
    pub kube_virt_vm_address_persistence: Option<String>,
    pub ip_cooldown_seconds: Option<u32>,
}

impl ConfigPatch {
    pub fn apply_to(&self, c: &mut IpamConfig) {
        if let Some(v) = self.strict_affinity {
            c.strict_affinity = v;
        }
        if let Some(v) = self.auto_allocate_blocks {
            c.auto_allocate_blocks = v;
        }
        if let Some(v) = self.max_blocks_per_host {
            c.max_blocks_per_host = v;
        }
        if let Some(v) = &self.kube_virt_vm_address_persistence {
            c.kube_virt_vm_address_persistence = Some(v.clone());
        }
        if let Some(v) = self.ip_cooldown_seconds {
            c.ip_cooldown_seconds = v;
        }
    }
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Pool(_) => "IPPool",
            Resource::Config(_) => "IPAMConfiguration",
        }
    }
}

const V3: &str = "projectcalico.org/v3";
const CRD_V1: &str = "crd.projectcalico.org/v1";

/// An object: apiVersion, kind, metadata, spec.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Object {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<Value>,
}

/// A list: apiVersion, kind (`...List` or `List`), metadata, items.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct List {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    #[serde(default)]
    metadata: Option<ListMeta>,
    #[serde(default)]
    items: Vec<Value>,
}

/// Kubernetes' ObjectMeta: only the name is used, the rest is accepted as Calico does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ObjectMeta {
    name: Option<String>,
    namespace: Option<IgnoredAny>,
    generate_name: Option<IgnoredAny>,
    self_link: Option<IgnoredAny>,
    uid: Option<IgnoredAny>,
    resource_version: Option<IgnoredAny>,
    generation: Option<IgnoredAny>,
    creation_timestamp: Option<IgnoredAny>,
    deletion_timestamp: Option<IgnoredAny>,
    deletion_grace_period_seconds: Option<IgnoredAny>,
    labels: Option<IgnoredAny>,
    annotations: Option<IgnoredAny>,
    owner_references: Option<IgnoredAny>,
    finalizers: Option<IgnoredAny>,
    managed_fields: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ListMeta {
    resource_version: Option<IgnoredAny>,
    #[serde(rename = "continue")]
    continue_: Option<IgnoredAny>,
    self_link: Option<IgnoredAny>,
    remaining_item_count: Option<IgnoredAny>,
}

/// Calico's IPPoolSpec (both API versions), including the deprecated `ipip` and
/// `nat-outgoing`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PoolSpec {
    cidr: String,
    vxlan_mode: Option<String>,
    ipip_mode: Option<String>,
    nat_outgoing: Option<bool>,
    disabled: Option<bool>,
    #[serde(rename = "disableBGPExport")]
    disable_bgp_export: Option<bool>,
    block_size: Option<u32>,
    node_selector: Option<String>,
    namespace_selector: Option<String>,
    ipip: Option<IpipConfig>,
    #[serde(rename = "nat-outgoing")]
    nat_outgoing_v1: Option<bool>,
    allowed_uses: Option<Vec<String>>,
    assignment_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct IpipConfig {
    enabled: Option<bool>,
    mode: Option<String>,
}

/// projectcalico.org/v3 IPAMConfigurationSpec (`autoAllocateBlocks` since Calico v3.32, whose
/// v3 CRD has it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigSpecV3 {
    strict_affinity: Option<bool>,
    auto_allocate_blocks: Option<bool>,
    max_blocks_per_host: Option<u32>,
    #[serde(rename = "kubeVirtVMAddressPersistence")]
    kube_virt_vm_address_persistence: Option<String>,
}

/// crd.projectcalico.org/v1 IPAMConfig spec.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigSpecV1 {
    strict_affinity: Option<bool>,
    auto_allocate_blocks: Option<bool>,
    max_blocks_per_host: Option<u32>,
    #[serde(rename = "kubeVirtVMAddressPersistence")]
    kube_virt_vm_address_persistence: Option<String>,
    ip_cooldown_seconds: Option<u32>,
}

/// Parse YAML (one or many documents) or JSON (an object or an array) into resources.
pub fn parse(text: &str) -> Result<Vec<Resource>> {
    let docs: Vec<Value> = if text.trim_start().starts_with(['{', '[']) {
        match serde_json::from_str::<Value>(text).context("parsing JSON")? {
            Value::Array(items) => items,
            one => vec![one],
        }
    } else {
        serde_saphyr::from_multiple::<Value>(text).context("parsing YAML")?
    };
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let here = || format!("document {}", i + 1);
        if !doc.is_object() {
            bail!(
                "{} is {}, not an object: {WHAT_A_RESOURCE_IS}",
                here(),
                kind_of(&doc)
            );
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind.ends_with("List") {
            let list: List = strict(doc.clone()).with_context(here)?;
            for (j, item) in list.items.into_iter().enumerate() {
                out.push(resource(item).with_context(|| format!("{}, item {}", here(), j + 1))?);
            }
        } else {
            out.push(resource(doc).with_context(here)?);
        }
    }
    Ok(out)
}

/// What the error for a document or list item that is not an object says.
const WHAT_A_RESOURCE_IS: &str = "a resource is an object with apiVersion, kind, metadata and spec";

fn resource(doc: Value) -> Result<Resource> {
    if !doc.is_object() {
        bail!("{} is not an object: {WHAT_A_RESOURCE_IS}", kind_of(&doc));
    }
    let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (api, kind) = (field("apiVersion"), field("kind"));
    let (api, kind) = (api.as_str(), kind.as_str());
    if api != V3 && api != CRD_V1 {
        bail!("apiVersion {api:?} is not {V3} or {CRD_V1}");
    }
    match kind {
        "IPPool" | "IPAMConfiguration" | "IPAMConfig" => {}
        "" => bail!("kind is missing: use IPPool or IPAMConfiguration"),
        other => bail!(
            "kind {other:?} is not managed here: use IPPool or IPAMConfiguration{}",
            suggestion(other, &["IPPool", "IPAMConfiguration"])
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default()
        ),
    }
    let obj: Object = strict(doc)?;
    let name = obj
        .metadata
        .and_then(|m| m.name)
        .filter(|n| !n.is_empty())
        .context("metadata.name is missing")?;
    let spec = obj
        .spec
        .unwrap_or_else(|| Value::Object(Default::default()));
    match (api, kind) {
        (_, "IPPool") => {
            let _: PoolSpec =
                strict(spec.clone()).with_context(|| format!("IPPool {name}: spec"))?;
            let spec: IpPoolSpec = strict(spec).with_context(|| format!("IPPool {name}: spec"))?;
            Ok(Resource::Pool(IpPool { name, spec }))
        }
        (V3, "IPAMConfiguration") => {
            check_config_name(&name)?;
            let s: ConfigSpecV3 = strict(spec).context("IPAMConfiguration default: spec")?;
            Ok(Resource::Config(ConfigPatch {
                strict_affinity: s.strict_affinity,
                auto_allocate_blocks: s.auto_allocate_blocks,
                max_blocks_per_host: s.max_blocks_per_host,
                kube_virt_vm_address_persistence: s.kube_virt_vm_address_persistence,
                ..ConfigPatch::default()
            }))
        }
        (CRD_V1, "IPAMConfig") => {
            check_config_name(&name)?;
            let s: ConfigSpecV1 = strict(spec).context("IPAMConfig default: spec")?;
            Ok(Resource::Config(ConfigPatch {
                strict_affinity: s.strict_affinity,
                auto_allocate_blocks: s.auto_allocate_blocks,
                max_blocks_per_host: s.max_blocks_per_host,
                kube_virt_vm_address_persistence: s.kube_virt_vm_address_persistence,
                ip_cooldown_seconds: s.ip_cooldown_seconds,
            }))
        }
        (V3, other) => bail!("kind {other} is not in {V3}: use IPAMConfiguration"),
        (_, other) => bail!("kind {other} is not in {CRD_V1}: use IPAMConfig"),
    }
}

fn check_config_name(name: &str) -> Result<()> {
    if name != "default" {
        bail!("the IPAM configuration is a singleton named \"default\", not {name:?}");
    }
    Ok(())
}

/// Deserialize strictly: every struct from an object only (serde alone reads an array field by
/// field), the path of what was wrong named (`metadata: invalid type: sequence, ...`), and an
/// unknown field becomes "unknown field X, did you mean Y?".
fn strict<T: DeserializeOwned>(v: Value) -> Result<T> {
    libipam::strict::from_value(&v).map_err(|e| {
        let path = e.path().to_string();
        let msg = explain(&e.into_inner().to_string());
        if path == "." {
            anyhow::anyhow!(msg)
        } else {
            anyhow::anyhow!("{path}: {msg}")
        }
    })
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`") rewritten with a
/// suggestion; other messages pass through.
fn explain(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg.to_string();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match suggestion(field, &valid) {
        Some(s) => format!("unknown field {field}, did you mean {s}?"),
        None if valid.is_empty() => format!("unknown field {field}: no fields are allowed here"),
        None => format!(
            "unknown field {field}: valid fields are {}",
            valid.join(", ")
        ),
    }
}

/// The valid name nearest to `given`: same letters ignoring case, else the smallest edit
/// distance if it is small for the name's length (at most a third of it, at least 2).
fn suggestion<'a>(given: &str, valid: &[&'a str]) -> Option<&'a str> {
    if let Some(v) = valid.iter().find(|v| v.eq_ignore_ascii_case(given)) {
        return Some(v);
    }
    let lower = given.to_ascii_lowercase();
    let (best, d) = valid
        .iter()
        .map(|v| (*v, edit_distance(&lower, &v.to_ascii_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    (d <= (given.chars().count() / 3).max(2)).then_some(best)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("rejected"))
    }

    const POOL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.1.0.0/16\n";

    #[test]
    fn typos_name_the_valid_field() {
        let e = err(&format!("{POOL}  blocksize: 28\n"));
        assert!(
            e.contains("unknown field blocksize, did you mean blockSize?"),
            "{e}"
        );
        assert!(e.contains("IPPool p: spec"), "{e}");
        let e = err(&format!("{POOL}  natOutgoin: true\n"));
        assert!(
            e.contains("unknown field natOutgoin, did you mean natOutgoing?"),
            "{e}"
        );
        let e = err(&POOL.replace("  name: p", "  name: p\n  lables: {a: b}"));
        assert!(
            e.contains("unknown field lables, did you mean labels?"),
            "{e}"
        );
        let e = err(&POOL.replace("kind: IPPool", "kind: IPPool\nspce: {}"));
        assert!(e.contains("unknown field spce, did you mean spec?"), "{e}");
        let e = err(&format!("{POOL}  zzzzzz: 1\n"));
        assert!(
            e.contains("unknown field zzzzzz: valid fields are cidr, vxlanMode"),
            "{e}"
        );
        let e = err(&POOL.replace("IPPool", "IPPools"));
        assert!(e.contains("did you mean IPPool?"), "{e}");
    }

    /// Read field by field, `["projectcalico.org/v3", "IPPool", ["p"], ...]` was a pool.
    #[test]
    fn only_objects_are_resources_at_every_level() {
        let v3 = r#""apiVersion":"projectcalico.org/v3","kind":"IPPool""#;
        for (text, says) in [
            (
                "[[\"projectcalico.org/v3\", \"IPPool\"]]",
                "document 1 is a JSON array, not an object",
            ),
            ("7", "document 1 is a number, not an object"),
            ("\"IPPool\"\n", "document 1 is a string, not an object"),
            (
                "- projectcalico.org/v3\n- IPPool\n",
                "document 1 is a JSON array, not an object",
            ),
            (
                &format!(r#"{{{v3},"metadata":["p"],"spec":{{"cidr":"10.1.0.0/16"}}}}"#),
                "metadata: invalid type: sequence, expected struct ObjectMeta",
            ),
            (
                &format!(r#"{{{v3},"metadata":{{"name":"p"}},"spec":["10.1.0.0/16"]}}"#),
                "IPPool p: spec: invalid type: sequence, expected struct PoolSpec",
            ),
            (
                &format!(
                    r#"{{{v3},"metadata":{{"name":"p"}},"spec":{{"cidr":"10.1.0.0/16","ipip":[true]}}}}"#
                ),
                "ipip: invalid type: sequence, expected struct IpipConfig",
            ),
            (
                r#"{"apiVersion":"v1","kind":"List","items":[["projectcalico.org/v3"]]}"#,
                "item 1: a JSON array is not an object",
            ),
            (
                r#"{"apiVersion":"v1","kind":"List","metadata":["1"],"items":[]}"#,
                "metadata: invalid type: sequence, expected struct ListMeta",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn json_and_config_are_strict_too() {
        let e = err(
            r#"{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"p"},"spec":{"cidr":"10.1.0.0/16","ipipmode":"Always"}}"#,
        );
        assert!(e.contains("did you mean ipipMode?"), "{e}");
        let e = err(
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAfinity: true}\n",
        );
        assert!(e.contains("did you mean strictAffinity?"), "{e}");
        let e = err(
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {ipCooldownSeconds: 5}\n",
        );
        assert!(e.contains("unknown field ipCooldownSeconds"), "{e}");
        let v3 = parse(
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {autoAllocateBlocks: false}\n",
        )
        .expect("Calico v3.32's v3 IPAMConfiguration has autoAllocateBlocks");
        assert_eq!(
            v3,
            vec![Resource::Config(ConfigPatch {
                auto_allocate_blocks: Some(false),
                ..ConfigPatch::default()
            })]
        );
        let ok = parse(
            "apiVersion: crd.projectcalico.org/v1\nkind: IPAMConfig\nmetadata: {name: default}\nspec: {strictAffinity: true, autoAllocateBlocks: true, maxBlocksPerHost: 4}\n",
        )
        .expect("crd v1 IPAMConfig");
        assert_eq!(
            ok,
            vec![Resource::Config(ConfigPatch {
                strict_affinity: Some(true),
                auto_allocate_blocks: Some(true),
                max_blocks_per_host: Some(4),
                ..ConfigPatch::default()
            })]
        );
    }

    #[test]
    fn valid_documents_parse() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/pools/seed-pools.yaml"
        ))
        .expect("seed pools");
        let pools = parse(&text).expect("parse");
        assert_eq!(pools.len(), 2);
        let Resource::Pool(p) = &pools[1] else {
            panic!("not a pool")
        };
        assert_eq!(p.spec.cidr, "fd00:10:244::/48");
        assert_eq!(p.spec.block_size, Some(122));
        let list = parse(&format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nmetadata: {{resourceVersion: \"1\"}}\nitems:\n- {}",
            POOL.replace('\n', "\n  ")
        ))
        .expect("list");
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggestion("blocksize", &["cidr", "blockSize"]),
            Some("blockSize")
        );
        assert_eq!(
            suggestion("nodeselektor", &["nodeSelector"]),
            Some("nodeSelector")
        );
        assert_eq!(suggestion("x", &["cidr", "blockSize"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
