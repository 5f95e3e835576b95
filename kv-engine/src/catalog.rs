//! The catalog: registered projects with their quotas, and access tokens.
//! Durable like the data (the same log and snapshots), kept in memory.

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
};

use super::{Applied, Quota, memory::MemoryStore};
use crate::project::ProjectName;

/// A project access token as stored: never the secret, only its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenMeta {
    /// Public identifier (also part of the token string).
    pub id: String,
    /// The one project the token gives access to.
    pub project: ProjectName,
    /// Reads only.
    pub read_only: bool,
    /// SHA-256 of the secret part.
    pub secret_sha256: [u8; 32],
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// The token's own rate limits, on top of its project's.
    pub limits: TokenLimits,
}

/// Rate limits of one token, applied on top of its project's: a call made
/// with the token is admitted only if both admit it. `None` or `Some(0)`:
/// no limit of the token's own (the project's still holds). Enforced by
/// the service in front of the engine, not by the engine.
///
/// ```
/// use kv_engine::catalog::TokenLimits;
/// assert!(TokenLimits::default().is_unlimited());
/// assert!(TokenLimits { ops_per_second: Some(0), ..TokenLimits::default() }.is_unlimited());
/// assert!(!TokenLimits { ops_per_second: Some(20), ..TokenLimits::default() }.is_unlimited());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// Most calls per one-second window made with the token.
    pub ops_per_second: Option<u64>,
    /// Most bytes written (keys plus encoded values) per one-second window
    /// with the token.
    pub write_bytes_per_second: Option<u64>,
}

impl TokenLimits {
    /// Whether neither limit restricts anything.
    pub fn is_unlimited(&self) -> bool {
        self.ops_per_second.unwrap_or(0) == 0 && self.write_bytes_per_second.unwrap_or(0) == 0
    }

    /// Whether either field is set (even to 0): such limits are stored.
    pub fn is_set(&self) -> bool {
        self.ops_per_second.is_some() || self.write_bytes_per_second.is_some()
    }
}

impl std::fmt::Debug for TokenMeta {
    // The hash is not a secret, but nothing derived from one is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMeta")
            .field("id", &self.id)
            .field("project", &self.project)
            .field("read_only", &self.read_only)
            .field("created_at_ms", &self.created_at_ms)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A change to the catalog, as the resulting state (replay is idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// The project exists with this quota.
    PutProject {
        /// The project.
        project: ProjectName,
        /// Its quota (absent fields: the server default).
        quota: Quota,
    },
    /// The project, its data and its tokens are gone.
    DeleteProject {
        /// The project.
        project: ProjectName,
    },
    /// The token exists.
    PutToken(TokenMeta),
    /// The token no longer exists.
    RevokeToken {
        /// The token's id.
        id: String,
    },
}

/// Registered projects and tokens.
#[derive(Debug)]
pub struct Catalog {
    projects: RwLock<BTreeMap<ProjectName, Quota>>,
    tokens: RwLock<HashMap<String, TokenMeta>>,
    /// Counts changes: open streams wait on it to re-check their
    /// credentials and project the moment anything changes, rather than
    /// polling.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            projects: RwLock::default(),
            tokens: RwLock::default(),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Poisoning cannot leave these maps half-updated: each change is one
    // insert or remove.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Catalog {
    /// Applies a change; returns whether it changed anything (a revoke of an
    /// unknown token does not).
    ///
    /// ```
    /// use kv_engine::{Quota, catalog::{Catalog, CatalogChange}};
    /// use kv_engine::project::ProjectName;
    /// let catalog = Catalog::default();
    /// let p = ProjectName::parse("shop").unwrap();
    /// catalog.apply(&CatalogChange::PutProject { project: p.clone(), quota: Quota::default() });
    /// assert!(catalog.project(&p).is_some());
    /// ```
    pub fn apply(&self, change: &CatalogChange) -> bool {
        let changed = self.apply_quietly(change);
        // Only a wake-up: skip it (and its lock) when no stream listens,
        // as during a replay.
        if self.generation.receiver_count() > 0 {
            self.generation.send_modify(|g| *g += 1);
        }
        changed
    }

    /// A receiver that changes whenever the catalog does (a token created
    /// or revoked, a project created, changed or deleted).
    ///
    /// ```
    /// use kv_engine::{Quota, catalog::{Catalog, CatalogChange}};
    /// use kv_engine::project::ProjectName;
    /// let catalog = Catalog::default();
    /// let mut changes = catalog.changes_receiver();
    /// catalog.apply(&CatalogChange::PutProject { project: ProjectName::parse("a").unwrap(), quota: Quota::default() });
    /// assert!(changes.has_changed().unwrap());
    /// ```
    pub fn changes_receiver(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn apply_quietly(&self, change: &CatalogChange) -> bool {
        match change {
            CatalogChange::PutProject { project, quota } => {
                write(&self.projects).insert(project.clone(), *quota);
                true
            }
            CatalogChange::DeleteProject { project } => {
                let existed = write(&self.projects).remove(project).is_some();
                write(&self.tokens).retain(|_, t| &t.project != project);
                existed
            }
            CatalogChange::PutToken(token) => {
                write(&self.tokens).insert(token.id.clone(), token.clone());
                true
            }
            CatalogChange::RevokeToken { id } => write(&self.tokens).remove(id).is_some(),
        }
    }

    /// The quota of a registered project.
    pub fn project(&self, project: &ProjectName) -> Option<Quota> {
        read(&self.projects).get(project).copied()
    }

    /// Every registered project and its quota, by name.
    pub fn projects(&self) -> Vec<(ProjectName, Quota)> {
        read(&self.projects)
            .iter()
            .map(|(p, q)| (p.clone(), *q))
            .collect()
    }

    /// The token with this id.
    pub fn token(&self, id: &str) -> Option<TokenMeta> {
        read(&self.tokens).get(id).cloned()
    }

    /// Tokens of `project`, or of every project, by id.
    pub fn tokens(&self, project: Option<&ProjectName>) -> Vec<TokenMeta> {
        let mut tokens: Vec<TokenMeta> = read(&self.tokens)
            .values()
            .filter(|t| project.is_none_or(|p| &t.project == p))
            .cloned()
            .collect();
        tokens.sort_by(|a, b| a.id.cmp(&b.id));
        tokens
    }

    /// The quota in force for `project`: its own fields where set, else
    /// `default`'s.
    pub fn effective_quota(&self, project: &ProjectName, default: Quota) -> Quota {
        match self.project(project) {
            Some(own) => own.or(default),
            None => default,
        }
    }

    /// Every change that recreates the current state (for snapshots).
    pub fn changes(&self) -> Vec<CatalogChange> {
        let mut changes: Vec<CatalogChange> = self
            .projects()
            .into_iter()
            .map(|(project, quota)| CatalogChange::PutProject { project, quota })
            .collect();
        changes.extend(self.tokens(None).into_iter().map(CatalogChange::PutToken));
        changes
    }
}

/// Applies a logged catalog change to memory and catalog (the log writer
/// and replay both come here, so they cannot disagree).
pub(crate) fn apply_logged(mem: &MemoryStore, catalog: &Catalog, change: CatalogChange) -> Applied {
    // The data goes first: the catalog change wakes open streams, which
    // must then find the project gone, not merely their token.
    let applied = match &change {
        CatalogChange::DeleteProject { project } => mem.delete_project(project),
        CatalogChange::PutProject { .. }
        | CatalogChange::PutToken(_)
        | CatalogChange::RevokeToken { .. } => Applied::default(),
    };
    catalog.apply(&change);
    applied
}
