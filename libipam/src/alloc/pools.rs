//! Which pools a request may use (Calico's `determinePools` + `filterPoolsByUse`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{IpamError, Result};
use crate::model::{AllowedUse, AssignmentMode, IpFamily, IpPool};
use crate::selector::Selector;
use crate::validate;

/// A stored pool that passed validation, with its fields parsed.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
    pub disabled: bool,
    pub node_selector: Selector,
    pub namespace_selector: Selector,
    pub allowed_uses: Vec<AllowedUse>,
    pub assignment_mode: AssignmentMode,
}

impl Pool {
    /// Parses a stored pool (defaults applied). A pool that fails validation (a selector that
    /// does not parse, a bad CIDR: written straight to the datastore, never through
    /// `pool apply`) cannot be allocated from and is left out; the error says why.
    pub fn from_stored(pool: &IpPool) -> std::result::Result<Pool, String> {
        let pool = pool.clone().with_defaults();
        validate::validate_pool(&pool).map_err(|e| e.to_string())?;
        let spec = &pool.spec;
        let invalid = || {
            format!(
                "pool cidr {:?} / blockSize {:?} is not usable",
                spec.cidr, spec.block_size
            )
        };
        let cidr = pool.cidr().ok_or_else(invalid)?;
        let block_size = spec
            .block_size
            .and_then(|b| u8::try_from(b).ok())
            .filter(|b| *b >= cidr.prefix_len())
            .ok_or_else(invalid)?;
        let selector = |field: &str, s: &Option<String>| {
            Selector::parse(s.as_deref().unwrap_or("")).map_err(|e| format!("{field}: {e}"))
        };
        Ok(Pool {
            name: pool.name.clone(),
            cidr,
            block_size,
            disabled: spec.disabled,
            node_selector: selector("nodeSelector", &spec.node_selector)?,
            namespace_selector: selector("namespaceSelector", &spec.namespace_selector)?,
            allowed_uses: spec.allowed_uses(),
            assignment_mode: spec.assignment_mode(),
        })
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    /// The block of this pool containing `ip`.
    pub fn block_for(&self, ip: IpAddr) -> IpNet {
        IpNet::new(ip, self.block_size)
            .map(|n| n.trunc())
            .unwrap_or(self.cidr)
    }

    pub fn allows(&self, use_: AllowedUse) -> bool {
        self.allowed_uses.contains(&use_)
    }

    /// The allowed uses as Calico's messages print them (Go's `%v` of a slice):
    /// `[Workload Tunnel]`.
    pub fn uses_string(&self) -> String {
        let uses: Vec<&str> = self.allowed_uses.iter().map(|u| u.as_str()).collect();
        format!("[{}]", uses.join(" "))
    }
}

/// A range no pool may allocate in: the CIDR of a pool that is left out because it cannot be
/// read or does not validate. Its blocks still hold the addresses allocated from it, and it
/// may be disabled, reserved for some nodes, or about to be fixed; another pool over the same
/// range (written past validation, or applied while this one could not be read) must not hand
/// them out.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    pub cidr: IpNet,
    pub pool: String,
    pub why: String,
}

/// The pools as the allocator uses them.
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolSet {
    /// The pools that decode and validate, in name order.
    pub usable: Vec<Pool>,
    /// The CIDRs of the others, where they can be read.
    pub fenced: Vec<Fence>,
    /// The others, by name, with why.
    pub ignored: BTreeMap<String, String>,
}

impl PoolSet {
    pub fn from_list(listed: crate::datastore::PoolList) -> PoolSet {
        let mut set = PoolSet::default();
        let mut stored = listed.pools;
        stored.sort_by(|a, b| a.name.cmp(&b.name));
        for pool in &stored {
            match Pool::from_stored(pool) {
                Ok(p) => set.usable.push(p),
                Err(why) => {
                    let why = format!("does not validate: {why}");
                    if let Some(cidr) = pool.cidr().map(|c| c.trunc()) {
                        set.fenced.push(Fence {
                            cidr,
                            pool: pool.name.clone(),
                            why: why.clone(),
                        });
                    }
                    set.ignored.insert(pool.name.clone(), why);
                }
            }
        }
        for u in listed.unreadable {
            let why = format!("cannot be read ({}: {})", u.object, u.reason);
            if let Some(cidr) = u.cidr {
                set.fenced.push(Fence {
                    cidr,
                    pool: u.name.clone(),
                    why: why.clone(),
                });
            }
            set.ignored.insert(u.name, why);
        }
        set
    }

