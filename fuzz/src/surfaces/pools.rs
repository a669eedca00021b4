//! Operator input: IPPool documents for `calico-ipam apply`, and selector strings.

use std::collections::BTreeMap;

use calico_ipam::cli::pool::to_v3;
use calico_ipam::cli::resources::{Resource, parse};
use libipam::model::IpPool;
use libipam::selector::Selector;
use libipam::validate::{validate_new_pool, validate_pool};

use super::Surface;
use super::model::exercise_pool;
use crate::engine::signature;

const POOL_TOKENS: &[&str] = &[
    "apiVersion: projectcalico.org/v3\n",
    "apiVersion: crd.projectcalico.org/v1\n",
    "kind: IPPool\n",
    "kind: IPPoolList\n",
    "kind: List\n",
    "items:",
    "metadata:",
    "name:",
    "spec:",
    "cidr:",
    "blockSize:",
    "ipipMode:",
    "vxlanMode:",
    "natOutgoing:",
    "disabled:",
    "disableBGPExport:",
    "nodeSelector:",
    "namespaceSelector:",
    "allowedUses:",
    "assignmentMode:",
    "Workload",
    "Tunnel",
    "LoadBalancer",
    "Automatic",
    "Manual",
    "Always",
    "CrossSubnet",
    "Never",
    "\n---\n",
    "- ",
    ": ",
    "&a ",
    "*a",
    "!!str ",
    "<<: ",
    "10.244.0.0/16",
    "fd00:10:244::/48",
    "0.0.0.0/0",
    "::/0",
    "all()",
    "has(",
    "==",
    "!=",
    " in {",
    " not in {",
    "&&",
    "||",
];

pub const POOL_APPLY: Surface = Surface {
    name: "pool-apply",
    about: "IPPool YAML or JSON as `calico-ipam apply` reads it: the strict resources::parse, then the \
            validation against the stored pools and what the allocator derives from a pool",
    tokens: POOL_TOKENS,
    make: || {
        let stored = vec![
            IpPool::new("existing-v4", "10.96.0.0/16"),
            IpPool::new("existing-v6", "fd00:96::/48"),
        ];
        Box::new(move |input| {
            // The CLI reads the file into a String first.
            let Ok(text) = std::str::from_utf8(input) else {
                return "not-utf8".into();
            };
            let pools: Vec<IpPool> = match parse(text) {
                Ok(docs) => docs
                    .into_iter()
                    .filter_map(|d| match d {
                        Resource::Pool(p) => Some(p),
                        Resource::Config(_) => None,
                    })
                    .collect(),
                Err(e) => return signature("parse", &format!("{e:#}")),
            };
            let mut known = stored.clone();
            let mut sig = format!("parsed:{}", pools.len().min(3));
            for pool in &pools {
                let _ = to_v3(pool);
                exercise_pool(pool);
                match validate_new_pool(pool, &known) {
                    Ok(()) => {
                        known.retain(|p| p.name != pool.name);
                        known.push(pool.clone());
                    }
                    Err(e) => sig = signature("invalid", &e.to_string()),
                }
                let _ = validate_pool(pool);
            }
            sig
        })
    },
};

/// Label sets a selector is evaluated against.
fn label_sets() -> Vec<BTreeMap<String, String>> {
    let set = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    vec![
        set(&[]),
        set(&[
            ("kubernetes.io/hostname", "node-a"),
            ("zone", "a"),
            ("rack", "r1"),
        ]),
        set(&[("projectcalico.org/name", "default"), ("é", "☃"), ("", "")]),
    ]
}

pub const SELECTOR: Surface = Surface {
    name: "selector",
    about: "Calico selector strings (pool nodeSelector and namespaceSelector): Selector::parse, \
            evaluation, and the printed form parsing back to the same selector",
    tokens: &[
        "all()",
        "global()",
        "has(",
        ")",
        "(",
        "!",
        "==",
        "!=",
        " in ",
        " not in ",
        "{",
        "}",
        ",",
        " contains ",
        " starts with ",
        " ends with ",
        "&&",
        "||",
        "'",
        "\"",
        "kubernetes.io/hostname",
        "zone",
        "node-a",
    ],
    make: || {
        let sets = label_sets();
        Box::new(move |input| {
            let Ok(text) = std::str::from_utf8(input) else {
                return "not-utf8".into();
            };
            match Selector::parse(text) {
                Ok(sel) => {
                    let matched: Vec<bool> = sets.iter().map(|l| sel.matches(l)).collect();
                    // The printed form is what `pool list` shows and what a round trip through
                    // a datastore keeps: it must mean the same thing.
                    let printed = sel.to_string();
                    match Selector::parse(&printed) {
                        Ok(again) => {
                            let again_matched: Vec<bool> =
                                sets.iter().map(|l| again.matches(l)).collect();
                            assert_eq!(
                                matched, again_matched,
                                "{text:?} printed as {printed:?} matches differently"
                            );
                        }
                        Err(e) => panic!("{text:?} printed as {printed:?}, which fails: {e}"),
                    }
                    format!("ok:{matched:?}")
                }
                Err(e) => signature("err", &e.message),
            }
        })
    },
};
