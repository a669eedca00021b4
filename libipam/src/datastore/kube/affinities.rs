//! BlockAffinities: this host's label-selected listing (kept in the node cache with no expiry,
//! see `cache.rs`), CAS writes that keep that copy in step, and Calico's `UpgradeHost`
//! labelling of old affinities.

use ipnet::IpNet;
use kube::api::ListParams;

use super::KubeStore;
use super::decode::versioned;
use super::objects::{self, BLOCK_AFFINITY, Crd};
use crate::datastore::{DatastoreError, DsResult, Revision, Versioned};
use crate::model::{AffinityType, BlockAffinity};
use crate::names;

impl KubeStore {
    /// Keeps the cached affinity list in step with a write of one of its affinities: the
    /// written version (`Ok(Some)`), gone (`Ok(None)`), or unknown after a failure (the list is
    /// dropped and read again next time).
    pub(super) fn remember_affinity(
        &self,
        a: &BlockAffinity,
        outcome: Result<Option<&Versioned<BlockAffinity>>, &DatastoreError>,
    ) {
        if let Some(mut c) = self.cache() {
            match outcome {
                Ok(written) => c.put_affinity(a, written),
                Err(_) => c.forget_affinities(),
            }
        }
    }

    /// Calico's `UpgradeHost`: gives `host`'s BlockAffinities written before Calico v3.31 (no
    /// `projectcalico.org/affinity-type` label) the three labels the label-selected listing
    /// needs, leaving other labels alone. Only `host`'s own affinities are touched, so nodes
    /// doing this at the same time do not fight. A write that loses a race re-lists and tries
    /// again (a few times); an affinity deleted meanwhile needs nothing. Returns how many were
    /// labelled.
    ///
    /// The IPAM plugin runs this once per node and records that it did (see calico-ipam).
    pub async fn upgrade_host(&self, host: &str) -> DsResult<usize> {
        const ATTEMPTS: usize = 5;
        let selector = format!("!{}", names::LABEL_AFFINITY_TYPE);
        let group = self.api_group().await?;
        let mut upgraded = 0;
        for attempt in 0..ATTEMPTS {
            // Calico's selector: only what lacks the label, so the answer does not grow with
            // the cluster once it is upgraded (the unlabelled ones cannot be narrowed to this
            // host: the host's labels are what is missing). The first listing comes from the
            // API server's watch cache (`resourceVersion=0`, no etcd read): an affinity of this
            // host written unlabelled moments ago could only come from an old Calico on this
            // node, which no longer runs. A retry after a lost race lists consistently.
            let mut lp = ListParams::default().labels(&selector);
            if attempt == 0 {
                lp = lp.at("0");
            }
            let unlabeled: Vec<Crd<BlockAffinity>> = self.list_obj(&BLOCK_AFFINITY, &lp).await?;
            let mut lost_race = false;
            for obj in unlabeled {
                if obj.spec.node != host || obj.spec.deleted {
                    continue;
                }
                let mut meta = obj.metadata.clone();
                let mut labels = meta.labels.take().unwrap_or_default();
                labels.extend(obj.spec.labels());
                meta.labels = Some(labels);
                let updated = objects::object(group, &BLOCK_AFFINITY, meta, obj.spec.clone());
                match self.replace_obj(&BLOCK_AFFINITY, &updated).await {
                    Ok(_) => upgraded += 1,
                    Err(DatastoreError::NotFound) => {}
                    Err(DatastoreError::Conflict) => lost_race = true,
                    Err(e) => return Err(e),
                }
            }
            if !lost_race {
                if upgraded > 0
                    && let Some(mut c) = self.cache()
                {
                    // The labelled listing the cache holds may lack them.
                    c.forget_affinities();
                }
                return Ok(upgraded);
            }
        }
        Err(DatastoreError::Conflict)
    }
}

/// The node cache's copy of `host`'s affinity list (no expiry), when the cache is `host`'s.
pub(super) fn cached_host(store: &KubeStore, host: &str) -> Option<Vec<Versioned<BlockAffinity>>> {
    store
        .cache()
        .filter(|c| c.node() == host)
        .and_then(|c| c.affinities())
}

/// One label-selected LIST (`projectcalico.org/hostname-hash`, type `host`) for both
/// families, as Calico v3.31+ selects them. Always a read; the node cache keeps the result.
pub(super) async fn list_host(
    store: &KubeStore,
    host: &str,
) -> DsResult<Vec<Versioned<BlockAffinity>>> {
    let cache_is_for_host = store.cache().is_some_and(|c| c.node() == host);
    let selector = format!(
        "{}={},{}={}",
        names::LABEL_HOSTNAME_HASH,
        names::hostname_hash(host),
        names::LABEL_AFFINITY_TYPE,
        AffinityType::Host.as_str()
    );
    let listed: Vec<Crd<BlockAffinity>> = store
        .list_obj(&BLOCK_AFFINITY, &ListParams::default().labels(&selector))
        .await?;
    let mine: Vec<Versioned<BlockAffinity>> = listed
        .into_iter()
        .filter(|o| {
            o.spec.node == host && o.spec.affinity_type == AffinityType::Host && !o.spec.deleted
        })
        .map(versioned)
        .collect();
    if cache_is_for_host && let Some(mut c) = store.cache() {
        c.set_affinities(&mine);
    }
    Ok(mine)
}

pub(super) async fn list(store: &KubeStore) -> DsResult<Vec<Versioned<BlockAffinity>>> {
    let listed: Vec<Crd<BlockAffinity>> = store
        .list_obj(&BLOCK_AFFINITY, &ListParams::default())
        .await?;
    Ok(listed
        .into_iter()
        .filter(|o| !o.spec.deleted)
        .map(versioned)
        .collect())
}

pub(super) async fn get(
    store: &KubeStore,
    host: &str,
    cidr: &IpNet,
) -> DsResult<Option<Versioned<BlockAffinity>>> {
    store
        .get_live::<BlockAffinity>(&BLOCK_AFFINITY, &names::affinity_name(host, cidr))
        .await
}

pub(super) async fn create(store: &KubeStore, affinity: &BlockAffinity) -> DsResult<Revision> {
    let group = store.api_group().await?;
    let obj = objects::object(
        group,
        &BLOCK_AFFINITY,
        objects::ipam_meta(group, &affinity.name(), None, Some(affinity.labels())),
        affinity.clone(),
    );
    let created = store.create_obj(&BLOCK_AFFINITY, &obj).await.map(versioned);
    store.remember_affinity(affinity, created.as_ref().map(Some));
    Ok(created?.revision)
}

pub(super) async fn update(
    store: &KubeStore,
    affinity: &Versioned<BlockAffinity>,
) -> DsResult<Revision> {
    let a = &affinity.value;
    let group = store.api_group().await?;
    let obj = objects::object(
        group,
        &BLOCK_AFFINITY,
        objects::ipam_meta(group, &a.name(), Some(&affinity.revision), Some(a.labels())),
        a.clone(),
    );
    let written = store
        .replace_obj(&BLOCK_AFFINITY, &obj)
        .await
        .map(versioned);
    store.remember_affinity(a, written.as_ref().map(Some));
    Ok(written?.revision)
}

pub(super) async fn delete(store: &KubeStore, affinity: &Versioned<BlockAffinity>) -> DsResult<()> {
    let a = &affinity.value;
    let deleted = store
        .delete_at::<BlockAffinity>(&BLOCK_AFFINITY, &a.name(), &affinity.revision)
        .await;
    store.remember_affinity(a, deleted.as_ref().map(|()| None));
    deleted
}
