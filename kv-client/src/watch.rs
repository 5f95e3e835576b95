//! Change feeds: a stream of the changes to one key, a prefix or a project.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use kv_proto::v1 as pb;
use serde::de::DeserializeOwned;
use tokio_stream::Stream;

use crate::{Error, Project, json};

/// Which keys [`Project::watch`] follows, and from which version (of which
/// incarnation of the project).
///
/// ```
/// use kv_client::WatchOptions;
/// let one_key = WatchOptions::key("config");
/// let users = WatchOptions::prefix("user:").from_version(1200).incarnation(0);
/// let everything = WatchOptions::all();
/// # let _ = (one_key, users, everything);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    target: Target,
    from_version: Option<u64>,
    incarnation: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Target {
    #[default]
    All,
    Key(String),
    Prefix(String),
}

impl WatchOptions {
    /// Every key of the project, from now.
    pub fn all() -> Self {
        Self::default()
    }

    /// Exactly `key`, from now.
    pub fn key(key: impl Into<String>) -> Self {
        WatchOptions {
            target: Target::Key(key.into()),
            ..Self::default()
        }
    }

    /// Every key starting with `prefix`, from now.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        WatchOptions {
            target: Target::Prefix(prefix.into()),
            ..Self::default()
        }
    }

    /// Resumes: delivers every change with a version above `version` (a
    /// [`Page::version`](crate::Page::version), or the last
    /// [`Event::version`] seen). A version older than the server's retained
    /// history fails the watch with `OUT_OF_RANGE`. Pair it with
    /// [`incarnation`](Self::incarnation) so that a project deleted and
    /// recreated meanwhile is noticed.
    pub fn from_version(mut self, version: u64) -> Self {
        self.from_version = Some(version);
        self
    }

    /// The incarnation of the project the resume point belongs to: the
    /// [`Page::incarnation`](crate::Page::incarnation),
    /// [`Entry::incarnation`](crate::Entry::incarnation) or
    /// [`Event::incarnation`] that came with the version. If the project
    /// has been deleted and created again since, the watch fails with
    /// `FAILED_PRECONDITION` instead of following a project that shares
    /// nothing with the one seen: reread it (list again) and watch from
    /// there.
    ///
    /// ```no_run
    /// use kv_client::{ListOptions, WatchOptions};
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let page = kv.list(ListOptions::new()).await?;
    /// let options = WatchOptions::all().from_version(page.version).incarnation(page.incarnation);
    /// let watch = kv.watch(options).await?;
    /// # let _ = watch; Ok(())
    /// # }
    /// ```
    pub fn incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = Some(incarnation);
        self
    }

    pub(crate) fn to_request(&self) -> pb::WatchRequest {
        pb::WatchRequest {
            from_version: self.from_version,
            incarnation: self.incarnation,
            target: match &self.target {
                Target::All => None,
                Target::Key(key) => Some(pb::watch_request::Target::Key(key.clone())),
                Target::Prefix(prefix) => Some(pb::watch_request::Target::Prefix(prefix.clone())),
            },
        }
    }
}

/// Why a key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Set, incremented or merged: the event holds the new value.
    Set,
    /// Deleted by a call.
    Deleted,
    /// Its TTL ran out.
    Expired,
    /// The whole project was cleared (one event, with an empty key).
    Cleared,
}

/// One change, as [`Watch`] delivers them: in version order.
///
/// ```
/// use kv_client::{Event, EventKind};
/// let event = Event {
///     kind: EventKind::Set,
///     key: "hits".into(),
///     value: Some(serde_json::json!(3)),
///     version: 17,
///     expires_at_ms: None,
///     incarnation: 0,
/// };
/// assert_eq!(event.value_as::<u32>()?, Some(3));
/// # Ok::<(), kv_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Why the key changed.
    pub kind: EventKind,
    /// The key (empty for [`EventKind::Cleared`]).
    pub key: String,
    /// The new value of a [`EventKind::Set`] event; `None` otherwise.
    pub value: Option<serde_json::Value>,
    /// The version of this change.
    pub version: u64,
    /// The deadline (unix ms) of a set key with a TTL.
    pub expires_at_ms: Option<u64>,
    /// The incarnation of the project the change happened in: resume with
    /// it ([`WatchOptions::incarnation`]) along with the version.
    pub incarnation: u64,
}

impl Event {
    /// The new value as a `T` (`None` unless a [`EventKind::Set`] event).
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

