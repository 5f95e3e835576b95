//! Model-based property test of transactions: random sequences of
//! `Backend::write` transactions (0-2 checks, 1-4 of set / delete / incr /
//! merge / clear, optional request ids from a small pool so retries and
//! reuse with a different request both happen), single or submitted
//! together (one group commit of the log writer), clock moves that make
//! TTLs and request ids run out, explicit expiries, and restarts of the
//! durable store (with snapshots forced often) must agree with a plain
//! model on every answer and every piece of state.
//!
//! The model keeps, per project, each key's encoded value, version and
//! deadline (dead entries included until an expiry, a touching write or a
//! restart removes them), the version counter, the remembered request ids
//! with their fingerprints, times and outcomes, and the change events the
//! project should publish. After every step the engine must match it
//! exactly: each transaction's outcome or refusal, `get` / `get_many` of
//! every key (value bytes, version, deadline), `list` (in one page, paged
//! and by prefix, with the project's version), usage and the expiry index,
//! and the watch stream of every project (each change with its version,
//! contiguous from 1). Expiries of several keys at once take their
//! versions in the expiry index's order, which hashes keys with a random
//! seed: those are compared as a set of keys over a contiguous run of
//! versions.
//!
//! `PROPTEST_CASES` overrides the number of cases.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use kv_engine::{
    Backend, Check, Clock, Deadline, EngineError, Entry, ListPage, ListQuery, MAX_VALUE_LIMIT,
    ManualClock, Op, OpOutcome, RequestId, Settings, Ttl, Txn, TxnOutcome, WatchTarget,
    jsonops::NumberError,
    memory::{MemoryStore, Usage},
    project::ProjectName,
    wal::DurableStore,
    watch::{Event, EventKind, Subscription},
};
use proptest::{prelude::*, test_runner::TestCaseError};
use prost::Message;
use prost_types::{ListValue, Struct, value::Kind};
use serde_json::{Map, Value as Json};

const PROJECTS: [&str; 2] = ["a", "b"];
/// In byte order; two share the prefix `c`.
const KEYS: [&str; 6] = ["a", "ab", "b", "c1", "c2", "z"];
const REQUEST_IDS: [&str; 3] = ["r0", "r1", "r2"];
/// How long a request id is remembered: short, so clock moves cross it.
const WINDOW_MS: u64 = 250;
/// A `max_value_bytes` some merges exceed.
const SMALL_LIMIT: usize = 20;
/// 2^53: incr results beyond it are refused.
const EXACT: i64 = 1 << 53;

// ---------------------------------------------------------------------------
// What the strategies generate: transactions before they meet a state.

#[derive(Debug, Clone)]
enum TtlSpec {
    Never,
    Keep,
    After(u64),
}

#[derive(Debug, Clone)]
enum OpSpec {
    Set {
        k: usize,
        value: Json,
        ttl: TtlSpec,
    },
    Delete {
        k: usize,
    },
    Incr {
        k: usize,
        delta: i64,
        ttl: Option<u64>,
    },
    Merge {
        k: usize,
        patch: Json,
        ttl: Option<u64>,
    },
    Clear,
}

/// Which version a version check expects, relative to the key's live
/// version when the transaction is sent.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Current,
    Next,
    Previous,
    Zero,
}

#[derive(Debug, Clone)]
enum CheckSpec {
    Version { k: usize, expect: Expect },
    Absent { k: usize },
}

#[derive(Debug, Clone)]
struct TxnSpec {
    checks: Vec<CheckSpec>,
    ops: Vec<OpSpec>,
    /// Index into [`REQUEST_IDS`].
    request: Option<usize>,
    small_limit: bool,
}

#[derive(Debug, Clone)]
enum Item {
    Write {
        p: usize,
        txn: TxnSpec,
    },
    /// Sends again one of the last transactions sent with a request id,
    /// byte for byte (to its own project, or to the other one).
    Retry {
        back: usize,
        other_project: bool,
    },
    /// `expire_due(usize::MAX)`.
    Expire,
}

#[derive(Debug, Clone)]
enum Step {
    /// Submitted together, in order: several items may share one group
    /// commit of the log writer.
    Batch(Vec<Item>),
    /// Moves the clock; then, if `expire`, expires everything due.
    Advance { ms: u64, expire: bool },
    /// `expire_due(limit)` until it consumes less than `limit`.
    ExpireDue { limit: usize },
    /// Closes and reopens the durable store (nothing for the memory store).
    Restart,
}

fn leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        (-3i64..10).prop_map(|n| Json::from(n as f64)),
        prop::sample::select(vec!["", "x", "7", "a longer string"]).prop_map(Json::from),
        any::<bool>().prop_map(Json::from),
        Just(Json::Null),
    ]
}