    /// The fence holding `ip`, if any.
    pub fn fence_of(&self, ip: IpAddr) -> Option<&Fence> {
        self.fenced.iter().find(|f| f.cidr.contains(&ip))
    }
}

/// Resolves requested pool names or CIDRs against every stored pool (so a disabled or
/// wrong-family pool gives a precise error).
pub(crate) fn resolve_requested<'a>(
    set: &'a PoolSet,
    requested: &[String],
    family: IpFamily,
) -> Result<Vec<&'a Pool>> {
    let all = &set.usable;
    let list = match family {
        IpFamily::V4 => "ipv4_pools",
        IpFamily::V6 => "ipv6_pools",
    };
    requested
        .iter()
        .map(|want| {
            // A CIDR names its network, as in Calico: `10.0.0.5/24` is pool `10.0.0.0/24`,
            // and an error names the network too.
            let as_cidr = want.trim().parse::<IpNet>().ok().map(|c| c.trunc());
            let shown = as_cidr.map_or_else(|| want.clone(), |c| c.to_string());
            let found = all
                .iter()
                .find(|p| as_cidr == Some(p.cidr.trunc()) || p.name == *want);
            let Some(pool) = found else {
                // A pool that is there but left out says why.
                let ignored = set
                    .ignored
                    .get(want)
                    .map(|why| (want.clone(), why))
                    .or_else(|| {
                        set.fenced
                            .iter()
                            .find(|f| as_cidr == Some(f.cidr))
                            .map(|f| (f.pool.clone(), &f.why))
                    });
                return Err(match ignored {
                    Some((name, why)) => IpamError::PoolUnusable {
                        pool: shown,
                        name,
                        why: why.clone(),
                    },
                    None => IpamError::PoolNotFound { pool: shown },
                });
            };
            if pool.family() != family {
                return Err(IpamError::WrongFamilyPool {
                    list,
                    cidr: pool.cidr,
                    actual: pool.family(),
                });
            }
            if pool.disabled {
                return Err(IpamError::PoolNotFound { pool: shown });
            }
            Ok(pool)
        })
        .collect()
}

/// Everything pool selection depends on.
pub(crate) struct Selection<'a> {
    pub family: IpFamily,
    pub requested: &'a [String],
    pub node_labels: &'a BTreeMap<String, String>,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub intended_use: AllowedUse,
    pub host: &'a str,
}

/// The pools to allocate from, in order: requested pools as given (selectors ignored), else
/// every enabled automatic pool selecting this node and namespace, in name order; then only
/// those allowing the intended use.
pub(crate) fn determine_pools<'a>(set: &'a PoolSet, sel: &Selection<'_>) -> Result<Vec<&'a Pool>> {
    let all = &set.usable;
    let enabled: Vec<&Pool> = all
        .iter()
        .filter(|p| !p.disabled && p.family() == sel.family)
        .collect();
    let candidates = if !sel.requested.is_empty() {
        resolve_requested(set, sel.requested, sel.family)?
    } else {
        if enabled.is_empty() {
            return Err(IpamError::NoQualifiedPool {
                reason: format!("there is no enabled {} pool", sel.family),
            });
        }
        let selected: Vec<&Pool> = enabled
            .into_iter()
            .filter(|p| {
                p.assignment_mode == AssignmentMode::Automatic
                    && p.node_selector.matches(sel.node_labels)
                    && p.namespace_selector.matches(sel.namespace_labels)
            })
            .collect();
        if selected.is_empty() {
            return Err(IpamError::NoPoolsForNode {
                host: sel.host.to_owned(),
                family: sel.family,
            });
        }
        selected
    };
    let usable: Vec<&Pool> = candidates
        .into_iter()
        .filter(|p| p.allows(sel.intended_use))
        .collect();
    if usable.is_empty() {
        return Err(IpamError::NoQualifiedPool {
            reason: format!(
                "no {} pools match the required use {}",
                sel.family, sel.intended_use
            ),
        });
    }
    Ok(usable)
}
