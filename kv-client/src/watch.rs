//! Change feeds: a stream of the changes to one key, a prefix or a project.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use kv_proto::v1 as pb;
use serde::de::DeserializeOwned;
use tokio_stream::Stream;

use crate::{
    Error, Project, json,
    resume::{self, End, Opened},
};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    target: Target,
    from_version: Option<u64>,
    incarnation: Option<u64>,
    resume: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            target: Target::All,
            from_version: None,
            incarnation: None,
            resume: true,
        }
    }
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

    /// Whether the watch reopens itself when its stream breaks (default
    /// on): see [`Watch`] for when it does and what it guarantees. Off, a
    /// broken stream ends the watch with its error, for the caller to
    /// resume from [`Watch::last_version`].
    ///
    /// ```
    /// use kv_client::WatchOptions;
    /// let manual = WatchOptions::prefix("job:").resume(false);
    /// # let _ = manual;
    /// ```
    pub fn resume(mut self, on: bool) -> Self {
        self.resume = on;
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
/// [`next_event`](Self::next_event)). Dropping it cancels the watch.
///
/// # Resuming by itself
///
/// When its stream breaks in a way another stream can pick up from, the
/// watch opens a new one and carries on, and the caller sees no error:
///
/// - the connection broke or the server went away (a transport error);
/// - the server said `UNAVAILABLE` (it is shutting down; its store is
///   unreachable);
/// - the server cut this watcher for not keeping up while at its memory
///   limit (`RESOURCE_EXHAUSTED` naming the version to resume after).
///
/// The new stream starts after the last event delivered (or after the
/// version the server said the watch had reached, or where the watch
/// started if nothing was delivered yet), in the incarnation last seen,
/// so no change is missed and none is delivered twice: the first event
/// after a resume is the next one in the feed's version order. Reopening
/// uses the client's [`RetryPolicy`](crate::RetryPolicy): a jittered
/// backoff before each attempt (growing while resumes deliver nothing),
/// the next endpoint when one is down, each attempt bounded by the
/// per-call timeout, and at most the policy's attempts in a row (the count
/// starts again once the server accepts a reopened watch). A rate limit or
/// memory limit refusing a reopen is retried within those attempts (after
/// the server's retry-after hint when it gives one).
/// [`resumes`](Self::resumes) counts the streams opened this way.
///
/// The watch still ends with an error, then `None`, when resuming cannot
/// help or does not work:
///
/// - `OUT_OF_RANGE`: the resume point has left the server's history (it
///   was down or unreachable for longer than the history covers): read
///   the state again and watch from its version;
/// - `FAILED_PRECONDITION`: the project was deleted and created again;
/// - `RESOURCE_EXHAUSTED` for a watcher the history left behind (its
///   changes are gone), `UNAUTHENTICATED` / `PERMISSION_DENIED` for a
///   revoked token, `NOT_FOUND` for a deleted project;
/// - the last reopen attempt's error once the policy's attempts are spent
///   (`UNAVAILABLE`, a transport status, [`Error::Timeout`]);
/// - any error, with [`WatchOptions::resume`] off, or from a server too
///   old to say where a watch with no event delivered yet started.
///
/// Then resume by hand if it makes sense, with
/// [`WatchOptions::from_version`] and [`last_version`](Self::last_version)
/// (and [`WatchOptions::incarnation`] with
/// [`last_incarnation`](Self::last_incarnation)).
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
/// println!("reopened {} times on the way", watch.resumes());
/// # Ok(())
/// # }
/// ```
pub struct Watch {
    project: Project,
    options: WatchOptions,
    state: State,
    /// The version the next stream must start after: the last event
    /// delivered, or further when the server said so.
    resume_from: Option<u64>,
    /// The incarnation to resume in.
    incarnation: Option<u64>,
    last_version: Option<u64>,
    last_incarnation: Option<u64>,
    resumes: u64,
    /// Resumes since an event was last delivered: grows the wait before
    /// the next one, so a server that accepts and drops watches at once
    /// is not hammered.
    idle_resumes: u32,
}

type Reopening = Pin<Box<dyn Future<Output = Result<Opened, Error>> + Send>>;

enum State {
    /// Boxed: the stream is large and the other states small.
    Open(Box<tonic::Streaming<pb::WatchEvent>>),
    Reopening(Reopening),
    Ended,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Open(_) => "open",
            State::Reopening(_) => "reopening",
            State::Ended => "ended",
        };
        f.debug_struct("Watch")
            .field("options", &self.options)
            .field("state", &state)
            .field("last_version", &self.last_version)
            .field("last_incarnation", &self.last_incarnation)
            .field("resumes", &self.resumes)
            .finish_non_exhaustive()
    }
}

