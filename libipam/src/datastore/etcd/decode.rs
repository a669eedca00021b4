//! Stored values to versioned objects: a key's value decoded by `keys`, with the key's mod
//! revision. An object another writer marked `deleted: true` (Calico's soft delete) reads as
//! absent, and the reader finishes that delete at the revision it read (`finish_delete`),
//! whether or not that works.

use etcd_client::KeyValue;

use super::kv::{key_str, revision};
use super::{EtcdStore, keys};
use crate::datastore::{DatastoreError, DsResult, Versioned};
use crate::model::{BlockAffinity, IpamBlock, IpamHandle};

impl EtcdStore {
    /// Finishes another writer's soft delete: deletes the key at the revision it was read at.
    /// Whether that works does not matter to the reader (the object is absent to it either way).
    pub(super) async fn finish_delete(&self, kv: &KeyValue) {
        let key = key_str(kv);
        if let Err(e) = self.delete(&key, &revision(kv)).await {
            tracing::debug!("finishing the delete of {key}: {e}");
        }
    }

    pub(super) fn undecodable(&self, key: &str, e: String) -> DatastoreError {
        DatastoreError::Other(format!(
            "{}: {key} cannot be decoded: {e}",
            self.conn.server
        ))
    }

    pub(super) fn block_of(&self, kv: &KeyValue) -> DsResult<Versioned<IpamBlock>> {
        let key = key_str(kv);
        let value = keys::decode_block(kv.value()).map_err(|e| self.undecodable(&key, e))?;
        Ok(Versioned {
            value,
            revision: revision(kv),
        })
    }

    /// The block read, unless absent or soft-deleted (then deleted).
    pub(super) async fn live_block(
        &self,
        kv: Option<KeyValue>,
    ) -> DsResult<Option<Versioned<IpamBlock>>> {
        let Some(kv) = kv else {
            return Ok(None);
        };
        let block = self.block_of(&kv)?;
        if block.value.deleted {
            self.finish_delete(&kv).await;
            return Ok(None);
        }
        Ok(Some(block))
    }

    pub(super) fn affinity_of(&self, kv: &KeyValue) -> DsResult<Option<Versioned<BlockAffinity>>> {
        let key = key_str(kv);
        let Some((t, node, cidr)) = keys::parse_affinity_key(&key) else {
            return Ok(None);
        };
        let value = keys::decode_affinity(t, &node, cidr, kv.value())
            .map_err(|e| self.undecodable(&key, e))?;
        Ok(Some(Versioned {
            value,
            revision: revision(kv),
        }))
    }

    pub(super) fn handle_of(&self, kv: &KeyValue) -> DsResult<Option<Versioned<IpamHandle>>> {
        let key = key_str(kv);
        let Some(id) = keys::parse_handle_key(&key) else {
            return Ok(None);
        };
        let value = keys::decode_handle(id, kv.value()).map_err(|e| self.undecodable(&key, e))?;
        Ok(Some(Versioned {
            value,
            revision: revision(kv),
        }))
    }

    /// The live affinities under `prefix`; soft-deleted ones are deleted.
    pub(super) async fn affinities_under(
        &self,
        prefix: &str,
    ) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        self.live_affinities(self.list(prefix, false).await?).await
    }

    /// The live affinities of a listing; soft-deleted ones are deleted.
    pub(super) async fn live_affinities(
        &self,
        kvs: Vec<KeyValue>,
    ) -> DsResult<Vec<Versioned<BlockAffinity>>> {
        let mut out = Vec::new();
        for kv in kvs {
            if let Some(a) = self.affinity_of(&kv)? {
                if a.value.deleted {
                    self.finish_delete(&kv).await;
                } else {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }
}
