//! What calico-ipam's ADD reads before it waits for the host-wide IPAM lock, and how the store
//! it opens under the lock answers from that.
//!
//! The API server answers a consistent LIST from its watch cache only once the cache has
//! caught up with etcd's latest revision; right after a write to another kind (the previous
//! ADD's blocks) the cache of the listed kind learns that revision only from etcd's next
//! progress notification, so the LIST takes 50-80 ms instead of 2. Under the lock that wait
//! is paid by every queued ADD in turn; before it, the waits of all of them overlap, and the
//! LISTs of one request overlap each other.
//!
//! Read ahead: the IPPools (every ADD: they are never cached), and with `configs` the
//! IPAMConfig and the IPReservations when the node cache holds no fresh copy (past its TTL,
//! with a zero TTL, on a node's first ADD; calico-ipam asks for them unless another ADD holds
//! the lock, which refreshes them first). Each answers the store's next read of its kind,
//! once; the configuration objects then go into the node cache dated when their read began,
//! so their TTL counts from then. Nothing read ahead is older than the request, which is all the
//! freshness rules ask (DESIGN.md, "Node cache"). The node cache file is only peeked at
//! (it is replaced whole, so an unlocked read sees one version of it): for the API group and
//! for what is fresh in it.

use super::cache::now_ms;
use super::{CacheConfig, Connection, KubeStore, NodeCache, api_group, pools, settings};
use crate::datastore::{DsResult, PoolList};
use crate::model::{IpReservation, IpamConfig};

/// What one request read before it took the host-wide lock ([`read_ahead`]).
#[derive(Debug, Default)]
pub struct ReadAhead {
    pub(super) pools: Option<PoolList>,
    /// The IPAMConfig (`None` inside: there is none) and when its read began (ms).
    pub(super) config: Option<(u64, Option<IpamConfig>)>,
    /// The IPReservations and when their read began (ms).
    pub(super) reservations: Option<(u64, Vec<IpReservation>)>,
}

/// Reads ahead for an ADD that is about to wait for the host-wide lock (or took it at once:
/// then the reads only overlap each other), on `conn`, which the ADD then keeps
/// ([`KubeStore::with_read_ahead`]). Where the group is not known yet (a node's
/// first ADDs, all at once), the IPPool LIST is tried on `crd.projectcalico.org/v1`, which
/// answers the question as well, so that each of them does not ask it on its own
/// (`api_group.rs`). A failed read of the configuration objects is left to the read under the
/// lock, which reports it; a failed LIST of the pools is the ADD's error.
pub async fn read_ahead(
    conn: &Connection,
    cache: &CacheConfig,
    configs: bool,
) -> DsResult<ReadAhead> {
    let peek = NodeCache::load(cache, &conn.server);
    if conn.group_cell().known().is_none()
        && let Some(g) = peek
            .api_group()
            .or_else(|| api_group::found_earlier(&conn.server))
    {
        conn.group_cell().seed(g);
    }
    let listed_on_v1 = match conn.group_cell().known() {
        None => pools::list_if_v1_served(conn).await?,
        Some(_) => None,
    };
    let store = KubeStore::new(conn.clone());
    let at = now_ms();
    let (pools, config, reservations) = tokio::join!(
        async {
            match listed_on_v1 {
                Some(p) => Ok(p),
                None => pools::list(&store).await,
            }
        },
        async {
            match peek.config() {
                None if configs => settings::fetch_config(&store).await.ok(),
                _ => None,
            }
        },
        async {
            match peek.reservations() {
                None if configs => settings::fetch_reservations(&store).await.ok(),
                _ => None,
            }
        },
    );
    Ok(ReadAhead {
        pools: Some(pools?),
        config: config.map(|c| (at, c)),
        reservations: reservations.map(|r| (at, r)),
    })
}

impl KubeStore {
    /// What this request read before it took the lock ([`read_ahead`]) answers the store's
    /// next reads of those kinds, once each.
    pub fn with_read_ahead(self, ahead: ReadAhead) -> KubeStore {
        *self.ahead.lock().unwrap_or_else(|p| p.into_inner()) = ahead;
        self
    }

    /// Takes one thing read ahead (`f` picks it).
    pub(super) fn take_ahead<T>(&self, f: impl FnOnce(&mut ReadAhead) -> Option<T>) -> Option<T> {
        f(&mut self.ahead.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