impl Watch {
    fn new(project: Project, options: WatchOptions, opened: Opened) -> Self {
        Watch {
            project,
            state: State::Open(Box::new(opened.stream)),
            resume_from: opened.start.or(options.from_version),
            incarnation: opened.incarnation.or(options.incarnation),
            options,
            last_version: None,
            last_incarnation: None,
            resumes: 0,
            idle_resumes: 0,
        }
    }

    /// The next change; `None` once the watch has ended.
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
    /// [`Error::Status`] (or [`Error::Timeout`]) when the watch ends for
    /// good, as listed under [`Watch`]; then it ends. A broken stream that
    /// can be resumed is not an error: the watch reopens it and goes on.
    /// [`Error::Protocol`] for an event the SDK cannot read (the watch goes
    /// on).
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

    /// How many times the watch reopened its stream by itself (see
    /// [`Watch`]): each one a stream the server accepted after the
    /// previous one broke.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let mut watch = kv.watch(kv_client::WatchOptions::all()).await?;
    /// while let Some(event) = watch.next_event().await {
    ///     let _ = event?;
    /// }
    /// println!("the stream was reopened {} times", watch.resumes());
    /// # Ok(())
    /// # }
    /// ```
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    /// What to do about a stream that ended with `status`: reopen it, or
    /// hand the error to the caller.
    fn ended(&mut self, status: tonic::Status) -> Option<Error> {
        if !self.options.resume {
            return Some(Error::Status(status));
        }
        let End::Resumable { after } = resume::classify(&status) else {
            return Some(Error::Status(status));
        };
        // Every change up to the server's resume point was sent before
        // its status: skipping ahead to it misses nothing.
        let from = match (self.resume_from, after) {
            (Some(mine), Some(theirs)) => Some(mine.max(theirs)),
            (mine, theirs) => mine.or(theirs),
        };
        let Some(from) = from else {
            return Some(Error::Status(status));
        };
        self.resume_from = Some(from);
        let mut request = self.options.to_request();
        request.from_version = Some(from);
        request.incarnation = self.incarnation;
        self.idle_resumes = self.idle_resumes.saturating_add(1);
        let wait = self.project.client.retry.backoff(self.idle_resumes);
        self.state = State::Reopening(Box::pin(resume::reopen(
            self.project.clone(),
            request,
            wait,
        )));
        None
    }
}

impl Stream for Watch {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Ended => return Poll::Ready(None),
                State::Reopening(reopening) => match reopening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(opened)) => {
                        this.resumes += 1;
                        this.incarnation = this.incarnation.or(opened.incarnation);
                        this.state = State::Open(Box::new(opened.stream));
                    }
                    Poll::Ready(Err(error)) => {
                        this.state = State::Ended;
                        return Poll::Ready(Some(Err(error)));
                    }
                },
                State::Open(stream) => match Pin::new(&mut **stream).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        this.state = State::Ended;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(status))) => {
                        if let Some(error) = this.ended(status) {
                            this.state = State::Ended;
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                    Poll::Ready(Some(Ok(event))) => {
                        // A resumed stream starts after the resume point,
                        // which is at or past every delivered version; this
                        // guards the promise of no duplicate regardless.
                        if this.last_version.is_some_and(|last| event.version <= last) {
                            continue;
                        }
                        let event = match Event::from_proto(event) {
                            Ok(event) => event,
                            Err(error) => return Poll::Ready(Some(Err(error))),
                        };
                        this.last_version = Some(event.version);
                        this.last_incarnation = Some(event.incarnation);
                        this.resume_from = Some(
                            this.resume_from
                                .map_or(event.version, |from| from.max(event.version)),
                        );
                        this.incarnation = Some(event.incarnation);
                        this.idle_resumes = 0;
                        return Poll::Ready(Some(Ok(event)));
                    }
                },
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.state {
            State::Open(stream) => (stream.size_hint().0, None),
            State::Reopening(_) => (0, None),
            State::Ended => (0, Some(0)),
        }
    }
}

impl Project {
    /// Starts a change feed: every change to one key, a prefix or the whole
    /// project, from now or from a version.
    ///
    /// The per-call timeout bounds only the start (until the server accepts
    /// the watch); the watch then lasts until dropped or it ends for good,
    /// resuming by itself when its stream breaks (see [`Watch`]).
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
        let opened = self
            .open_stream(options.to_request(), |conn, r| async move {
                let opened = Opened::new(conn.kv().watch(r).await?);
                Ok(tonic::Response::new(opened))
            })
            .await?;
        Ok(Watch::new(self.clone(), options, opened))
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