fn object<S: Strategy<Value = Json>>(
    field: S,
    len: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Json> {
    let name = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
    prop::collection::btree_map(name, field, len)
        .prop_map(|m| Json::Object(m.into_iter().collect()))
}

fn value() -> impl Strategy<Value = Json> {
    prop_oneof![
        4 => leaf(),
        2 => object(prop_oneof![3 => leaf(), 1 => object(leaf(), 0..=2)], 0..=3),
        1 => prop::collection::vec(leaf(), 0..3).prop_map(Json::Array),
    ]
}

fn patch() -> impl Strategy<Value = Json> {
    let member = prop_oneof![
        3 => Just(Json::Null),
        3 => leaf(),
        2 => object(prop_oneof![Just(Json::Null), leaf()], 1..=2),
    ];
    prop_oneof![
        6 => object(member, 1..=3),
        1 => leaf(),
    ]
}

fn ttl_ms() -> impl Strategy<Value = u64> {
    1..50u64
}

fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -3i64..=5,
        1 => prop::sample::select(vec![
            EXACT,
            -EXACT,
            EXACT - 1,
            1 - EXACT,
            EXACT / 2,
            1 << 62,
            -(1 << 62),
        ]),
    ]
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    let k = 0..KEYS.len();
    let ttl = prop_oneof![
        2 => Just(TtlSpec::Never),
        1 => Just(TtlSpec::Keep),
        2 => ttl_ms().prop_map(TtlSpec::After),
    ];
    prop_oneof![
        4 => (k.clone(), value(), ttl).prop_map(|(k, value, ttl)| OpSpec::Set { k, value, ttl }),
        2 => k.clone().prop_map(|k| OpSpec::Delete { k }),
        3 => (k.clone(), delta(), prop::option::weighted(0.3, ttl_ms()))
            .prop_map(|(k, delta, ttl)| OpSpec::Incr { k, delta, ttl }),
        3 => (k, patch(), prop::option::weighted(0.3, ttl_ms()))
            .prop_map(|(k, patch, ttl)| OpSpec::Merge { k, patch, ttl }),
        1 => Just(OpSpec::Clear),
    ]
}

fn check_spec() -> impl Strategy<Value = CheckSpec> {
    let expect = prop_oneof![
        4 => Just(Expect::Current),
        1 => Just(Expect::Next),
        1 => Just(Expect::Previous),
        1 => Just(Expect::Zero),
    ];
    prop_oneof![
        3 => (0..KEYS.len(), expect).prop_map(|(k, expect)| CheckSpec::Version { k, expect }),
        1 => (0..KEYS.len()).prop_map(|k| CheckSpec::Absent { k }),
    ]
}

fn txn_spec() -> impl Strategy<Value = TxnSpec> {
    (
        prop_oneof![5 => Just(0usize), 3 => Just(1), 2 => Just(2)]
            .prop_flat_map(|n| prop::collection::vec(check_spec(), n)),
        prop::collection::vec(op_spec(), 1..=4),
        prop::option::weighted(0.3, 0..REQUEST_IDS.len()),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(checks, ops, request, small_limit)| TxnSpec {
            checks,
            ops,
            request,
            small_limit,
        })
}

fn write_item() -> impl Strategy<Value = Item> {
    (0..PROJECTS.len(), txn_spec()).prop_map(|(p, txn)| Item::Write { p, txn })
}

fn retry_item() -> impl Strategy<Value = Item> {
    (0..4usize, prop::bool::weighted(0.2)).prop_map(|(back, other_project)| Item::Retry {
        back,
        other_project,
    })
}

fn step() -> impl Strategy<Value = Step> {
    let item = prop_oneof![
        8 => write_item(),
        2 => retry_item(),
        1 => Just(Item::Expire),
    ];
    prop_oneof![
        12 => write_item().prop_map(|i| Step::Batch(vec![i])),
        3 => retry_item().prop_map(|i| Step::Batch(vec![i])),
        2 => prop::collection::vec(item, 2..=4).prop_map(Step::Batch),
        4 => (prop_oneof![6 => 1..40u64, 1 => 100..=260u64], prop::bool::weighted(0.4))
            .prop_map(|(ms, expire)| Step::Advance { ms, expire }),
        1 => prop::sample::select(vec![1, 2, usize::MAX]).prop_map(|limit| Step::ExpireDue { limit }),
        1 => Just(Step::Restart),
    ]
}

// ---------------------------------------------------------------------------
// Values: JSON in the strategies and the model, canonical encoded
// google.protobuf.Value bytes in the engine.

fn to_proto(v: &Json) -> prost_types::Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().expect("numbers are finite")),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_proto).collect(),
        }),
        Json::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn from_proto(v: prost_types::Value) -> Json {
    match v.kind.expect("values have a kind") {
        Kind::NullValue(_) => Json::Null,
        Kind::BoolValue(b) => Json::Bool(b),
        Kind::NumberValue(n) => Json::from(n),
        Kind::StringValue(s) => Json::String(s),
        Kind::ListValue(l) => Json::Array(l.values.into_iter().map(from_proto).collect()),
        Kind::StructValue(s) => Json::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, from_proto(v)))
                .collect(),
        ),
    }
}