    fn from_proto(event: pb::WatchEvent) -> Result<Self, Error> {
        let kind = match pb::EventKind::try_from(event.kind) {
            Ok(pb::EventKind::Set) => EventKind::Set,
            Ok(pb::EventKind::Deleted) => EventKind::Deleted,
            Ok(pb::EventKind::Expired) => EventKind::Expired,
            Ok(pb::EventKind::Cleared) => EventKind::Cleared,
            Ok(pb::EventKind::Unspecified) | Err(_) => {
                return Err(Error::Protocol(format!(
                    "watch event of unknown kind {} at version {}",
                    event.kind, event.version
                )));
            }
        };
        let value = event.value.map(json::from_proto).transpose()?;
        if kind == EventKind::Set && value.is_none() {
            return Err(Error::Protocol(format!(
                "SET event without a value at version {}",
                event.version
            )));
        }
        Ok(Event {
            kind,
            key: event.key,
            value,
            version: event.version,
            expires_at_ms: event.expires_at_ms,
            incarnation: event.incarnation,
        })
    }
}

/// A live change feed; from [`Project::watch`].
///
/// A [`Stream`] of events in version order (also readable with
/// [`next_event`](Self::next_event)). It ends with `None` when the server
/// closes it, after an error: `RESOURCE_EXHAUSTED` when this watcher fell
/// too far behind, `UNAVAILABLE` when the connection dropped... Resume with
/// [`WatchOptions::from_version`] and [`last_version`](Self::last_version)
/// (and [`WatchOptions::incarnation`] with
/// [`last_incarnation`](Self::last_incarnation)).
/// Dropping it cancels the watch.
///
/// ```no_run
/// use kv_client::{EventKind, WatchOptions};
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let mut watch = kv.watch(WatchOptions::prefix("config:")).await?;
/// while let Some(event) = watch.next_event().await {
///     let event = event?;
///     match event.kind {
///         EventKind::Set => println!("{} = {:?}", event.key, event.value),
///         EventKind::Deleted | EventKind::Expired => println!("{} gone", event.key),
///         EventKind::Cleared => println!("all gone"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Watch {
    inner: tonic::Streaming<pb::WatchEvent>,
    last_version: Option<u64>,
    last_incarnation: Option<u64>,
}

impl Watch {
    /// The next change; `None` once the stream has ended.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let mut watch = kv.watch(kv_client::WatchOptions::key("leader")).await?;
    /// if let Some(event) = watch.next_event().await.transpose()? {
    ///     println!("leader is now {:?}", event.value);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Status`] when the server ends the watch with an error
    /// (`OUT_OF_RANGE` for a `from_version` older than its history,
    /// `RESOURCE_EXHAUSTED` for a watcher too far behind), or when its
    /// endpoint goes down or the connection breaks (`UNAVAILABLE` or the
    /// transport's status: the watch is not resumed by itself); then the
    /// stream ends. Resume from [`last_version`](Self::last_version), as
    /// shown there. [`Error::Protocol`] for an event the SDK cannot read.
    pub async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The version of the last event delivered: resume from it with
    /// [`WatchOptions::from_version`]. `None` before the first event.
    pub fn last_version(&self) -> Option<u64> {
        self.last_version
    }

    /// The project incarnation of the last event delivered: resume with it
    /// ([`WatchOptions::incarnation`]) along with
    /// [`last_version`](Self::last_version). `None` before the first event.
    ///
    /// ```no_run
    /// use kv_client::WatchOptions;
    /// # async fn demo(kv: kv_client::Project, watch: kv_client::Watch) -> Result<(), kv_client::Error> {
    /// // After the watch ended with an error: pick up where it stopped.
    /// if let (Some(version), Some(incarnation)) = (watch.last_version(), watch.last_incarnation()) {
    ///     let options = WatchOptions::all().from_version(version).incarnation(incarnation);
    ///     let resumed = kv.watch(options).await?;
    ///     # let _ = resumed;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn last_incarnation(&self) -> Option<u64> {
        self.last_incarnation
    }
}

