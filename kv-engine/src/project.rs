//! Project names: the namespace every key lives in.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
    sync::Arc,
};

pub use kv_contract::{DEFAULT_PROJECT, MAX_PROJECT_NAME_LEN, ProjectNameError};

/// A validated project name: 1 to 64 characters of `[A-Za-z0-9_.-]` (the
/// contract's rule, [`kv_contract::check_project_name`]).
///
/// Cheap to clone: a name of up to [`INLINE_LEN`] bytes is held inline (no
/// allocation, and a lookup in a map keyed by names touches no memory
/// beyond the map's slot), a longer one is shared. Equality, order and
/// hash are those of the name's string, however it is held.
///
/// ```
/// use kv_engine::project::ProjectName;
///
/// let shop = ProjectName::parse("shop-eu.1").unwrap();
/// assert_eq!(shop.as_str(), "shop-eu.1");
/// assert!(ProjectName::parse("").is_err());
/// assert!(ProjectName::parse("no/slashes").is_err());
/// ```
#[derive(Clone)]
pub struct ProjectName(Repr);

/// Names up to this many bytes are held inline: with the length byte and
/// the variant's tag they fill the 24 bytes the shared variant needs anyway
/// (a fat pointer and its tag), and they cover the short generated names
/// most tenants get (`tenant-1234567`).
pub const INLINE_LEN: usize = 22;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    Shared(Arc<str>),
}

impl Repr {
    fn new(name: &str) -> Self {
        if name.len() <= INLINE_LEN {
            let mut bytes = [0; INLINE_LEN];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            Self::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            Self::Shared(name.into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Only ever filled from a `&str` (`Repr::new`), whole.
            Self::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .unwrap_or_else(|_| unreachable!("copied from a str")),
            Self::Shared(name) => name,
        }
    }
}

impl PartialEq for ProjectName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ProjectName {}

impl PartialOrd for ProjectName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ProjectName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for ProjectName {
    // As `str` hashes: maps keyed by names are looked up by `&str`
    // (`Borrow<str>`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl ProjectName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`ProjectNameError`] when the name is empty, longer than 64
    /// characters, or has a character outside `[A-Za-z0-9_.-]`.
    pub fn parse(name: &str) -> Result<Self, ProjectNameError> {
        kv_contract::check_project_name(name)?;
        Ok(Self(Repr::new(name)))
    }

    /// The project `default`, used when a request names none.
    ///
    /// ```
    /// assert_eq!(kv_engine::project::ProjectName::default_project().as_str(), "default");
    /// ```
    pub fn default_project() -> Self {
        Self(Repr::new(DEFAULT_PROJECT))
    }

    /// The name as a string slice.
    ///
    /// ```
    /// let p = kv_engine::project::ProjectName::parse("a").unwrap();
    /// assert_eq!(p.as_str(), "a");
    /// ```
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Borrow<str> for ProjectName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
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
    fn short_and_long_names_compare_hash_and_order_as_their_strings() {
        use std::collections::{BTreeSet, HashSet, hash_map::DefaultHasher};
        let hash = |h: &dyn Fn(&mut DefaultHasher)| {
            let mut s = DefaultHasher::new();
            h(&mut s);
            s.finish()
        };
        assert_eq!(std::mem::size_of::<ProjectName>(), 24);
        let names = [
            "a".to_string(),
            "b".repeat(INLINE_LEN),
            "b".repeat(INLINE_LEN + 1),
            "a".repeat(64),
            "B".to_string(),
        ];
        let parsed: Vec<ProjectName> = names
            .iter()
            .map(|n| ProjectName::parse(n).unwrap())
            .collect();
        for (name, p) in names.iter().zip(&parsed) {
            assert_eq!(p.as_str(), name);
            assert_eq!(p.clone(), *p);
            assert_eq!(hash(&|s| p.hash(s)), hash(&|s| name.as_str().hash(s)));
            assert_eq!(format!("{p}"), *name);
            assert_eq!(format!("{p:?}"), format!("{name:?}"));
        }
        let mut sorted = names.clone();
        sorted.sort();
        let ordered: Vec<String> = parsed
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(ordered, sorted);
        let set: HashSet<ProjectName> = parsed.iter().cloned().collect();
        for name in &names {
            assert!(set.contains(name.as_str()));
        }
        assert!(!set.contains("c"));
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
