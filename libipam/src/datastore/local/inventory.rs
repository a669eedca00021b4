//! `check`'s read of a local store: every object file on its own, so that one file that does
//! not decode, or whose name does not match what it holds, is reported by name instead of
//! failing the listing of its kind (the allocator's reads fail on it: every request that
//! needs it fails until it is fixed).

use serde::de::DeserializeOwned;

use super::{
    EnvelopeIn, LocalStore, NodeFile, affinity_path, block_path, file_stem, files, handle_path,
};
use crate::datastore::{DsResult, Inventory, Unusable, Versioned, unreadable_consequence};
use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle};

/// The files of one kind, decoded; the others reported.
struct Reader<'a> {
    store: &'a LocalStore,
    unusable: Vec<Unusable>,
}

impl Reader<'_> {
    fn unusable(&mut self, kind: &str, rel: &str, reason: String) {
        self.unusable.push(Unusable {
            object: format!("{kind} file {rel}"),
            reason,
        });
    }

    /// The object in `rel`, or `None` (reported) when it does not decode.
    fn read<T: DeserializeOwned>(
        &mut self,
        kind: &str,
        rel: &str,
    ) -> DsResult<Option<Versioned<T>>> {
        let data = match self.store.bytes(rel) {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(None), // Removed since it was listed.
            Err(e) => {
                self.unusable(
                    kind,
                    rel,
                    format!("cannot be read ({e}): {}", unreadable_consequence(kind)),
                );
                return Ok(None);
            }
        };
        match EnvelopeIn::<T>::decode(&data) {
            Ok(env) => Ok(Some(Versioned {
                value: env.value,
                revision: super::Revision(env.revision),
            })),
            Err(e) => {
                self.unusable(
                    kind,
                    rel,
                    format!("cannot be decoded ({e}): {}", unreadable_consequence(kind)),
                );
                Ok(None)
            }
        }
    }

    /// Every object of the directory `dir`, with its path.
    fn read_dir<T: DeserializeOwned>(
        &mut self,
        kind: &str,
        dir: &str,
    ) -> DsResult<Vec<(String, Versioned<T>)>> {
        let mut out = Vec::new();
        for stem in self.store.list_dir(dir)? {
            let rel = format!("{dir}/{stem}.json");
            if let Some(v) = self.read(kind, &rel)? {
                out.push((rel, v));
            }
        }
        Ok(out)
    }

    /// Whether an object keyed by its content lives where lookups by that key look; a
    /// misplaced one is reported.
    fn placed(&mut self, kind: &str, rel: &str, expected: &str, what: &str) -> bool {
        if rel == expected {
            return true;
        }
        self.unusable(
            kind,
            rel,
            format!("holds {what}, whose file is {expected}: lookups of it never find this file"),
        );
        false
    }
}

impl LocalStore {
    pub(super) fn read_inventory(&self) -> DsResult<Inventory> {
        let mut r = Reader {
            store: self,
            unusable: Vec::new(),
        };
        let config = r
            .read::<IpamConfig>("IPAMConfig", files::CONFIG)?
            .map(|v| v.value);
        let mut pools = Vec::new();
        for (rel, v) in r.read_dir::<IpPool>("IPPool", "pools")? {
            // Listed by directory, so the allocator uses it wherever it is; by name, it is
            // looked up (and replaced, deleted) in its own file.
            let expected = format!("pools/{}.json", file_stem(&v.value.name));
            r.placed(
                "IPPool",
                &rel,
                &expected,
                &format!("IPPool {}", v.value.name),
            );
            pools.push(v.value);
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let reservations = r
            .read_dir::<IpReservation>("IPReservation", "reservations")?
            .into_iter()
            .map(|(_, v)| v.value)
            .collect();
        // Node labels are read by every ADD on that node (pools' nodeSelector).
        r.read_dir::<NodeFile>("Node", "nodes")?;
        let mut blocks = Vec::new();
        for (rel, v) in r.read_dir::<IpamBlock>("IPAMBlock", "blocks")? {
            let what = format!("block {}", v.value.cidr);
            if r.placed("IPAMBlock", &rel, &block_path(&v.value.cidr), &what) && !v.value.deleted {
                blocks.push(v);
            }
        }
        let mut handles = Vec::new();
        for (rel, v) in r.read_dir::<IpamHandle>("IPAMHandle", "handles")? {
            let what = format!("handle {}", v.value.handle_id);
            if r.placed("IPAMHandle", &rel, &handle_path(&v.value.handle_id), &what)
                && !v.value.deleted
            {
                handles.push(v);
            }
        }
        let mut affinities = Vec::new();
        for host in files::affinity_hosts(&self.root)? {
            let dir = format!("{}/{host}", files::AFFINITIES);
            for (rel, v) in r.read_dir::<BlockAffinity>("BlockAffinity", &dir)? {
                let a: &BlockAffinity = &v.value;
                let what = format!("the affinity of {} for {}", a.node, a.cidr);
                if r.placed(
                    "BlockAffinity",
                    &rel,
                    &affinity_path(&a.node, &a.cidr),
                    &what,
                ) && !a.deleted
                {
                    affinities.push(v);
                }
            }
        }
        Ok(Inventory {
            config,
            pools,
            reservations,
            blocks,
            affinities,
            handles,
            unusable: r.unusable,
        })
    }
}
