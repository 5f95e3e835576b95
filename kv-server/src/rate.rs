//! Per-project rate limits: calls and bytes written per one-second window.
//!
//! Windows are fixed seconds of the backend's clock (`now_ms / 1000`), so a
//! test on a manual clock sees exact counts: with a limit of 50 operations
//! per second exactly 50 calls of a window are admitted and the 51st is
//! refused until the clock reaches the next second. A refusal is
//! RESOURCE_EXHAUSTED naming the project, the limit and where it comes from,
//! with the status metadata (trailer) [`RETRY_AFTER_HEADER`]: the
//! milliseconds until the window reopens.
//!
//! What counts: every call is one operation, read or write, unary or inside
//! a Pipeline stream, whatever its number of keys (a Batch, SetMany or
//! GetMany is one call: it is one round trip and one transaction, and its
//! size is bounded by `--max-batch-ops`; the bytes limit weighs writes by
//! size). Opening a Watch is one. Bytes written are the keys plus encoded
//! values of a write's operations: a set its key and value, a delete its
//! key, an incr its key plus 8, a merge its key and patch, a clear nothing.
//! A refused call counts toward nothing, so a client retrying too early does
//! not push the window further out.
//!
//! Limits come from the project's quota where set, else the server default
//! (`--default-ops-per-second`, `--default-write-bytes-per-second`); 0 is
//! unlimited, so a project's own 0 lifts the default for it.
//!
//! A project token may carry limits of its own ([`TokenRate`], set when
//! the token is created): a call made with it is admitted only if both the
//! token's window and the project's admit it, and is then counted in both;
//! refused by either, it counts in neither. Both windows are checked and
//! counted under their locks (the token's taken first, always), so
//! concurrent calls cannot overrun either limit. Calls without a token
//! (open mode, the admin token) only meet their project's limits. Token
//! windows are keyed by token id; they are swept like the projects', and a
//! revoked token's window goes at the next sweep even if it was busy.
//!
//! Cost: a project without a limit, called without a limited token,
//! touches no state beyond the catalog lookup. A limited one updates its window under one shard lock of a
//! [`DashMap`] (no global lock). Windows of projects idle for a full second
//! are swept once per second by the first call of the new second, so the
//! state is bounded by the projects active in the last two seconds.
//!
//! With the Redis Cluster backend each front-end process counts on its
//! own: the limit holds per front-end, not across the deployment.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use dashmap::mapref::one::RefMut;
use kv_engine::{
    Clock, Op, Quota, SystemClock,
    catalog::{Catalog, TokenLimits},
    project::ProjectName,
};
use tonic::{Code, Status, metadata::MetadataMap};

pub use kv_proto::contract::RETRY_AFTER_HEADER;

use crate::auth::Caller;

const WINDOW_MS: u64 = 1000;

/// Counts of one project or token in one window.
#[derive(Debug, Default)]
struct Window {
    /// `now_ms / 1000` of the window.
    second: u64,
    ops: u64,
    bytes: u64,
}

/// Admits calls under the per-project rate limits.
///
/// ```
/// use std::sync::Arc;
/// use kv_engine::{ManualClock, Quota, catalog::Catalog, project::ProjectName};
/// use kv_server::rate::RateLimits;
/// let clock = Arc::new(ManualClock::new(10_000));
/// let defaults = Quota { ops_per_second: Some(2), ..Quota::default() };
/// let limits = RateLimits::new(Arc::new(Catalog::default()), defaults, clock.clone());
/// let shop = ProjectName::parse("shop").unwrap();
/// assert!(limits.admit(&shop, 0).is_ok());
/// assert!(limits.admit(&shop, 0).is_ok());
/// let refused = limits.admit(&shop, 0).unwrap_err();
/// assert_eq!(kv_server::rate::retry_after_ms(refused.metadata()), Some(1000));
/// clock.advance(1000);
/// assert!(limits.admit(&shop, 0).is_ok());
/// ```
pub struct RateLimits {
    catalog: Arc<Catalog>,
    defaults: Quota,
    clock: Arc<dyn Clock>,
    windows: DashMap<ProjectName, Window>,
    /// Windows of limited tokens, by token id.
    token_windows: DashMap<Arc<str>, Window>,
    /// The second whose stale windows were last swept.
    swept: AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("defaults", &self.defaults)
            .field("windows", &self.windows.len())
            .field("token_windows", &self.token_windows.len())
            .finish_non_exhaustive()
    }
}

