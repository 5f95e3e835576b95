//! What a request's metadata says about its project.
//!
//! Its own module so that both authentication ([`crate::auth`]) and the
//! service read it without importing each other.

use kv_engine::project::{ProjectName, ProjectNameError};
use kv_proto::contract::PROJECT_HEADER;
use tonic::metadata::MetadataMap;

/// A project name a request gives that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    /// `x-kv-project` is not printable ASCII.
    #[error(
        "{PROJECT_HEADER} metadata is not printable ASCII; project names are 1-64 characters of [A-Za-z0-9_.-]"
    )]
    NotAscii,
    /// `x-kv-project` names an invalid project.
    #[error("{PROJECT_HEADER}: {0}")]
    Header(ProjectNameError),
    /// A Pipeline frame or call names an invalid project.
    #[error("project: {0}")]
    Named(ProjectNameError),
}

/// Resolves the project of a request from its `x-kv-project` metadata,
/// defaulting to `default`.
///
/// ```
/// use kv_server::metadata::project_of;
/// let mut metadata = tonic::metadata::MetadataMap::new();
/// assert_eq!(project_of(&metadata).unwrap().as_str(), "default");
/// metadata.insert("x-kv-project", "shop".parse().unwrap());
/// assert_eq!(project_of(&metadata).unwrap().as_str(), "shop");
/// ```
///
/// # Errors
///
/// [`ProjectError`] when the header is not ASCII or not a valid name.
pub fn project_of(metadata: &MetadataMap) -> Result<ProjectName, ProjectError> {
    match metadata.get(PROJECT_HEADER) {
        None => Ok(ProjectName::default_project()),
        Some(raw) => {
            let name = raw.to_str().map_err(|_| ProjectError::NotAscii)?;
            ProjectName::parse(name).map_err(ProjectError::Header)
        }
    }
}

/// Whether the request names its project in `x-kv-project`.
pub fn names_project(metadata: &MetadataMap) -> bool {
    metadata.get(PROJECT_HEADER).is_some()
}
