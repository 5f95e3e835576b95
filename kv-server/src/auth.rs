//! Who is calling, and which project they may touch.
//!
//! - **Open mode** (no admin token configured): anyone may do anything; the
//!   project comes from `x-kv-project` (default `default`).
//! - **Authenticated**: every call needs `authorization: Bearer <token>`.
//!   The admin token may call the admin API and any project (named by
//!   `x-kv-project`). A project token, `kv_<id>_<secret>`, pins its project:
//!   `x-kv-project` naming another is PERMISSION_DENIED, and a read-only
//!   token cannot write.
//!
//! Only SHA-256 hashes of secrets are kept (in memory and in the log), and
//! they are compared in constant time. Secrets are 256 bits from the OS
//! generator, so their hashes cannot be reversed or guessed.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Status, metadata::MetadataMap};

use kv_engine::{
    catalog::{Catalog, TokenLimits, TokenMeta},
    project::ProjectName,
};

use crate::metadata::{ProjectError, names_project, project_of};

/// Prefix of project tokens.
pub const TOKEN_PREFIX: &str = "kv_";
/// Longest bearer value accepted; anything longer is refused unread.
pub const MAX_BEARER_LEN: usize = 512;

/// What a call wants to do with a project's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// get, has.
    Read,
    /// set, delete, clear.
    Write,
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing credentials: send `authorization: Bearer <token>`")]
    Missing,
    /// Not `Bearer <token>`, or not a token of any known shape.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// A well-formed token that no longer (or never) existed.
    #[error("unknown or revoked token")]
    Unknown,
    /// The token's project is not the one the call names.
    #[error("this token is for project {token}; the call names project {asked}")]
    WrongProject {
        /// The token's project.
        token: ProjectName,
        /// The project in `x-kv-project`.
        asked: ProjectName,
    },
    /// A read-only token tried to write.
    #[error("this token of project {0} is read-only")]
    ReadOnly(ProjectName),
    /// A project token called the admin API.
    #[error("the admin API needs the admin token, not a project token")]
    NotAdmin,
    /// The project the call names is invalid.
    #[error(transparent)]
    Project(#[from] ProjectError),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        use crate::metrics::{AuthFailure, metrics};
        let reason = match &e {
            AuthError::Missing => Some(AuthFailure::Missing),
            AuthError::Malformed(_) => Some(AuthFailure::Malformed),
            AuthError::Unknown => Some(AuthFailure::Unknown),
            AuthError::WrongProject { .. } => Some(AuthFailure::WrongProject),
            AuthError::ReadOnly(_) => Some(AuthFailure::ReadOnly),
            AuthError::NotAdmin => Some(AuthFailure::NotAdmin),
            AuthError::Project(_) => None,
        };
        if let Some(reason) = reason {
            metrics().auth_failed(reason);
        }
        match e {
            AuthError::Missing | AuthError::Malformed(_) | AuthError::Unknown => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::WrongProject { .. } | AuthError::ReadOnly(_) | AuthError::NotAdmin => {
                Status::permission_denied(e.to_string())
            }
            AuthError::Project(_) => Status::invalid_argument(e.to_string()),
        }
    }
}

/// The SHA-256 of a secret.
pub fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The admin token, kept as its hash only.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

/// An admin token too short to resist guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the admin token is {len} characters; it must be at least {min} (use a random secret)",
    min = AdminToken::MIN_LEN
)]
pub struct AdminTokenTooShort {
    /// The length given (after trimming whitespace).
    pub len: usize,
}

impl AdminToken {
    /// Shortest admin token accepted.
    pub const MIN_LEN: usize = 16;

    /// Hashes `secret` (surrounding whitespace removed).
    ///
    /// # Errors
    ///
    /// [`AdminTokenTooShort`] when the secret is shorter than
    /// [`AdminToken::MIN_LEN`] characters.
    pub fn new(secret: &str) -> Result<Self, AdminTokenTooShort> {
        let secret = secret.trim();
        if secret.len() < Self::MIN_LEN {
            return Err(AdminTokenTooShort { len: secret.len() });
        }
        Ok(Self(sha256(secret.as_bytes())))
    }

    fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.ct_eq(&sha256(presented.as_bytes())))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// A new project token: the secret to hand out once, and what is stored.
pub struct NewToken {
    /// `kv_<id>_<secret>`: the bearer value.
    pub secret: String,
    /// What the server keeps.
    pub meta: TokenMeta,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a token for `project` (without rate limits of its own: set
/// `meta.limits` before storing it for some).
///
/// # Errors
///
/// When the OS random generator fails.
pub fn new_token(
    project: ProjectName,
    read_only: bool,
    now_ms: u64,
) -> Result<NewToken, getrandom::Error> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let secret_hex = hex(&secret);
    let meta = TokenMeta {
        id: hex(&id),
        project,
        read_only,
        secret_sha256: sha256(secret_hex.as_bytes()),
        created_at_ms: now_ms,
        limits: TokenLimits::default(),
    };
    Ok(NewToken {
        secret: format!("{TOKEN_PREFIX}{}_{secret_hex}", meta.id),
        meta,
    })
}

/// Who a call comes from, once its credentials were checked.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No authentication configured: anyone may do anything.
    Open,
    /// The admin token: any project.
    Admin,
    /// A project token: its project only.
    Project(TokenMeta),
}

