//! Project names: the namespace every key lives in.

use std::{borrow::Borrow, fmt, sync::Arc};

pub use kv_contract::{DEFAULT_PROJECT, MAX_PROJECT_NAME_LEN, ProjectNameError};

/// A validated project name: 1 to 64 characters of `[A-Za-z0-9_.-]` (the
/// contract's rule, [`kv_contract::check_project_name`]).
///
/// Cheap to clone (shared).
///
/// ```
/// use kv_engine::project::ProjectName;
///
/// let shop = ProjectName::parse("shop-eu.1").unwrap();
/// assert_eq!(shop.as_str(), "shop-eu.1");
/// assert!(ProjectName::parse("").is_err());
/// assert!(ProjectName::parse("no/slashes").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectName(Arc<str>);

impl ProjectName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`ProjectNameError`] when the name is empty, longer than 64
    /// characters, or has a character outside `[A-Za-z0-9_.-]`.
    pub fn parse(name: &str) -> Result<Self, ProjectNameError> {
        kv_contract::check_project_name(name)?;
        Ok(Self(name.into()))
    }

    /// The project `default`, used when a request names none.
    ///
    /// ```
    /// assert_eq!(kv_engine::project::ProjectName::default_project().as_str(), "default");
    /// ```
    pub fn default_project() -> Self {
        Self(DEFAULT_PROJECT.into())
    }

    /// The name as a string slice.
    ///
    /// ```
    /// let p = kv_engine::project::ProjectName::parse("a").unwrap();
    /// assert_eq!(p.as_str(), "a");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ProjectName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet_up_to_64_characters() {
        let name = "Az09_.-".repeat(9) + "x";
        assert_eq!(name.len(), 64);
        assert_eq!(ProjectName::parse(&name).unwrap().as_str(), name);
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        assert_eq!(ProjectName::parse(""), Err(ProjectNameError::Empty));
        assert_eq!(
            ProjectName::parse(&"a".repeat(65)),
            Err(ProjectNameError::TooLong { len: 65 })
        );
        for (bad, found) in [("a b", ' '), ("é", 'é'), ("a/b", '/'), ("a:b", ':')] {
            assert_eq!(
                ProjectName::parse(bad),
                Err(ProjectNameError::BadCharacter { found })
            );
        }
        // Long names with a bad character report the character, the more useful fact.
        assert_eq!(
            ProjectName::parse(&"é".repeat(40)),
            Err(ProjectNameError::BadCharacter { found: 'é' })
        );
    }
}