impl Default for RateLimits {
    /// No limits: an empty catalog and no server default.
    fn default() -> Self {
        Self::new(
            Arc::new(Catalog::default()),
            Quota::UNLIMITED,
            Arc::new(SystemClock),
        )
    }
}

/// Which limit a call ran into.
enum Over {
    Ops(u64),
    Bytes { limit: u64, used: u64 },
    Never(u64),
}

impl RateLimits {
    /// Limits from each project's quota in `catalog`, else `defaults`
    /// (only its rate fields matter), with windows on `clock`.
    pub fn new(catalog: Arc<Catalog>, defaults: Quota, clock: Arc<dyn Clock>) -> Self {
        Self {
            catalog,
            defaults,
            clock,
            windows: DashMap::new(),
            token_windows: DashMap::new(),
            swept: AtomicU64::new(0),
        }
    }

    /// Admits one call of `project` writing `write_bytes` (0 for a read),
    /// or refuses it without counting it.
    ///
    /// # Errors
    ///
    /// RESOURCE_EXHAUSTED naming the project and the limit; with the
    /// [`RETRY_AFTER_HEADER`] trailer unless the write alone is larger than
    /// the bytes limit (it can never be admitted).
    pub fn admit(&self, project: &ProjectName, write_bytes: u64) -> Result<(), Status> {
        self.admit_with(project, None, write_bytes)
    }

    /// [`RateLimits::admit`] for a call made with `token` (if it has
    /// limits): admitted only if both the token's and the project's
    /// windows have room; counted in both, or, refused, in neither.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use kv_engine::{ManualClock, Quota, catalog::{Catalog, TokenLimits}, project::ProjectName};
    /// use kv_server::rate::{RateLimits, TokenRate};
    /// let clock = Arc::new(ManualClock::new(10_000));
    /// let limits = RateLimits::new(Arc::new(Catalog::default()), Quota::UNLIMITED, clock);
    /// let shop = ProjectName::parse("shop").unwrap();
    /// let one = TokenLimits { ops_per_second: Some(1), ..TokenLimits::default() };
    /// let token = TokenRate::new("0a1b", one).unwrap();
    /// assert!(limits.admit_with(&shop, Some(&token), 0).is_ok());
    /// let refused = limits.admit_with(&shop, Some(&token), 0).unwrap_err();
    /// assert!(refused.message().starts_with("token 0a1b is over its limit of 1 operations per second"));
    /// // The project itself is not limited.
    /// assert!(limits.admit(&shop, 0).is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RateLimits::admit`], naming the token when its limit refused.
    pub fn admit_with(
        &self,
        project: &ProjectName,
        token: Option<&TokenRate>,
        write_bytes: u64,
    ) -> Result<(), Status> {
        let own = self.catalog.project(project).unwrap_or_default();
        let quota = own.or(self.defaults);
        let ops = quota.ops_per_second.filter(|&n| n > 0);
        let bytes = quota.write_bytes_per_second.filter(|&n| n > 0);
        let project_limited = ops.is_some() || bytes.is_some();
        if !project_limited && token.is_none() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let second = now / WINDOW_MS;
        self.sweep(second);
        let retry_after = (second + 1) * WINDOW_MS - now;
        let project_refusal = |over| {
            refusal(
                &Subject::Project(project, &own),
                over,
                write_bytes,
                retry_after,
            )
        };
        let Some(token) = token else {
            let mut window = window(&self.windows, project);
            return count(&mut window, second, ops, bytes, write_bytes).map_err(project_refusal);
        };
        // Token first, then project: every caller nests the locks in this
        // order, so two calls cannot wait on each other.
        let mut token_window = window(&self.token_windows, &token.id);
        check(
            &mut token_window,
            second,
            token.ops,
            token.bytes,
            write_bytes,
        )
        .map_err(|over| refusal(&Subject::Token(token), over, write_bytes, retry_after))?;
        if project_limited {
            let mut window = window(&self.windows, project);
            count(&mut window, second, ops, bytes, write_bytes).map_err(project_refusal)?;
        }
        add(&mut token_window, write_bytes);
        Ok(())
    }

