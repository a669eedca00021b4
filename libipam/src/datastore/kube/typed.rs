//! Typed access to Calico's objects: one request each, kube errors mapped to datastore errors
//! (`Connection::error`), and Calico's two-step delete finished by the reads.

use std::fmt::Debug;

use kube::api::{Api, ApiResource, DeleteParams, ListParams, PostParams, Preconditions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::KubeStore;
use super::api_group;
use super::decode::versioned;
use super::objects::{self, Crd, Kind, SoftDelete};
use crate::datastore::{DatastoreError, DsResult, Revision, Versioned};

impl KubeStore {
    pub(super) async fn resource(&self, kind: &Kind) -> DsResult<ApiResource> {
        Ok(kind.resource(self.api_group().await?))
    }

    pub(super) async fn api<S: Clone + DeserializeOwned + Debug>(
        &self,
        kind: &Kind,
    ) -> DsResult<Api<Crd<S>>> {
        Ok(Api::all_with(
            self.conn.client.clone(),
            &self.resource(kind).await?,
        ))
    }

    /// `obj` as its group stores it (`objects::wire_spec`), for a create or an update; the
    /// answer decoded back into the model.
    pub(super) async fn wire<S>(
        &self,
        kind: &Kind,
        obj: &Crd<S>,
    ) -> DsResult<(Api<Crd<Value>>, Crd<Value>)>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let group = self.api_group().await?;
        let spec = serde_json::to_value(&obj.spec)
            .map_err(|e| DatastoreError::Other(format!("encode {}: {e}", kind.kind)))?;
        let out = objects::object(
            group,
            kind,
            obj.metadata.clone(),
            objects::wire_spec(group, kind, spec),
        );
        Ok((
            Api::all_with(self.conn.client.clone(), &kind.resource(group)),
            out,
        ))
    }

    /// The error of a LIST or a create: a 404 there means that the server has no such
    /// resource in the group in use (the CRDs of that group are not installed), which is said
    /// so; anything else as [`Connection::error`].
    pub(super) fn list_or_create_error(
        &self,
        kind: &Kind,
        what: &str,
        e: kube::Error,
    ) -> DatastoreError {
        let kube::Error::Api(s) = &e else {
            return self.conn.error(what, e);
        };
        if s.code != 404 {
            return self.conn.error(what, e);
        }
        let group = self.conn.group_cell().known().unwrap_or_default();
        if !self.conn.group_cell().is_explicit() {
            // Found by discovery, and not served now: the next process asks again.
            api_group::forget(&self.conn.server);
            if let Some(mut c) = self.cache() {
                c.forget_api_group();
            }
        }
        let (_, plural) = kind.names(group);
        DatastoreError::Other(format!(
            "{what}: API server {} does not serve {plural}.{} ({group}): Calico's {group} CRDs \
             are not installed{}",
            self.conn.server,
            group.group(),
            if self.conn.group_cell().is_explicit() {
                "; calico_api_group (or CALICO_API_GROUP) names this group: is it the right one?"
            } else {
                ""
            }
        ))
    }

    pub(super) fn err(
        &self,
        what: impl AsRef<str>,
    ) -> impl FnOnce(kube::Error) -> DatastoreError + '_ {
        let what = what.as_ref().to_owned();
        move |e| self.conn.error(&what, e)
    }

    pub(super) async fn get_obj<S>(&self, kind: &Kind, name: &str) -> DsResult<Option<Crd<S>>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        self.api::<S>(kind)
            .await?
            .get_opt(name)
            .await
            .map_err(self.err(format!("read {} {name}", kind.kind)))
    }

    pub(super) async fn create_obj<S>(&self, kind: &Kind, obj: &Crd<S>) -> DsResult<Crd<S>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let (api, body) = self.wire(kind, obj).await?;
        let created = match api.create(&PostParams::default(), &body).await {
            Ok(c) => c,
            Err(e) => {
                return Err(self.list_or_create_error(
                    kind,
                    &format!("create {} {name}", kind.kind),
                    e,
                ));
            }
        };
        decoded(kind, created)
    }

    /// PUT; carries `obj.metadata.resourceVersion`, so a stale copy fails with `Conflict`.
    pub(super) async fn replace_obj<S>(&self, kind: &Kind, obj: &Crd<S>) -> DsResult<Crd<S>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let (api, body) = self.wire(kind, obj).await?;
        let written = api
            .replace(&name, &PostParams::default(), &body)
            .await
            .map_err(self.err(format!("update {} {name}", kind.kind)))?;
        decoded(kind, written)
    }

    pub(super) async fn list_obj<S>(&self, kind: &Kind, lp: &ListParams) -> DsResult<Vec<Crd<S>>>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        match self.api::<S>(kind).await?.list(lp).await {
            Ok(l) => Ok(l.items),
            Err(e) => Err(self.list_or_create_error(kind, &format!("list {}", kind.plural), e)),
        }
    }

    /// The second half of a two-step delete: DELETE guarded by the UID, so a recreated object
    /// of the same name is never removed. Already gone (or already replaced) is fine.
    pub(super) async fn delete_uid<S>(
        &self,
        kind: &Kind,
        name: &str,
        uid: Option<String>,
    ) -> DsResult<()>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api::<S>(kind).await?.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) => match self.conn.error(&format!("delete {} {name}", kind.kind), e) {
                DatastoreError::NotFound | DatastoreError::Conflict => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Compare-and-delete: a DELETE with a `resourceVersion` precondition, refused with
    /// `Conflict` when `revision` is stale and `NotFound` when the object is gone, like a
    /// compare-and-swap update. One request (Calico marks the object `deleted` first, then
    /// deletes it; its readers, and ours, see an object deleted either way as absent).
    pub(super) async fn delete_at<S>(
        &self,
        kind: &Kind,
        name: &str,
        revision: &Revision,
    ) -> DsResult<()>
    where
        S: Clone + Serialize + DeserializeOwned + Debug,
    {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: None,
                resource_version: Some(revision.0.clone()),
            }),
            ..DeleteParams::default()
        };
        self.api::<S>(kind)
            .await?
            .delete(name, &dp)
            .await
            .map(|_| ())
            .map_err(self.err(format!("delete {} {name}", kind.kind)))
    }

    /// A read of an IPAM object: `deleted: true` counts as absent, and the delete it started
    /// is finished.
    pub(super) async fn get_live<S>(
        &self,
        kind: &Kind,
        name: &str,
    ) -> DsResult<Option<Versioned<S>>>
    where
        S: SoftDelete + Clone + Serialize + DeserializeOwned + Debug,
    {
        match self.get_obj::<S>(kind, name).await? {
            Some(obj) if obj.spec.is_deleted() => {
                self.delete_uid::<S>(kind, name, obj.metadata.uid).await?;
                Ok(None)
            }
            Some(obj) => Ok(Some(versioned(obj))),
            None => Ok(None),
        }
    }

    /// Forgets a cached copy after a failed write (it was stale, or the write's outcome is
    /// unknown), so the retry reads the object again.
    pub(super) fn forget_on_error<T>(&self, r: &DsResult<T>, forget: impl FnOnce()) {
        if r.is_err() {
            forget();
        }
    }
}

/// An object as the server answered a write, decoded into the model (`Crd<S>`).
fn decoded<S: DeserializeOwned + Clone>(kind: &Kind, obj: Crd<Value>) -> DsResult<Crd<S>> {
    let spec = serde_json::from_value(obj.spec).map_err(|e| {
        DatastoreError::Other(format!("unexpected {} from the API server: {e}", kind.kind))
    })?;
    Ok(Crd {
        types: obj.types,
        metadata: obj.metadata,
        spec,
        status: obj.status,
    })
}
