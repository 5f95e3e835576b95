//! Listing keys, one page at a time or all at once.

use kv_proto::v1 as pb;
use serde::de::DeserializeOwned;

use crate::{Error, Project, json};

/// Which keys [`Project::list`] returns, from where, and how many.
///
/// By default: every key, from the first, 100 per page (the server's
/// default), with values.
///
/// ```
/// let options = kv_client::ListOptions::new().prefix("user:").limit(500).keys_only();
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    prefix: String,
    start_after: String,
    limit: u32,
    keys_only: bool,
}

impl ListOptions {
    /// Every key, from the first, a page of the server's default size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only keys starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Starts after this key: the previous page's
    /// [`next_start_after`](Page::next_start_after).
    pub fn start_after(mut self, key: impl Into<String>) -> Self {
        self.start_after = key.into();
        self
    }

    /// Most entries per page: 1 to 1000 (more is `INVALID_ARGUMENT` from the
    /// server); 0 means the server's default, 100.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Keys, versions and deadlines only, without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    pub(crate) fn to_request(&self) -> pb::ListRequest {
        pb::ListRequest {
            prefix: self.prefix.clone(),
            start_after: self.start_after.clone(),
            limit: self.limit,
            keys_only: self.keys_only,
        }
    }
}

/// One page of a listing; from [`Project::list`].
///
/// ```no_run
/// use kv_client::ListOptions;
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let mut options = ListOptions::new().prefix("user:");
/// loop {
///     let page = kv.list(options.clone()).await?;
///     for entry in &page.entries { println!("{} = {:?}", entry.key, entry.value); }
///     match page.next_start_after {
///         Some(last) => options = options.start_after(last),
///         None => break,
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Live entries in lexicographic (byte) order of key.
    pub entries: Vec<ListEntry>,
    /// Where the next page starts (pass it to [`ListOptions::start_after`]);
    /// `None` when this page is the last.
    pub next_start_after: Option<String>,
    /// The project's version when the page was read: the page reflects
    /// every change up to it, so a watch from here
    /// ([`WatchOptions::from_version`](crate::WatchOptions::from_version))
    /// misses nothing.
    pub version: u64,
    /// The project's incarnation: [`version`](Self::version) means
    /// something only in it. Pass it to
    /// [`WatchOptions::incarnation`](crate::WatchOptions::incarnation) with
    /// the version, so a watch does not follow a project deleted and
    /// recreated since under the same name.
    pub incarnation: u64,
}

impl Page {
    fn from_proto(reply: pb::ListResponse) -> Result<Self, Error> {
        Ok(Page {
            entries: reply
                .entries
                .into_iter()
                .map(ListEntry::from_proto)
                .collect::<Result<_, _>>()?,
            next_start_after: Some(reply.next_start_after).filter(|key| !key.is_empty()),
            version: reply.version,
            incarnation: reply.incarnation,
        })
    }
}

/// One key of a listing.
///
/// ```
/// let entry = kv_client::ListEntry {
///     key: "user:1".into(),
///     value: Some(serde_json::json!({"name": "Ada"})),
///     version: 3,
///     expires_at_ms: None,
/// };
/// #[derive(serde::Deserialize)]
/// struct User { name: String }
/// let user: User = entry.value_as()?.unwrap();
/// assert_eq!(user.name, "Ada");
/// # Ok::<(), kv_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    /// The key.
    pub key: String,
    /// The value; `None` in a [`keys_only`](ListOptions::keys_only) listing.
    pub value: Option<serde_json::Value>,
    /// The version of the change that last wrote the key.
    pub version: u64,
    /// When the key expires (unix milliseconds), if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

impl ListEntry {
    /// The value as a `T` (`None` in a keys-only listing).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the value does not fit `T`.
    pub fn value_as<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        self.value
            .as_ref()
            .map(|value| T::deserialize(value).map_err(Error::Decode))
            .transpose()
    }

    fn from_proto(entry: pb::ListEntry) -> Result<Self, Error> {
        Ok(ListEntry {
            key: entry.key,
            value: entry.value.map(json::from_proto).transpose()?,
            version: entry.version,
            expires_at_ms: entry.expires_at_ms,
        })
    }
}