    /// Drops the windows of projects idle since before the last second,
    /// once per second (by whichever call sees the new second first).
    fn sweep(&self, second: u64) {
        let swept = self.swept.load(Ordering::Relaxed);
        if second <= swept
            || self
                .swept
                .compare_exchange(swept, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.windows.retain(|_, w| w.second + 1 >= second);
        self.token_windows
            .retain(|id, w| w.second + 1 >= second && self.catalog.token(id).is_some());
    }

    /// Windows held now (for tests of the sweep).
    #[doc(hidden)]
    pub fn windows_held(&self) -> usize {
        self.windows.len()
    }

    /// Token windows held now (for tests of the sweep).
    #[doc(hidden)]
    pub fn token_windows_held(&self) -> usize {
        self.token_windows.len()
    }
}

/// The limits of the project token a call was made with, for
/// [`RateLimits::admit_with`]. Only a token with a limit has one: calls
/// with any other token meet their project's limits alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRate {
    id: Arc<str>,
    ops: Option<u64>,
    bytes: Option<u64>,
}

impl TokenRate {
    /// The rate of token `id` under `limits`; `None` when they limit
    /// nothing (absent or 0).
    ///
    /// ```
    /// use kv_engine::catalog::TokenLimits;
    /// use kv_server::rate::TokenRate;
    /// assert!(TokenRate::new("0a1b", TokenLimits::default()).is_none());
    /// let twenty = TokenLimits { ops_per_second: Some(20), ..TokenLimits::default() };
    /// assert_eq!(TokenRate::new("0a1b", twenty).unwrap().id(), "0a1b");
    /// ```
    pub fn new(id: &str, limits: TokenLimits) -> Option<Self> {
        if limits.is_unlimited() {
            return None;
        }
        Some(Self {
            id: id.into(),
            ops: limits.ops_per_second.filter(|&n| n > 0),
            bytes: limits.write_bytes_per_second.filter(|&n| n > 0),
        })
    }

    /// The rate of the token `caller` authenticated with, if it is a
    /// project token with limits.
    pub fn of(caller: &Caller) -> Option<Self> {
        match caller {
            Caller::Project(token) => Self::new(&token.id, token.limits),
            Caller::Open | Caller::Admin => None,
        }
    }

    /// The token's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The window of `key`, created empty on first use.
fn window<'a, K, Q>(map: &'a DashMap<K, Window>, key: &Q) -> RefMut<'a, K, Window>
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q> + Clone,
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
{
    match map.get_mut(key) {
        Some(window) => window,
        None => map.entry(key.to_owned()).or_default(),
    }
}

/// Counts a call into `window` if both limits leave room for it.
fn count(
    window: &mut Window,
    second: u64,
    ops: Option<u64>,
    bytes: Option<u64>,
    write_bytes: u64,
) -> Result<(), Over> {
    check(window, second, ops, bytes, write_bytes)?;
    add(window, write_bytes);
    Ok(())
}

fn add(window: &mut Window, write_bytes: u64) {
    window.ops += 1;
    window.bytes += write_bytes;
}

