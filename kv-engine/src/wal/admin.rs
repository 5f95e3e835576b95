//! Admin changes (projects, tokens): their conditions, judged by the log
//! writer in log order against everything before them.

use crate::{
    EngineError, Quota,
    catalog::{Catalog, CatalogChange, TokenMeta},
    memory::MemoryStore,
    project::ProjectName,
    txn::Overlay,
};

/// A change to the catalog of projects and tokens, with the condition
/// under which it applies. The writer judges the condition in log order,
/// against every change before it, so two concurrent admin calls can
/// never both pass a check that only one of them should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminChange {
    /// Registers `project`; [`EngineError::ProjectExists`] if it is. A name
    /// deleted before becomes a new incarnation sharing nothing with the
    /// old one; a name holding unregistered data (open mode) keeps it.
    CreateProject {
        /// The project.
        project: ProjectName,
        /// Its quota.
        quota: Quota,
    },
    /// Replaces a registered project's quota.
    SetQuota {
        /// The project.
        project: ProjectName,
        /// Its quota.
        quota: Quota,
    },
    /// Deletes a registered project: data, history, request ids, tokens.
    DeleteProject {
        /// The project.
        project: ProjectName,
    },
    /// Stores a token of a registered project, if the project is still
    /// the incarnation the caller saw ([`EngineError::ProjectGone`]
    /// otherwise: a token meant for a deleted project never opens its
    /// successor).
    CreateToken {
        /// The token.
        token: TokenMeta,
        /// The incarnation the token is for.
        incarnation: u64,
    },
    /// Removes a token (no error when unknown).
    RevokeToken {
        /// Its id.
        id: String,
    },
}

impl AdminChange {
    /// The project it changes; none for a token revocation, which names
    /// only the token.
    pub(super) fn project(&self) -> Option<&ProjectName> {
        match self {
            Self::CreateProject { project, .. }
            | Self::SetQuota { project, .. }
            | Self::DeleteProject { project } => Some(project),
            Self::CreateToken { token, .. } => Some(&token.project),
            Self::RevokeToken { .. } => None,
        }
    }
}

/// What an [`AdminChange`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdminOutcome {
    /// Live keys a deletion removed; 1 when a revoke removed a token.
    pub removed: u64,
    /// The project's incarnation after the change.
    pub incarnation: u64,
}

/// An admin change whose condition held, as what it logs and applies.
pub(super) struct Admitted {
    /// A new incarnation to start before the catalog change.
    pub(super) incarnation: Option<(ProjectName, u64)>,
    pub(super) change: CatalogChange,
    /// The project's incarnation after the change.
    pub(super) after: u64,
}

/// What the admin changes evaluated earlier in a group will have done to
/// the catalog, so each judges its condition as if they were applied.
#[derive(Default)]
pub(super) struct AdminOverlay {
    registered: std::collections::HashMap<ProjectName, bool>,
    tokens: std::collections::HashMap<String, bool>,
}

impl AdminOverlay {
    fn registered(&self, catalog: &Catalog, project: &ProjectName) -> bool {
        self.registered
            .get(project)
            .copied()
            .unwrap_or_else(|| catalog.project(project).is_some())
    }

    fn token_exists(&self, catalog: &Catalog, id: &str) -> bool {
        self.tokens
            .get(id)
            .copied()
            .unwrap_or_else(|| catalog.token(id).is_some())
    }
}

/// Judges an admin change's condition against the catalog and the
/// changes before it in the group; what it will log and apply.
pub(super) fn admit(
    mem: &MemoryStore,
    catalog: &Catalog,
    change: AdminChange,
    now: u64,
    overlay: &mut Overlay,
    admin: &mut AdminOverlay,
) -> Result<Admitted, EngineError> {
    let registered = |admin: &AdminOverlay, project: &ProjectName| {
        if admin.registered(catalog, project) {
            Ok(())
        } else {
            Err(EngineError::ProjectNotFound {
                project: project.clone(),
            })
        }
    };
    Ok(match change {
        AdminChange::CreateProject { project, quota } => {
            if admin.registered(catalog, &project) {
                return Err(EngineError::ProjectExists { project });
            }
            admin.registered.insert(project.clone(), true);
            let current = overlay.incarnation(mem, &project);
            let held = overlay.holds_namespace(mem, &project);
            // A name never used starts at 0 when first written; one
            // holding unregistered data (open mode) keeps it. A name
            // used before starts above the old numbering and above
            // the clock, so the new versions say nothing of how many
            // changes the deleted project had.
            let incarnation = if held || current == 0 {
                None
            } else {
                let base = current.max(now);
                overlay.begin(&project, base);
                Some((project.clone(), base))
            };
            Admitted {
                after: incarnation.as_ref().map_or(current, |(_, base)| *base),
                incarnation,
                change: CatalogChange::PutProject { project, quota },
            }
        }
        AdminChange::SetQuota { project, quota } => {
            registered(admin, &project)?;
            Admitted {
                after: overlay.incarnation(mem, &project),
                incarnation: None,
                change: CatalogChange::PutProject { project, quota },
            }
        }
        AdminChange::DeleteProject { project } => {
            registered(admin, &project)?;
            admin.registered.insert(project.clone(), false);
            for token in catalog.tokens(Some(&project)) {
                admin.tokens.insert(token.id, false);
            }
            overlay.drop_project(mem, &project);
            Admitted {
                after: overlay.incarnation(mem, &project),
                incarnation: None,
                change: CatalogChange::DeleteProject { project },
            }
        }
        AdminChange::CreateToken { token, incarnation } => {
            registered(admin, &token.project)?;
            if overlay.incarnation(mem, &token.project) != incarnation {
                return Err(EngineError::ProjectGone {
                    project: token.project,
                });
            }
            admin.tokens.insert(token.id.clone(), true);
            Admitted {
                after: incarnation,
                incarnation: None,
                change: CatalogChange::PutToken(token),
            }
        }
        AdminChange::RevokeToken { id } => {
            if !admin.token_exists(catalog, &id) {
                return Err(EngineError::TokenNotFound { id });
            }
            admin.tokens.insert(id.clone(), false);
            Admitted {
                after: 0,
                incarnation: None,
                change: CatalogChange::RevokeToken { id },
            }
        }
    })
}