fn encode(v: &Json) -> Bytes {
    to_proto(v).encode_to_vec().into()
}

fn decode(bytes: &[u8]) -> Json {
    from_proto(prost_types::Value::decode(bytes).expect("stored values decode"))
}

fn kind_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// RFC 7386, section 2, as written there.
fn merge_patch(target: Option<Json>, patch: &Json) -> Json {
    let Json::Object(patch) = patch else {
        return patch.clone();
    };
    let mut target = match target {
        Some(Json::Object(m)) => m,
        _ => Map::new(),
    };
    for (name, value) in patch {
        if value.is_null() {
            target.remove(name);
        } else {
            let current = target.remove(name);
            target.insert(name.clone(), merge_patch(current, value));
        }
    }
    Json::Object(target)
}

// ---------------------------------------------------------------------------
// The model.

/// A refused write, as comparable data.
#[derive(Debug, Clone, PartialEq)]
enum Refused {
    NotANumber {
        key: String,
        kind: &'static str,
    },
    OutOfRange {
        key: String,
        current: f64,
        delta: f64,
    },
    MergedTooLarge {
        key: String,
        len: usize,
        limit: usize,
    },
    RequestIdReused {
        id: String,
    },
    /// Anything the model never expects.
    Other(String),
}

fn refused(e: EngineError) -> Refused {
    match e {
        EngineError::NotANumber { key, kind } => Refused::NotANumber {
            key: key.into(),
            kind,
        },
        EngineError::NumberOutOfRange {
            key,
            source: NumberError::OutOfRange { current, delta },
        } => Refused::OutOfRange {
            key: key.into(),
            current,
            delta,
        },
        EngineError::MergedTooLarge { key, len, limit } => Refused::MergedTooLarge {
            key: key.into(),
            len,
            limit,
        },
        EngineError::RequestIdReused { id } => Refused::RequestIdReused { id: id.into() },
        other => Refused::Other(format!("{other:?}")),
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ModelEntry {
    value: Bytes,
    version: u64,
    expires_at: Option<u64>,
}

impl ModelEntry {
    fn is_live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn entry(&self) -> Entry {
        Entry {
            value: self.value.clone(),
            version: self.version,
            expires_at: self.expires_at.and_then(Deadline::at),
        }
    }
}

#[derive(Debug, Clone)]
struct Remembered {
    fingerprint: u64,
    at: u64,
    outcome: TxnOutcome,
}

/// A change event the project should publish.
#[derive(Debug, Clone)]
enum Expected {
    Event(Event),
    /// Expiries of these keys by one `expire_due`, at versions `first..`
    /// in an order the model does not know.
    Expiries {
        first: u64,
        keys: BTreeSet<String>,
    },
}

fn event(version: u64, kind: EventKind, key: &str, value: Option<Bytes>, at: u64) -> Event {
    Event {
        version,
        kind,
        key: key.into(),
        value,
        expires_at: Deadline::at(at),
    }
}

#[derive(Debug, Clone, Default)]
struct ModelProject {
    /// Dead entries stay until expired, touched by a write or dropped by a
    /// restart, as in the engine.
    entries: BTreeMap<String, ModelEntry>,
    version: u64,
    requests: HashMap<String, Remembered>,
    /// Published since the last comparison.
    events: Vec<Expected>,
}

impl ModelProject {
    fn live(&self, key: &str, now: u64) -> Option<&ModelEntry> {
        self.entries.get(key).filter(|e| e.is_live(now))
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// The live entry under `key` for a write to it; a dead one is expired
    /// first (a version of its own).
    fn touch(&mut self, key: &str, now: u64) -> Option<ModelEntry> {
        match self.entries.get(key) {
            Some(e) if e.is_live(now) => Some(e.clone()),
            Some(_) => {
                self.entries.remove(key);
                let version = self.next_version();
                self.events.push(Expected::Event(event(
                    version,
                    EventKind::Expired,
                    key,
                    None,
                    0,
                )));
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: &str, value: Bytes, expires_at: Option<u64>) -> u64 {
        let version = self.next_version();
        self.events.push(Expected::Event(event(
            version,
            EventKind::Set,
            key,
            Some(value.clone()),
            expires_at.unwrap_or(0),
        )));
        self.entries.insert(
            key.into(),
            ModelEntry {
                value,
                version,
                expires_at,
            },
        );
        version
    }

    fn run(&mut self, txn: &Txn, now: u64) -> Result<TxnOutcome, Refused> {
        for (i, check) in txn.checks.iter().enumerate() {
            let (key, holds) = match check {
                Check::Version { key, version } => (
                    key,
                    self.live(key, now).is_some_and(|e| e.version == *version),
                ),
                Check::Absent { key } => (key, self.live(key, now).is_none()),
            };
            if !holds {
                return Ok(TxnOutcome {
                    applied: false,
                    failed_check: Some(i as u32),
                    current_version: self.live(key, now).map_or(0, |e| e.version),
                    results: Vec::new(),
                });
            }
        }
        let mut results = Vec::new();
        for op in &txn.ops {
            results.push(self.op(op, now, txn.max_value_bytes)?);
        }
        Ok(TxnOutcome {
            applied: true,
            failed_check: None,
            current_version: 0,
            results,
        })
    }

    fn op(&mut self, op: &Op, now: u64, max_value_bytes: usize) -> Result<OpOutcome, Refused> {
        Ok(match op {
            Op::Set { key, value, ttl } => {
                let live = self.touch(key, now);
                let expires_at = match ttl {
                    Ttl::Never => None,
                    Ttl::Keep => live.and_then(|e| e.expires_at),
                    Ttl::After(ms) => Some(now + ms),
                };
                OpOutcome::Set {
                    version: self.put(key, Bytes::copy_from_slice(value), expires_at),
                }
            }
            Op::Delete { key } => match self.touch(key, now) {
                Some(_) => {
                    self.entries.remove(&**key);
                    let version = self.next_version();
                    self.events.push(Expected::Event(event(
                        version,
                        EventKind::Deleted,
                        key,
                        None,
                        0,
                    )));
                    OpOutcome::Delete {
                        deleted: true,
                        version,
                    }
                }
                None => OpOutcome::Delete {
                    deleted: false,
                    version: 0,
                },
            },
            Op::Incr { key, delta, ttl_ms } => {
                let live = self.touch(key, now);
                let current = match &live {
                    None => 0.0,
                    Some(e) => match decode(&e.value) {
                        Json::Number(n) => n.as_f64().expect("finite"),
                        other => {
                            return Err(Refused::NotANumber {
                                key: key.to_string(),
                                kind: kind_name(&other),
                            });
                        }
                    },
                };
                // Integers only: the exact sum, then the ±2^53 bound.
                let sum = current as i128 + *delta as i128;
                if sum.abs() > i128::from(EXACT) {
                    return Err(Refused::OutOfRange {
                        key: key.to_string(),
                        current,
                        delta: *delta,
                    });
                }
                let sum = sum as f64;
                let expires_at = match &live {
                    Some(e) => e.expires_at,
                    None => ttl_ms.map(|ms| now + ms),
                };
                OpOutcome::Incr {
                    value: sum,
                    version: self.put(key, encode(&Json::from(sum)), expires_at),
                }
            }
            Op::Merge { key, patch, ttl_ms } => {
                let live = self.touch(key, now);
                let merged = merge_patch(live.as_ref().map(|e| decode(&e.value)), &decode(patch));
                let value = encode(&merged);
                if value.len() > max_value_bytes {
                    return Err(Refused::MergedTooLarge {
                        key: key.to_string(),
                        len: value.len(),
                        limit: max_value_bytes,
                    });
                }
                let expires_at = match ttl_ms {
                    Some(ms) => Some(now + ms),
                    None => live.and_then(|e| e.expires_at),
                };
                OpOutcome::Merge {
                    version: self.put(key, value.clone(), expires_at),
                    value,
                }
            }
            Op::Clear => {
                // A project holding only dead entries is not empty: the
                // clear removes them (no live key) and takes a version.
                if self.entries.is_empty() {
                    OpOutcome::Clear {
                        removed: 0,
                        version: 0,
                    }
                } else {
                    let removed = self.entries.values().filter(|e| e.is_live(now)).count() as u64;
                    self.entries.clear();
                    let version = self.next_version();
                    self.events.push(Expected::Event(event(
                        version,
                        EventKind::Cleared,
                        "",
                        None,
                        0,
                    )));
                    OpOutcome::Clear { removed, version }
                }
            }
        })
    }

    fn dead(&self, now: u64) -> usize {
        self.entries.values().filter(|e| !e.is_live(now)).count()
    }

    /// Expires every dead entry; returns how many.
    fn expire_all(&mut self, now: u64) -> usize {
        let keys: BTreeSet<String> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.is_live(now))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return 0;
        }
        for key in &keys {
            self.entries.remove(key);
        }
        let first = self.version + 1;
        self.version += keys.len() as u64;
        let count = keys.len();
        self.events.push(Expected::Expiries { first, keys });
        count
    }
}

struct Model {
    projects: Vec<ModelProject>,
}

impl Model {
    fn new() -> Self {
        Self {
            projects: vec![ModelProject::default(); PROJECTS.len()],
        }
    }

    fn write(&mut self, p: usize, txn: &Txn, now: u64) -> Result<TxnOutcome, Refused> {
        let project = &mut self.projects[p];
        if let Some(request) = &txn.request
            && let Some(known) = project
                .requests
                .get(&*request.id)
                .filter(|r| r.at + WINDOW_MS > now)
        {
            return if known.fingerprint == request.fingerprint {
                Ok(known.outcome.clone())
            } else {
                Err(Refused::RequestIdReused {
                    id: request.id.to_string(),
                })
            };
        }
        // Evaluated on a copy: a refused transaction changes nothing.
        let mut next = project.clone();
        let outcome = next.run(txn, now)?;
        if let Some(request) = &txn.request {
            next.requests.insert(
                request.id.to_string(),
                Remembered {
                    fingerprint: request.fingerprint,
                    at: now,
                    outcome: outcome.clone(),
                },
            );
        }
        *project = next;
        Ok(outcome)
    }

    fn dead(&self, now: u64) -> usize {
        self.projects.iter().map(|p| p.dead(now)).sum()
    }

    fn expire_all(&mut self, now: u64) -> usize {
        self.projects.iter_mut().map(|p| p.expire_all(now)).sum()
    }
}

/// The transaction `spec` becomes when sent to project `m` at `now`.
fn resolve(spec: &TxnSpec, m: &ModelProject, now: u64) -> Txn {
    let checks = spec
        .checks
        .iter()
        .map(|c| match *c {
            CheckSpec::Version { k, expect } => {
                let current = m.live(KEYS[k], now).map_or(0, |e| e.version);
                let version = match expect {
                    Expect::Current => current,
                    Expect::Next => current + 1,
                    Expect::Previous => current.saturating_sub(1),
                    Expect::Zero => 0,
                };
                Check::Version {
                    key: KEYS[k].into(),
                    version,
                }
            }
            CheckSpec::Absent { k } => Check::Absent {
                key: KEYS[k].into(),
            },
        })
        .collect();
    let ops = spec
        .ops
        .iter()
        .map(|op| match op {
            OpSpec::Set { k, value, ttl } => Op::Set {
                key: KEYS[*k].into(),
                value: encode(value).to_vec().into(),
                ttl: match ttl {
                    TtlSpec::Never => Ttl::Never,
                    TtlSpec::Keep => Ttl::Keep,
                    TtlSpec::After(ms) => Ttl::After(*ms),
                },
            },
            OpSpec::Delete { k } => Op::Delete {
                key: KEYS[*k].into(),
            },
            OpSpec::Incr { k, delta, ttl } => Op::Incr {
                key: KEYS[*k].into(),
                delta: *delta as f64,
                ttl_ms: *ttl,
            },
            OpSpec::Merge { k, patch, ttl } => Op::Merge {
                key: KEYS[*k].into(),
                patch: encode(patch).to_vec().into(),
                ttl_ms: *ttl,
            },
            OpSpec::Clear => Op::Clear,
        })
        .collect();
    let mut txn = Txn {
        checks,
        ops,
        request: None,
        max_value_bytes: if spec.small_limit {
            SMALL_LIMIT
        } else {
            MAX_VALUE_LIMIT
        },
        incarnation: None,
    };
    if let Some(i) = spec.request {
        // What the service derives from the request: the same request
        // always has the same fingerprint.
        let mut h = DefaultHasher::new();
        format!("{:?}", (&txn.checks, &txn.ops, txn.max_value_bytes)).hash(&mut h);
        txn.request = Some(RequestId {
            id: REQUEST_IDS[i].into(),
            fingerprint: h.finish(),
        });
    }
    txn
}

// ---------------------------------------------------------------------------
// The engine under test.

enum Engine {
    Memory(MemoryStore),
    Durable(DurableStore),
}

impl Engine {
    async fn write(&self, project: &ProjectName, txn: Txn) -> Result<Arc<TxnOutcome>, EngineError> {
        match self {
            Self::Memory(s) => s.submit(project, txn).await,
            Self::Durable(s) => s.submit(project, txn).await,
        }
    }

    async fn expire_due(&self, limit: usize) -> usize {
        match self {
            Self::Memory(s) => s.expire_due(limit).await,
            Self::Durable(s) => s.expire_due(limit).await,
        }
    }

    async fn get(&self, project: &ProjectName, key: &str) -> Option<Entry> {
        match self {
            Self::Memory(s) => s.get(project, key).await,
            Self::Durable(s) => s.get(project, key).await,
        }
        .expect("reads do not fail")
    }

    async fn get_many(&self, project: &ProjectName, keys: &[String]) -> Vec<Option<Entry>> {
        match self {
            Self::Memory(s) => s.get_many(project, keys).await,
            Self::Durable(s) => s.get_many(project, keys).await,
        }
        .expect("reads do not fail")
    }

    async fn list(&self, project: &ProjectName, query: &ListQuery) -> ListPage {
        match self {
            Self::Memory(s) => s.list(project, query).await,
            Self::Durable(s) => s.list(project, query).await,
        }
        .expect("reads do not fail")
    }

    fn watch(&self, project: &ProjectName, from: u64) -> Result<Subscription, TestCaseError> {
        match self {
            Self::Memory(s) => s.subscribe(project, WatchTarget::All, Some(from)),
            Self::Durable(s) => s.memory().subscribe(project, WatchTarget::All, Some(from)),
        }
        .map_err(|e| TestCaseError::fail(format!("watch {project} from version {from}: {e}")))
    }

    fn memory(&self) -> &MemoryStore {
        match self {
            Self::Memory(s) => s,
            Self::Durable(s) => s.memory(),
        }
    }
}

fn settings() -> Settings {
    Settings {
        idempotency_window_ms: WINDOW_MS,
        ..Settings::default()
    }
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> DurableStore {
    common::open_churning(dir, clock, settings())
}

/// Runs `futures` to completion together. `Backend::submit` queued each
/// change when its future was made, so they are evaluated in that order
/// (the log writer may gather them into one group) whatever the polling.
async fn in_order<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, out) in futures.iter_mut().zip(out.iter_mut()) {
            if out.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// `expire_due(limit)` until it consumes less than `limit`; the total.
async fn expire_until_done(engine: &Engine, limit: usize) -> usize {
    let mut total = 0;
    loop {
        let n = engine.expire_due(limit).await;
        total += n;
        if n < limit {
            return total;
        }
    }
}

/// The next `n` events of `sub`.
async fn next_events(sub: &mut Subscription, n: usize) -> Result<Vec<Arc<Event>>, String> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), sub.next_batch(n - got.len())).await {
            Ok(Ok(batch)) => got.extend(batch),
            Ok(Err(lagged)) => return Err(lagged.to_string()),
            Err(_) => {
                return Err(format!("only {} of {n} events arrived: {got:?}", got.len()));
            }
        }
    }
    Ok(got)
}