/// Whether both limits leave room in `window` (moved to `second` first)
/// for a call, without counting it.
fn check(
    window: &mut Window,
    second: u64,
    ops: Option<u64>,
    bytes: Option<u64>,
    write_bytes: u64,
) -> Result<(), Over> {
    if window.second != second {
        *window = Window {
            second,
            ops: 0,
            bytes: 0,
        };
    }
    if let Some(limit) = ops
        && window.ops >= limit
    {
        return Err(Over::Ops(limit));
    }
    if let Some(limit) = bytes
        && write_bytes > 0
    {
        if write_bytes > limit {
            return Err(Over::Never(limit));
        }
        if window.bytes + write_bytes > limit {
            return Err(Over::Bytes {
                limit,
                used: window.bytes,
            });
        }
    }
    Ok(())
}

/// Whose limit refused a call.
enum Subject<'a> {
    /// The project, with its own quota (absent fields: server defaults).
    Project(&'a ProjectName, &'a Quota),
    Token(&'a TokenRate),
}

fn refusal(subject: &Subject<'_>, over: Over, write_bytes: u64, retry_after: u64) -> Status {
    let limit = match over {
        Over::Ops(_) => crate::metrics::RateLimit::Ops,
        Over::Bytes { .. } => crate::metrics::RateLimit::Bytes,
        Over::Never(_) => crate::metrics::RateLimit::TooLarge,
    };
    crate::metrics::metrics().rate_refused(matches!(subject, Subject::Token(_)), limit);
    let project_source = |own: Option<u64>, field: &str, flag: &str| {
        if own.is_some() {
            format!("quota {field}")
        } else {
            format!("server default --{flag}")
        }
    };
    // Who is over, where the limit comes from, and how to get under a
    // limit a single write exceeds (a token's limits are fixed at
    // creation, so the remedy is another token).
    let (who, ops_source, bytes_source, remedy) = match subject {
        Subject::Project(project, own) => (
            format!("project {project}"),
            project_source(
                own.ops_per_second,
                "ops_per_second",
                "default-ops-per-second",
            ),
            project_source(
                own.write_bytes_per_second,
                "write_bytes_per_second",
                "default-write-bytes-per-second",
            ),
            "split it or raise the limit",
        ),
        Subject::Token(token) => (
            format!("token {}", token.id),
            "token ops_per_second".to_string(),
            "token write_bytes_per_second".to_string(),
            "split it or use a token with a higher limit",
        ),
    };
    let message = match over {
        Over::Ops(limit) => format!(
            "{who} is over its limit of {limit} operations per second ({ops_source}); retry after {retry_after} ms"
        ),
        Over::Bytes { limit, used } => format!(
            "{who} is over its limit of {limit} bytes written per second ({bytes_source}): {used} written in this second, this write is {write_bytes}; retry after {retry_after} ms"
        ),
        Over::Never(limit) => {
            return Status::resource_exhausted(format!(
                "a write of {write_bytes} bytes is larger than {who}'s limit of {limit} bytes written per second ({bytes_source}); it can never be admitted: {remedy}"
            ));
        }
    };
    let mut metadata = MetadataMap::new();
    metadata.insert(RETRY_AFTER_HEADER, retry_after.into());
    Status::with_metadata(Code::ResourceExhausted, message, metadata)
}