impl Project {
    /// One page of keys in lexicographic (byte) order, as `options` say.
    /// Continue with [`Page::next_start_after`], or let
    /// [`Project::list_all`] walk every page.
    ///
    /// ```no_run
    /// use kv_client::ListOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let page = kv.list(ListOptions::new().prefix("order:").limit(10).keys_only()).await?;
    /// let keys: Vec<&str> = page.entries.iter().map(|e| e.key.as_str()).collect();
    /// # let _ = keys; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Status`] from the server (`INVALID_ARGUMENT` for a limit
    /// over 1000), [`Error::Timeout`], [`Error::InvalidArgument`] for a bad
    /// project name.
    pub async fn list(&self, options: ListOptions) -> Result<Page, Error> {
        let reply = self
            .read(options.to_request(), |conn, r| async move {
                conn.kv().list(r).await
            })
            .await?;
        Page::from_proto(reply)
    }

    /// Every key starting with `prefix` (`""` for all), with values, walking
    /// every page. Each page is one call with its own timeout; a key
    /// present for the whole walk is returned exactly once, but the result
    /// is not one snapshot (use [`Project::list`] and its
    /// [`Page::version`] with a watch for that).
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// for entry in kv.list_all("session:").await? {
    ///     println!("{} expires at {:?}", entry.key, entry.expires_at_ms);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::list`].
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<ListEntry>, Error> {
        self.list_all_with(ListOptions::new().prefix(prefix)).await
    }

    /// Every page of a listing as `options` say (their limit is the page
    /// size), from their `start_after` on.
    ///
    /// ```no_run
    /// use kv_client::ListOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let keys = kv.list_all_with(ListOptions::new().prefix("user:").limit(1000).keys_only()).await?;
    /// println!("{} users", keys.len());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::list`]; [`Error::Protocol`] when the server's cursor
    /// does not move forward.
    pub async fn list_all_with(&self, mut options: ListOptions) -> Result<Vec<ListEntry>, Error> {
        let mut entries = Vec::new();
        loop {
            let page = self.list(options.clone()).await?;
            entries.extend(page.entries);
            match page.next_start_after {
                None => return Ok(entries),
                Some(next) if next <= options.start_after => {
                    return Err(Error::Protocol(format!(
                        "List cursor went from {:?} to {next:?}, not forward",
                        options.start_after
                    )));
                }
                Some(next) => options.start_after = next,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_map_onto_the_request() {
        assert_eq!(ListOptions::new().to_request(), pb::ListRequest::default());
        assert_eq!(
            ListOptions::new()
                .prefix("user:")
                .start_after("user:9")
                .limit(1000)
                .keys_only()
                .to_request(),
            pb::ListRequest {
                prefix: "user:".into(),
                start_after: "user:9".into(),
                limit: 1000,
                keys_only: true,
            }
        );
    }

    #[test]
    fn pages_become_typed() {
        let reply = pb::ListResponse {
            entries: vec![
                pb::ListEntry {
                    key: "a".into(),
                    value: Some(json::to_proto(&json!({"n": 2.0})).unwrap()),
                    version: 4,
                    expires_at_ms: Some(99),
                },
                pb::ListEntry {
                    key: "b".into(),
                    value: None,
                    version: 5,
                    expires_at_ms: None,
                },
            ],
            next_start_after: "b".into(),
            version: 12,
            incarnation: 3,
        };
        let page = Page::from_proto(reply).unwrap();
        assert_eq!(page.next_start_after.as_deref(), Some("b"));
        assert_eq!((page.version, page.incarnation), (12, 3));
        assert_eq!(
            page.entries[0],
            ListEntry {
                key: "a".into(),
                value: Some(json!({"n": 2})),
                version: 4,
                expires_at_ms: Some(99),
            }
        );
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct N {
            n: u8,
        }
        assert_eq!(page.entries[0].value_as::<N>().unwrap(), Some(N { n: 2 }));
        assert_eq!(page.entries[1].value_as::<N>().unwrap(), None);
        assert!(matches!(
            page.entries[0].value_as::<String>(),
            Err(Error::Decode(_))
        ));

        let last = Page::from_proto(pb::ListResponse::default()).unwrap();
        assert_eq!(last.next_start_after, None);
        assert!(last.entries.is_empty());

        let bad = Page::from_proto(pb::ListResponse {
            entries: vec![pb::ListEntry {
                value: Some(prost_types::Value { kind: None }),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(matches!(bad, Err(Error::Protocol(_))));
    }
}
