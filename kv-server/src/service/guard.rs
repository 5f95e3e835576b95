//! The one rule of every long-lived stream (Watch, Pipeline, and any added
//! later): nothing is delivered unless the caller's credentials still hold
//! and the project the stream is tied to is still the incarnation it was
//! opened on.
//!
//! A stream checks before each event or frame it delivers, and also the
//! moment a token or project changes anywhere (the catalog's change
//! signal), so a stream idle when its token is revoked or its project
//! deleted ends at once rather than at its next event. Deletion is checked
//! first: a deleted project's tokens are gone too, and its streams should
//! hear that the project went (NOT_FOUND), not merely that their token is
//! unknown.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tonic::{Status, metadata::MetadataMap};

use super::shared::{Scope, project_deleted};
use kv_engine::Backend;

use crate::auth::{Access, Auth, Caller};

/// What a stream re-checks, and the signal that tells it when.
pub(crate) struct StreamGuard {
    auth: Arc<Auth>,
    metadata: MetadataMap,
    /// The project the stream is tied to, with the incarnation it opened on.
    bound: Option<Scope>,
    /// What the stream needs of its bound project.
    access: Access,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The catalog generation the last successful check saw.
    checked: AtomicU64,
}

impl StreamGuard {
    /// A guard for a stream opened with `metadata`, tied to `bound` (if
    /// any), needing `access` to it. Changes from now on wake
    /// [`StreamGuard::changed`].
    pub(crate) fn new(
        auth: Arc<Auth>,
        metadata: MetadataMap,
        bound: Option<Scope>,
        access: Access,
    ) -> Self {
        let mut changes = auth.changes();
        let generation = *changes.borrow_and_update();
        Self {
            auth,
            metadata,
            bound,
            access,
            changes,
            checked: AtomicU64::new(generation),
        }
    }

    /// The project the stream is tied to.
    pub(crate) fn bound(&self) -> Option<&Scope> {
        self.bound.as_ref()
    }

    /// The stream's credentials and project, now.
    ///
    /// # Errors
    ///
    /// The status the stream must end with: NOT_FOUND when its project was
    /// deleted, UNAUTHENTICATED or PERMISSION_DENIED when its credentials
    /// no longer admit it.
    pub(crate) fn check<B: Backend>(&self, backend: &B) -> Result<Caller, Status> {
        // Read before checking: a change after this read makes the next
        // `recheck` look again.
        let generation = *self.changes.borrow();
        if let Some(scope) = &self.bound
            && backend.incarnation(&scope.project) != scope.incarnation
        {
            return Err(project_deleted(&scope.project));
        }
        let caller = self.auth.caller_of(&self.metadata)?;
        if self.bound.is_some() {
            caller.project(&self.metadata, None, self.access)?;
        }
        self.checked.store(generation, Ordering::Release);
        Ok(caller)
    }

    /// [`StreamGuard::check`] again only if a token or project changed
    /// since the last check: one atomic read otherwise, cheap enough to do
    /// before every call a stream runs.
    ///
    /// # Errors
    ///
    /// As [`StreamGuard::check`].
    pub(crate) fn recheck<B: Backend>(&self, backend: &B) -> Result<(), Status> {
        if *self.changes.borrow() == self.checked.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check(backend).map(|_| ())
    }

    /// Resolves when a token or project has changed since the last call:
    /// time for [`StreamGuard::check`]. Never resolves once the catalog is
    /// gone (the server is stopping, and ends streams by itself).
    pub(crate) async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