/// The [`RETRY_AFTER_HEADER`] of a status's metadata, if it has one.
pub fn retry_after_ms(metadata: &MetadataMap) -> Option<u64> {
    metadata
        .get(RETRY_AFTER_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Bytes a write's operations count against the bytes limit: keys plus
/// encoded values (see the module docs).
pub(crate) fn write_bytes(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|op| match op {
            Op::Set { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::Incr { key, .. } => key.len() + 8,
            Op::Merge { key, patch, .. } => key.len() + patch.len(),
            Op::Clear => 0,
        } as u64)
        .sum()
}

#[cfg(test)]
mod token_tests;

#[cfg(test)]
mod tests {
    use kv_engine::{ManualClock, catalog::CatalogChange};

    use super::*;

    fn shop() -> ProjectName {
        ProjectName::parse("shop").unwrap()
    }

    fn limits(defaults: Quota) -> (RateLimits, Arc<ManualClock>, Arc<Catalog>) {
        let clock = Arc::new(ManualClock::new(1_000_000_250));
        let catalog = Arc::new(Catalog::default());
        let limits = RateLimits::new(catalog.clone(), defaults, clock.clone());
        (limits, clock, catalog)
    }

    #[test]
    fn exactly_the_limit_is_admitted_per_window() {
        let (limits, clock, _) = limits(Quota {
            ops_per_second: Some(50),
            ..Quota::UNLIMITED
        });
        for second in 0..3 {
            for i in 0..50 {
                assert!(limits.admit(&shop(), 0).is_ok(), "second {second} call {i}");
            }
            let refused = limits.admit(&shop(), 0).unwrap_err();
            assert_eq!(refused.code(), Code::ResourceExhausted);
            // The clock stands 250 ms into the window.
            assert_eq!(retry_after_ms(refused.metadata()), Some(750));
            assert!(
                refused.message().contains(
                    "project shop is over its limit of 50 operations per second (server default --default-ops-per-second); retry after 750 ms"
                ),
                "{}",
                refused.message()
            );
            clock.advance(1000);
        }
    }

    #[test]
    fn bytes_are_limited_and_a_write_larger_than_the_limit_never_fits() {
        let (limits, clock, catalog) = limits(Quota::UNLIMITED);
        catalog.apply(&CatalogChange::PutProject {
            project: shop(),
            quota: Quota {
                write_bytes_per_second: Some(100),
                ..Quota::UNLIMITED
            },
        });
        limits.admit(&shop(), 60).unwrap();
        limits.admit(&shop(), 40).unwrap();
        // Reads write nothing: the bytes limit does not hold them back.
        limits.admit(&shop(), 0).unwrap();
        let refused = limits.admit(&shop(), 1).unwrap_err();
        assert!(
            refused
                .message()
                .contains("(quota write_bytes_per_second): 100 written in this second"),
            "{}",
            refused.message()
        );
        assert_eq!(retry_after_ms(refused.metadata()), Some(750));
        let never = limits.admit(&shop(), 101).unwrap_err();
        assert!(never.message().contains("can never be admitted"));
        assert_eq!(retry_after_ms(never.metadata()), None);
        clock.advance(750);
        limits.admit(&shop(), 100).unwrap();
    }

    #[test]
    fn a_project_quota_overrides_the_default_and_zero_lifts_it() {
        let (limits, _, catalog) = limits(Quota {
            ops_per_second: Some(1),
            ..Quota::UNLIMITED
        });
        let free = ProjectName::parse("free").unwrap();
        catalog.apply(&CatalogChange::PutProject {
            project: free.clone(),
            quota: Quota {
                ops_per_second: Some(0),
                ..Quota::UNLIMITED
            },
        });
        for _ in 0..1000 {
            limits.admit(&free, 10).unwrap();
        }
        limits.admit(&shop(), 0).unwrap();
        assert!(limits.admit(&shop(), 0).is_err());
        assert_eq!(
            limits.windows_held(),
            1,
            "an unlimited project holds no window"
        );
    }

    #[test]
    fn idle_windows_are_swept() {
        let (limits, clock, _) = limits(Quota {
            ops_per_second: Some(10),
            ..Quota::UNLIMITED
        });
        for i in 0..100 {
            limits
                .admit(&ProjectName::parse(&format!("p{i}")).unwrap(), 0)
                .unwrap();
        }
        assert_eq!(limits.windows_held(), 100);
        clock.advance(2000);
        limits.admit(&shop(), 0).unwrap();
        assert_eq!(limits.windows_held(), 1);
    }

    #[test]
    fn write_bytes_count_keys_and_values() {
        let ops = [
            Op::Set {
                key: "ab".into(),
                value: vec![0; 10].into(),
                ttl: kv_engine::Ttl::Never,
            },
            Op::Delete { key: "abc".into() },
            Op::Incr {
                key: "a".into(),
                delta: 1.0,
                ttl_ms: None,
            },
            Op::Clear,
        ];
        assert_eq!(write_bytes(&ops), 12 + 3 + 9);
    }
}