impl Caller {
    /// The project a call acts on: `named` (a call that names its own
    /// project, as a Pipeline call may), else `x-kv-project`, else the
    /// token's project (or `default`), if this caller may.
    ///
    /// ```
    /// use kv_server::auth::{Access, Caller};
    /// let metadata = tonic::metadata::MetadataMap::new();
    /// let p = Caller::Open.project(&metadata, Some("shop"), Access::Write).unwrap();
    /// assert_eq!(p.as_str(), "shop");
    /// ```
    ///
    /// # Errors
    ///
    /// PERMISSION_DENIED ([`AuthError::WrongProject`],
    /// [`AuthError::ReadOnly`]) or a bad name ([`AuthError::Project`]).
    pub fn project(
        &self,
        metadata: &MetadataMap,
        named: Option<&str>,
        access: Access,
    ) -> Result<ProjectName, AuthError> {
        let asked = match named {
            Some(name) => Some(ProjectName::parse(name).map_err(ProjectError::Named)?),
            None if names_project(metadata) => Some(project_of(metadata)?),
            None => None,
        };
        match self {
            Self::Open | Self::Admin => Ok(asked.unwrap_or_else(ProjectName::default_project)),
            Self::Project(token) => {
                if let Some(asked) = asked
                    && asked != token.project
                {
                    return Err(AuthError::WrongProject {
                        token: token.project.clone(),
                        asked,
                    });
                }
                if access == Access::Write && token.read_only {
                    return Err(AuthError::ReadOnly(token.project.clone()));
                }
                Ok(token.project.clone())
            }
        }
    }

    /// The project a long-lived stream is tied to: its token's, or the one
    /// `x-kv-project` names. A stream naming none (the admin token or open
    /// mode without the header) may carry calls of any project and is tied
    /// to none.
    ///
    /// # Errors
    ///
    /// A bad `x-kv-project` ([`AuthError::Project`]).
    pub fn bound_project(&self, metadata: &MetadataMap) -> Result<Option<ProjectName>, AuthError> {
        match self {
            Self::Project(token) => Ok(Some(token.project.clone())),
            Self::Open | Self::Admin => {
                if names_project(metadata) {
                    Ok(Some(project_of(metadata)?))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

/// Authentication and project resolution for every call.
pub struct Auth {
    admin: Option<AdminToken>,
    catalog: Arc<Catalog>,
}

impl Auth {
    /// Open mode when `admin` is `None`; tokens are looked up in `catalog`.
    pub fn new(admin: Option<AdminToken>, catalog: Arc<Catalog>) -> Self {
        Self { admin, catalog }
    }

    /// The catalog tokens are looked up in.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Whether no authentication is required.
    pub fn is_open(&self) -> bool {
        self.admin.is_none()
    }

    /// A receiver that changes whenever a token or project does: open
    /// streams wait on it to re-check their credentials and project.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.catalog.changes_receiver()
    }

    /// Checks the credentials of a call (any caller in open mode).
    ///
    /// # Errors
    ///
    /// UNAUTHENTICATED ([`AuthError::Missing`], [`AuthError::Malformed`],
    /// [`AuthError::Unknown`]).
    pub fn caller_of(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        match &self.admin {
            None => Ok(Caller::Open),
            Some(admin) => self.caller(metadata, admin),
        }
    }

    fn caller(&self, metadata: &MetadataMap, admin: &AdminToken) -> Result<Caller, AuthError> {
        let raw = metadata.get("authorization").ok_or(AuthError::Missing)?;
        if raw.len() > MAX_BEARER_LEN {
            return Err(AuthError::Malformed("credentials longer than 512 bytes"));
        }
        let value = raw
            .to_str()
            .map_err(|_| AuthError::Malformed("credentials are not ASCII"))?;
        let (scheme, token) = value
            .split_once(' ')
            .ok_or(AuthError::Malformed("expected `Bearer <token>`"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed("only the Bearer scheme is accepted"));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Malformed("the bearer token is empty"));
        }
        if admin.matches(token) {
            return Ok(Caller::Admin);
        }
        let Some((id, secret)) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Err(AuthError::Unknown);
        };
        let meta = self.catalog.token(id).ok_or(AuthError::Unknown)?;
        if bool::from(meta.secret_sha256.ct_eq(&sha256(secret.as_bytes()))) {
            Ok(Caller::Project(meta))
        } else {
            Err(AuthError::Unknown)
        }
    }

    /// The project a data call acts on, if the caller may.
    ///
    /// # Errors
    ///
    /// [`AuthError`]: UNAUTHENTICATED, PERMISSION_DENIED or (bad
    /// `x-kv-project`) INVALID_ARGUMENT.
    pub fn project_for(
        &self,
        metadata: &MetadataMap,
        access: Access,
    ) -> Result<ProjectName, AuthError> {
        self.caller_of(metadata)?.project(metadata, None, access)
    }

    /// Admits admin calls: the admin token, or anyone in open mode.
    ///
    /// # Errors
    ///
    /// UNAUTHENTICATED without valid credentials, PERMISSION_DENIED for a
    /// project token.
    pub fn require_admin(&self, metadata: &MetadataMap) -> Result<(), AuthError> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        match self.caller(metadata, admin)? {
            Caller::Admin | Caller::Open => Ok(()),
            Caller::Project(_) => Err(AuthError::NotAdmin),
        }
    }
}