// ---------------------------------------------------------------------------
// The comparison.

/// What a submitted item answered.
enum Got {
    Write(Result<TxnOutcome, Refused>),
    Expire(usize),
}

/// What the model says an item must answer.
enum Want {
    Write(Result<TxnOutcome, Refused>),
    /// Consumed at least `expired` due deadlines (the ones the model
    /// expires there) and at most `due` (those due when the batch began:
    /// the engine may take some that an earlier item of the batch made
    /// stale).
    Expire {
        expired: usize,
        due: usize,
    },
}

struct Case {
    runtime: tokio::runtime::Runtime,
    clock: Arc<ManualClock>,
    dir: Option<tempfile::TempDir>,
    engine: Option<Engine>,
    projects: Vec<ProjectName>,
    subs: Vec<Subscription>,
    model: Model,
    /// The last transactions sent with a request id, for retries.
    sent: Vec<(usize, Txn)>,
}

impl Case {
    fn new(durable: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let (dir, engine) = if durable {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), &clock);
            (Some(dir), Engine::Durable(store))
        } else {
            let store = MemoryStore::with_settings(clock.clone(), settings());
            (None, Engine::Memory(store))
        };
        let projects: Vec<ProjectName> = PROJECTS
            .iter()
            .map(|p| ProjectName::parse(p).unwrap())
            .collect();
        let subs = projects
            .iter()
            .map(|p| engine.watch(p, 0).expect("a new store is at version 0"))
            .collect();
        Self {
            runtime,
            clock,
            dir,
            engine: Some(engine),
            projects,
            subs,
            model: Model::new(),
            sent: Vec::new(),
        }
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("open")
    }

    fn step(&mut self, i: usize, step: Step) -> Result<(), TestCaseError> {
        let now = self.clock.now_ms();
        match step {
            Step::Batch(items) => self.batch(i, items)?,
            Step::Advance { ms, expire } => {
                self.clock.advance(ms);
                if expire {
                    let now = self.clock.now_ms();
                    let got = self
                        .runtime
                        .block_on(expire_until_done(self.engine(), usize::MAX));
                    let want = self.model.expire_all(now);
                    prop_assert_eq!(got, want, "step {}: expiries after advancing", i);
                }
            }
            Step::ExpireDue { limit } => {
                let got = self
                    .runtime
                    .block_on(expire_until_done(self.engine(), limit));
                let want = self.model.expire_all(now);
                prop_assert_eq!(got, want, "step {}: expire_due({})", i, limit);
            }
            Step::Restart => {
                if let Some(dir) = &self.dir {
                    let Some(Engine::Durable(store)) = self.engine.take() else {
                        unreachable!("a directory means a durable store");
                    };
                    self.subs.clear();
                    self.runtime.block_on(store.close()).unwrap();
                    drop(store);
                    let store = open(dir.path(), &self.clock);
                    // The model is unchanged: an entry that lapsed while
                    // the store was closed is loaded dead, and removed by
                    // the expiry task as a change of its own, as live.
                    // Versions continue from the model's counters: a watch
                    // from exactly there is accepted, and the next change
                    // must come as the next version.
                    let engine = Engine::Durable(store);
                    self.subs = self
                        .projects
                        .iter()
                        .zip(&self.model.projects)
                        .map(|(p, m)| engine.watch(p, m.version))
                        .collect::<Result<_, _>>()?;
                    self.engine = Some(engine);
                }
            }
        }
        self.compare(i)
    }

    fn batch(&mut self, i: usize, items: Vec<Item>) -> Result<(), TestCaseError> {
        let now = self.clock.now_ms();
        let due = self.model.dead(now);
        let mut wants = Vec::new();
        let mut sends: Vec<Option<(usize, Txn)>> = Vec::new();
        for item in items {
            let (p, txn) = match item {
                Item::Write { p, txn } => {
                    let txn = resolve(&txn, &self.model.projects[p], now);
                    if txn.request.is_some() {
                        self.sent.push((p, txn.clone()));
                        if self.sent.len() > 8 {
                            self.sent.remove(0);
                        }
                    }
                    (p, txn)
                }
                Item::Retry {
                    back,
                    other_project,
                } => {
                    if self.sent.is_empty() {
                        continue;
                    }
                    let (p, txn) = self.sent[self.sent.len() - 1 - back % self.sent.len()].clone();
                    (if other_project { 1 - p } else { p }, txn)
                }
                Item::Expire => {
                    let expired = self.model.expire_all(now);
                    wants.push(Want::Expire { expired, due });
                    sends.push(None);
                    continue;
                }
            };
            wants.push(Want::Write(self.model.write(p, &txn, now)));
            sends.push(Some((p, txn)));
        }
        let engine = self.engine.as_ref().expect("open");
        let projects = &self.projects;
        let futures: Vec<Pin<Box<dyn Future<Output = Got> + '_>>> = sends
            .iter()
            .map(|send| -> Pin<Box<dyn Future<Output = Got> + '_>> {
                match send {
                    Some((p, txn)) => Box::pin(async move {
                        Got::Write(
                            engine
                                .write(&projects[*p], txn.clone())
                                .await
                                .map(|o| (*o).clone())
                                .map_err(refused),
                        )
                    }),
                    None => {
                        Box::pin(async move { Got::Expire(engine.expire_due(usize::MAX).await) })
                    }
                }
            })
            .collect();
        let gots = self.runtime.block_on(in_order(futures));
        for (j, ((got, want), send)) in gots.into_iter().zip(wants).zip(&sends).enumerate() {
            match (got, want) {
                (Got::Write(got), Want::Write(want)) => {
                    let (p, txn) = send.as_ref().expect("a write");
                    prop_assert_eq!(
                        got,
                        want,
                        "step {} item {}: write to {} of {:?}",
                        i,
                        j,
                        PROJECTS[*p],
                        txn
                    );
                }
                (Got::Expire(got), Want::Expire { expired, due }) => {
                    prop_assert!(
                        (expired..=due).contains(&got),
                        "step {} item {}: expire_due consumed {}, expected {}..={}",
                        i,
                        j,
                        got,
                        expired,
                        due
                    );
                }
                _ => unreachable!("answers come in order"),
            }
        }
        Ok(())
    }

    /// Everything readable must match the model, and every project's watch
    /// must have published exactly the model's events since last time.
    fn compare(&mut self, i: usize) -> Result<(), TestCaseError> {
        let now = self.clock.now_ms();
        let engine = self.engine.as_ref().expect("open");
        let rt = &self.runtime;
        let all_keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
        let mut stored = 0;
        let mut with_deadline = 0;
        for (p, project) in self.projects.iter().enumerate() {
            let m = &mut self.model.projects[p];
            let want: Vec<Option<Entry>> = KEYS
                .iter()
                .map(|k| m.live(k, now).map(ModelEntry::entry))
                .collect();
            for (key, want) in KEYS.iter().zip(&want) {
                let got = rt.block_on(engine.get(project, key));
                prop_assert_eq!(&got, want, "step {}: get {}/{}", i, PROJECTS[p], key);
            }
            let many = rt.block_on(engine.get_many(project, &all_keys));
            prop_assert_eq!(&many, &want, "step {}: get_many in {}", i, PROJECTS[p]);

            let live: Vec<(Arc<str>, Entry)> = m
                .entries
                .iter()
                .filter(|(_, e)| e.is_live(now))
                .map(|(k, e)| (Arc::from(k.as_str()), e.entry()))
                .collect();
            let page = rt.block_on(engine.list(
                project,
                &ListQuery {
                    limit: 1000,
                    ..ListQuery::default()
                },
            ));
            let want_page = ListPage {
                entries: live.clone(),
                more: false,
                version: m.version,
            };
            prop_assert_eq!(&page, &want_page, "step {}: list {}", i, PROJECTS[p]);

            let by_prefix = rt.block_on(engine.list(
                project,
                &ListQuery {
                    prefix: "c".into(),
                    limit: 1000,
                    ..ListQuery::default()
                },
            ));
            let want_prefix: Vec<_> = live
                .iter()
                .filter(|(k, _)| k.starts_with('c'))
                .cloned()
                .collect();
            prop_assert_eq!(
                &by_prefix.entries,
                &want_prefix,
                "step {}: list prefix c in {}",
                i,
                PROJECTS[p]
            );

            // Pages of two keys, keys only, resumed after the last one.
            let mut paged = Vec::new();
            let mut after = String::new();
            for _ in 0..=KEYS.len() {
                let page = rt.block_on(engine.list(
                    project,
                    &ListQuery {
                        start_after: after.clone(),
                        limit: 2,
                        keys_only: true,
                        ..ListQuery::default()
                    },
                ));
                for (key, e) in &page.entries {
                    prop_assert!(e.value.is_empty(), "keys only");
                    paged.push((key.clone(), e.version, e.expires_at));
                }
                if !page.more {
                    break;
                }
                after = page
                    .entries
                    .last()
                    .expect("more follows a key")
                    .0
                    .to_string();
            }
            let want_paged: Vec<_> = live
                .iter()
                .map(|(k, e)| (k.clone(), e.version, e.expires_at))
                .collect();
            prop_assert_eq!(paged, want_paged, "step {}: paged list {}", i, PROJECTS[p]);

            // Dead entries still count until removed.
            let usage = engine.memory().usage(project);
            let want_usage = Usage {
                keys: m.entries.len() as u64,
                bytes: m
                    .entries
                    .iter()
                    .map(|(k, e)| (k.len() + e.value.len()) as u64)
                    .sum(),
            };
            prop_assert_eq!(usage, want_usage, "step {}: usage of {}", i, PROJECTS[p]);
            stored += m.entries.len();
            with_deadline += m
                .entries
                .values()
                .filter(|e| e.expires_at.is_some())
                .count();

            // The watch stream.
            let expected = std::mem::take(&mut m.events);
            let n: usize = expected
                .iter()
                .map(|e| match e {
                    Expected::Event(_) => 1,
                    Expected::Expiries { keys, .. } => keys.len(),
                })
                .sum();
            let got = rt
                .block_on(next_events(&mut self.subs[p], n))
                .map_err(|e| {
                    TestCaseError::fail(format!("step {i}: watch {}: {e}", PROJECTS[p]))
                })?;
            let mut got = got.iter().map(|e| &**e);
            for want in expected {
                match want {
                    Expected::Event(want) => {
                        let got = got.next().expect("counted");
                        prop_assert_eq!(got, &want, "step {}: event in {}", i, PROJECTS[p]);
                    }
                    Expected::Expiries { first, keys } => {
                        let mut expired = BTreeSet::new();
                        for version in first..first + keys.len() as u64 {
                            let got = got.next().expect("counted");
                            prop_assert_eq!(
                                (got.version, got.kind, &got.value, got.expires_at),
                                (version, EventKind::Expired, &None, None),
                                "step {}: expiry event in {}",
                                i,
                                PROJECTS[p]
                            );
                            expired.insert(got.key.to_string());
                        }
                        prop_assert_eq!(expired, keys, "step {}: expired keys", i);
                    }
                }
            }
        }
        let mem = engine.memory();
        prop_assert_eq!(mem.stored_entries(), stored, "step {}: stored entries", i);
        prop_assert_eq!(
            mem.pending_expiries(),
            with_deadline,
            "step {}: expiry index",
            i
        );
        Ok(())
    }

    fn close(mut self) {
        if let Some(Engine::Durable(store)) = self.engine.take() {
            self.runtime.block_on(store.close()).unwrap();
        }
    }
}

fn run(steps: Vec<Step>, durable: bool) -> Result<(), TestCaseError> {
    let mut case = Case::new(durable);
    for (i, step) in steps.into_iter().enumerate() {
        case.step(i, step)?;
    }
    case.close();
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // A failure is saved (shrunk) beside this file, to be committed so
        // that it is run first from then on.
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn durable_transactions_match_the_model(steps in prop::collection::vec(step(), 1..100)) {
        run(steps, true)?;
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn memory_transactions_match_the_model(steps in prop::collection::vec(step(), 1..100)) {
        run(steps, false)?;
    }
}