impl Stream for Watch {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(item.map(|event| {
            let event = Event::from_proto(event?)?;
            self.last_version = Some(event.version);
            self.last_incarnation = Some(event.incarnation);
            Ok(event)
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl Project {
    /// Starts a change feed: every change to one key, a prefix or the whole
    /// project, from now or from a version.
    ///
    /// The per-call timeout bounds only the start (until the server accepts
    /// the watch); the stream then lasts until dropped, the server ends it
    /// or the connection fails.
    ///
    /// ```no_run
    /// use kv_client::{ListOptions, WatchOptions};
    /// use tokio_stream::StreamExt;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// // A consistent view: list, then watch from the listing's version.
    /// let page = kv.list(ListOptions::new().prefix("job:").limit(1000)).await?;
    /// let from = WatchOptions::prefix("job:").from_version(page.version).incarnation(page.incarnation);
    /// let mut changes = kv.watch(from).await?;
    /// while let Some(event) = changes.next().await {
    ///     println!("{:?}", event?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Status`] from the server (`OUT_OF_RANGE` for a version older
    /// than its history, `FAILED_PRECONDITION` for a resume point of another
    /// incarnation of the project; either may also come as the stream's
    /// first item),
    /// [`Error::Timeout`] when the server does not accept the watch within
    /// the per-call timeout, [`Error::InvalidArgument`] for a bad project
    /// name.
    pub async fn watch(&self, options: WatchOptions) -> Result<Watch, Error> {
        let inner = self
            .open_stream(options.to_request(), |conn, r| async move {
                conn.kv().watch(r).await
            })
            .await?;
        Ok(Watch {
            inner,
            last_version: None,
            last_incarnation: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_map_onto_the_request() {
        assert_eq!(
            WatchOptions::all().to_request(),
            pb::WatchRequest {
                from_version: None,
                target: None,
                incarnation: None,
            }
        );
        assert_eq!(WatchOptions::default(), WatchOptions::all());
        assert_eq!(
            WatchOptions::key("k").from_version(7).to_request(),
            pb::WatchRequest {
                from_version: Some(7),
                target: Some(pb::watch_request::Target::Key("k".into())),
                incarnation: None,
            }
        );
        assert_eq!(
            WatchOptions::prefix("p:").to_request(),
            pb::WatchRequest {
                from_version: None,
                target: Some(pb::watch_request::Target::Prefix("p:".into())),
                incarnation: None,
            }
        );
        assert_eq!(
            WatchOptions::prefix("p:")
                .from_version(1_700_000_000_123)
                .incarnation(1_700_000_000_000)
                .to_request(),
            pb::WatchRequest {
                from_version: Some(1_700_000_000_123),
                target: Some(pb::watch_request::Target::Prefix("p:".into())),
                incarnation: Some(1_700_000_000_000),
            }
        );
    }

    fn event(kind: pb::EventKind, value: Option<serde_json::Value>) -> pb::WatchEvent {
        pb::WatchEvent {
            kind: kind as i32,
            key: "k".into(),
            value: value.map(|v| json::to_proto(&v).unwrap()),
            version: 9,
            expires_at_ms: Some(5),
            incarnation: 4,
        }
    }

    #[test]
    fn events_become_typed() {
        let set = Event::from_proto(event(pb::EventKind::Set, Some(json!([1, 2])))).unwrap();
        assert_eq!(
            set,
            Event {
                kind: EventKind::Set,
                key: "k".into(),
                value: Some(json!([1, 2])),
                version: 9,
                expires_at_ms: Some(5),
                incarnation: 4,
            }
        );
        assert_eq!(set.value_as::<Vec<u8>>().unwrap(), Some(vec![1, 2]));
        assert!(matches!(set.value_as::<bool>(), Err(Error::Decode(_))));
        for (wire, kind) in [
            (pb::EventKind::Deleted, EventKind::Deleted),
            (pb::EventKind::Expired, EventKind::Expired),
            (pb::EventKind::Cleared, EventKind::Cleared),
        ] {
            let typed = Event::from_proto(event(wire, None)).unwrap();
            assert_eq!(typed.kind, kind);
            assert_eq!(typed.value, None);
            assert_eq!(typed.value_as::<u8>().unwrap(), None);
        }
    }

    #[test]
    fn unreadable_events_are_protocol_errors() {
        let unspecified = Event::from_proto(event(pb::EventKind::Unspecified, None));
        assert!(matches!(unspecified, Err(Error::Protocol(_))));
        let mut unknown = event(pb::EventKind::Set, Some(json!(1)));
        unknown.kind = 42;
        assert!(matches!(
            Event::from_proto(unknown),
            Err(Error::Protocol(_))
        ));
        let no_value = Event::from_proto(event(pb::EventKind::Set, None));
        assert!(matches!(no_value, Err(Error::Protocol(_))));
    }
}
