//! Batches: checks plus writes, all or nothing.

use std::time::Duration;

use kv_proto::v1 as pb;
use serde::Serialize;

use crate::{
    Error, Project, json,
    options::{check_delta, request_id, ttl_ms},
    project::encode,
};

/// Checks plus writes on one project, applied all or nothing; from
/// [`Project::batch`].
///
/// Every check must hold, or nothing is written and the outcome says which
/// check failed. Writes apply in the order added, and later ones see earlier
/// ones. Nothing is sent until [`commit`](Self::commit); an input the SDK
/// refuses (a value that is not JSON, an integer beyond ±2^53, a zero TTL, a
/// non-finite delta...) is reported by `commit`, before anything is sent.
///
/// ```no_run
/// use serde_json::json;
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// // Move 5 from one account to another if neither changed since read.
/// let (a, b) = (kv.get_entry::<f64>("acct:a").await?.unwrap(), kv.get_entry::<f64>("acct:b").await?.unwrap());
/// let outcome = kv
///     .batch()
///     .check_version("acct:a", a.version)
///     .check_version("acct:b", b.version)
///     .set("acct:a", &(a.value - 5.0))
///     .set("acct:b", &(b.value + 5.0))
///     .merge("audit:last", &json!({"from": "a", "to": "b"}))
///     .request_id(kv_client::new_request_id())
///     .commit()
///     .await?;
/// if let Some(index) = outcome.failed_check {
///     println!("check {index} failed; key now at version {}", outcome.current_version);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a batch does nothing until committed"]
pub struct Batch {
    project: Project,
    checks: Vec<pb::Check>,
    ops: Vec<pb::Op>,
    request_id: Option<String>,
    /// The first input refused while building; reported by `commit`.
    error: Option<Error>,
}

impl Batch {
    pub(crate) fn new(project: Project) -> Self {
        Batch {
            project,
            checks: Vec::new(),
            ops: Vec::new(),
            request_id: None,
            error: None,
        }
    }

    fn check(mut self, key: &str, expect: pb::check::Expect) -> Self {
        self.checks.push(pb::Check {
            key: key.into(),
            expect: Some(expect),
        });
        self
    }

    fn op(mut self, op: Result<pb::op::Op, Error>) -> Self {
        match op {
            Ok(op) => self.ops.push(pb::Op { op: Some(op) }),
            Err(error) => {
                self.error.get_or_insert(error);
            }
        }
        self
    }

    fn set_op<T: Serialize + ?Sized>(
        self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
        keep_ttl: bool,
    ) -> Self {
        let op = (|| {
            Ok(pb::op::Op::Set(pb::SetOp {
                key: key.into(),
                value: Some(encode(value)?),
                ttl_ms: ttl.map(ttl_ms).transpose()?,
                keep_ttl,
            }))
        })();
        self.op(op)
    }

    /// Requires `key` to exist at exactly `version`.
    pub fn check_version(self, key: &str, version: u64) -> Self {
        self.check(key, pb::check::Expect::Version(version))
    }

    /// Requires `key` to be absent (or expired).
    pub fn check_absent(self, key: &str) -> Self {
        self.check(key, pb::check::Expect::Absent(true))
    }

    /// Stores `value` under `key` with no expiry (removing any earlier TTL).
    pub fn set<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Self {
        self.set_op(key, value, None, false)
    }

    /// Stores `value` under `key`, expiring after `ttl` (rounded up to a
    /// millisecond; zero is refused).
    pub fn set_with_ttl<T: Serialize + ?Sized>(self, key: &str, value: &T, ttl: Duration) -> Self {
        self.set_op(key, value, Some(ttl), false)
    }

    /// Stores `value` under `key`, keeping the key's current deadline (none
    /// when absent).
    pub fn set_keep_ttl<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Self {
        self.set_op(key, value, None, true)
    }

    /// Removes `key` (absent is not an error: its result says
    /// `deleted: false`).
    pub fn delete(self, key: &str) -> Self {
        self.op(Ok(pb::op::Op::Delete(pb::DeleteOp { key: key.into() })))
    }

    /// Adds `delta` to the number under `key` (see [`Project::incr`]).
    pub fn incr(self, key: &str, delta: f64) -> Self {
        self.incr_op(key, delta, None)
    }

    /// Adds `delta` to the number under `key`; a key this creates expires
    /// after `ttl` (see [`IncrOptions::ttl`](crate::IncrOptions::ttl)).
    pub fn incr_with_ttl(self, key: &str, delta: f64, ttl: Duration) -> Self {
        self.incr_op(key, delta, Some(ttl))
    }

    fn incr_op(self, key: &str, delta: f64, ttl: Option<Duration>) -> Self {
        let op = (|| {
            Ok(pb::op::Op::Incr(pb::IncrOp {
                key: key.into(),
                delta: check_delta(delta)?,
                ttl_ms: ttl.map(ttl_ms).transpose()?,
            }))
        })();
        self.op(op)
    }

    /// Applies an RFC 7386 merge patch to `key` (see [`Project::merge`]);
    /// the key keeps its deadline.
    pub fn merge<P: Serialize + ?Sized>(self, key: &str, patch: &P) -> Self {
        self.merge_op(key, patch, None)
    }

    /// Applies an RFC 7386 merge patch to `key`, which then expires after
    /// `ttl`.
    pub fn merge_with_ttl<P: Serialize + ?Sized>(
        self,
        key: &str,
        patch: &P,
        ttl: Duration,
    ) -> Self {
        self.merge_op(key, patch, Some(ttl))
    }

    fn merge_op<P: Serialize + ?Sized>(self, key: &str, patch: &P, ttl: Option<Duration>) -> Self {
        let op = (|| {
            Ok(pb::op::Op::Merge(pb::MergeOp {
                key: key.into(),
                patch: Some(encode(patch)?),
                ttl_ms: ttl.map(ttl_ms).transpose()?,
            }))
        })();
        self.op(op)
    }

    /// Makes retries safe; see
    /// [`SetOptions::request_id`](crate::SetOptions::request_id).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    fn into_request(self) -> Result<(Project, pb::BatchRequest), Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let request = pb::BatchRequest {
            checks: self.checks,
            ops: self.ops,
            request_id: request_id(&self.request_id)?,
        };
        Ok((self.project, request))
    }

    /// Sends the batch: every check holds and every write applies, or
    /// nothing is written.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let outcome = kv.batch().delete("a").delete("b").commit().await?;
    /// assert!(outcome.applied); // no checks
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The first input refused while building ([`Error::InvalidArgument`],
    /// [`Error::Encode`]); [`Error::Status`] from the server (for instance
    /// `RESOURCE_EXHAUSTED` over the limit of checks or ops,
    /// `FAILED_PRECONDITION` when an incr meets a value that is not a
    /// number: nothing is written); [`Error::Timeout`]. A check that does
    /// not hold is not an error: it is `applied = false`.
    pub async fn commit(self) -> Result<BatchOutcome, Error> {
        let (project, mut message) = self.into_request()?;
        let kinds: Vec<OpKind> = message.ops.iter().map(OpKind::of).collect();
        let safety = project.client.write_safety(&mut message.request_id);
        let id = Some(message.request_id.as_str()).filter(|id| !id.is_empty());
        let reply = project
            .unary(safety, id, message.clone(), |conn, r| async move {
                conn.kv().batch(r).await
            })
            .await?;
        BatchOutcome::from_proto(&kinds, reply)
    }
}

/// Which op a result answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Set,
    Delete,
    Incr,
    Merge,
}

impl OpKind {
    fn of(op: &pb::Op) -> OpKind {
        match op.op {
            Some(pb::op::Op::Set(_)) | None => OpKind::Set,
            Some(pb::op::Op::Delete(_)) => OpKind::Delete,
            Some(pb::op::Op::Incr(_)) => OpKind::Incr,
            Some(pb::op::Op::Merge(_)) => OpKind::Merge,
        }
    }
}

/// What a [`Batch`] did.
///
/// ```no_run
/// use kv_client::OpResult;
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let outcome = kv.batch().incr("n", 2.0).delete("old").commit().await?;
/// if let [OpResult::Incr { value, .. }, OpResult::Delete { deleted, .. }] = outcome.results[..] {
///     println!("n = {value}, old deleted: {deleted}");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// False when a check failed; nothing was written.
    pub applied: bool,
    /// When not applied: the index of the first failed check (in the order
    /// the checks were added).
    pub failed_check: Option<u32>,
    /// When not applied: the current version of the failed check's key (0
    /// when absent).
    pub current_version: u64,
    /// When applied: one result per write, in the order added.
    pub results: Vec<OpResult>,
}

impl BatchOutcome {
    fn from_proto(kinds: &[OpKind], reply: pb::BatchResponse) -> Result<Self, Error> {
        let results = if reply.applied {
            if reply.results.len() != kinds.len() {
                return Err(Error::Protocol(format!(
                    "Batch reply has {} results for {} ops",
                    reply.results.len(),
                    kinds.len()
                )));
            }
            kinds
                .iter()
                .zip(reply.results)
                .enumerate()
                .map(|(index, (kind, result))| OpResult::from_proto(index, *kind, result))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(BatchOutcome {
            applied: reply.applied,
            failed_check: reply.failed_check,
            current_version: reply.current_version,
            results,
        })
    }
}

/// What one write of a [`Batch`] did.
///
/// ```
/// let result = kv_client::OpResult::Delete { deleted: true, version: 12 };
/// assert_eq!(result.version(), 12);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    /// A set ([`Batch::set`], [`Batch::set_with_ttl`], [`Batch::set_keep_ttl`]).
    Set {
        /// The key's new version.
        version: u64,
    },
    /// A [`Batch::delete`].
    Delete {
        /// Whether a live key was removed.
        deleted: bool,
        /// The version of the deletion, or 0 when the key was absent.
        version: u64,
    },
    /// A [`Batch::incr`] or [`Batch::incr_with_ttl`].
    Incr {
        /// The number after the increment.
        value: f64,
        /// The key's new version.
        version: u64,
    },
    /// A [`Batch::merge`] or [`Batch::merge_with_ttl`].
    Merge {
        /// The value after the patch.
        value: serde_json::Value,
        /// The key's new version.
        version: u64,
    },
}

impl OpResult {
    /// The key's version after the write (for a delete: the version of the
    /// deletion, or 0 when the key was absent).
    pub fn version(&self) -> u64 {
        match self {
            OpResult::Set { version }
            | OpResult::Delete { version, .. }
            | OpResult::Incr { version, .. }
            | OpResult::Merge { version, .. } => *version,
        }
    }

    fn from_proto(index: usize, kind: OpKind, result: pb::OpResult) -> Result<Self, Error> {
        use pb::op_result::Result as R;
        let version = result.version;
        Ok(match (kind, result.result) {
            (OpKind::Set, None) => OpResult::Set { version },
            (OpKind::Delete, Some(R::Deleted(deleted))) => OpResult::Delete { deleted, version },
            (OpKind::Incr, Some(R::Number(value))) => OpResult::Incr { value, version },
            (OpKind::Merge, Some(R::Value(value))) => OpResult::Merge {
                value: json::from_proto(value)?,
                version,
            },
            (kind, result) => {
                return Err(Error::Protocol(format!(
                    "Batch result {index} is {result:?} for a {kind:?} op"
                )));
            }
        })
    }
}

impl Project {
    /// Starts a [`Batch`]: checks plus writes on this project, applied all or
    /// nothing with [`Batch::commit`].
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let outcome = kv
    ///     .batch()
    ///     .check_absent("order:9")
    ///     .set("order:9", &serde_json::json!({"total": 30}))
    ///     .incr("stats:orders", 1.0)
    ///     .commit()
    ///     .await?;
    /// if !outcome.applied { println!("order 9 already exists"); }
    /// # Ok(())
    /// # }
    /// ```
    pub fn batch(&self) -> Batch {
        Batch::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn project() -> Project {
        crate::Client::builder("http://127.0.0.1:1")
            .connect_lazy()
            .unwrap()
            .project("p")
    }

    #[tokio::test]
    async fn the_builder_makes_checks_and_ops_in_order() {
        let (_, request) = project()
            .batch()
            .check_version("a", 3)
            .check_absent("b")
            .set("a", &json!({"x": 1}))
            .set_with_ttl("t", &1, Duration::from_millis(1500))
            .set_keep_ttl("k", &"v")
            .delete("d")
            .incr("n", -2.5)
            .incr_with_ttl("w", 1.0, Duration::from_secs(60))
            .merge("m", &json!({"y": null}))
            .merge_with_ttl("mt", &json!(5), Duration::from_secs(1))
            .request_id("batch-1")
            .into_request()
            .unwrap();
        assert_eq!(
            request.checks,
            [
                pb::Check {
                    key: "a".into(),
                    expect: Some(pb::check::Expect::Version(3)),
                },
                pb::Check {
                    key: "b".into(),
                    expect: Some(pb::check::Expect::Absent(true)),
                },
            ]
        );
        assert_eq!(request.request_id, "batch-1");
        let ops: Vec<_> = request.ops.into_iter().map(|op| op.op.unwrap()).collect();
        assert_eq!(ops.len(), 8);
        let pb::op::Op::Set(set) = &ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!(set.key, "a");
        assert_eq!(
            json::from_proto(set.value.clone().unwrap()).unwrap(),
            json!({"x": 1})
        );
        assert_eq!((set.ttl_ms, set.keep_ttl), (None, false));
        assert!(
            matches!(&ops[1], pb::op::Op::Set(s) if s.key == "t" && s.ttl_ms == Some(1500) && !s.keep_ttl)
        );
        assert!(
            matches!(&ops[2], pb::op::Op::Set(s) if s.key == "k" && s.ttl_ms.is_none() && s.keep_ttl)
        );
        assert_eq!(ops[3], pb::op::Op::Delete(pb::DeleteOp { key: "d".into() }));
        assert_eq!(
            ops[4],
            pb::op::Op::Incr(pb::IncrOp {
                key: "n".into(),
                delta: -2.5,
                ttl_ms: None,
            })
        );
        assert!(matches!(&ops[5], pb::op::Op::Incr(i) if i.key == "w" && i.ttl_ms == Some(60_000)));
        let pb::op::Op::Merge(merge) = &ops[6] else {
            panic!("{:?}", ops[6])
        };
        assert_eq!(
            json::from_proto(merge.patch.clone().unwrap()).unwrap(),
            json!({"y": null})
        );
        assert_eq!(merge.ttl_ms, None);
        assert!(matches!(&ops[7], pb::op::Op::Merge(m) if m.key == "mt" && m.ttl_ms == Some(1000)));
    }

    #[tokio::test]
    async fn refused_inputs_surface_at_commit_first_one_wins() {
        let err = project()
            .batch()
            .set("ok", &1)
            .set("big", &(1u64 << 60))
            .incr("n", f64::NAN)
            .commit()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("2^53"), "{err}");

        for batch in [
            project().batch().incr("n", f64::INFINITY),
            project().batch().set_with_ttl("t", &1, Duration::ZERO),
            project()
                .batch()
                .merge("m", &(0..40).fold(json!(1), |v, _| json!([v]))),
            project().batch().request_id(""),
        ] {
            let err = batch.commit().await.unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }

        struct NotJson;
        impl Serialize for NotJson {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("nope"))
            }
        }
        let err = project()
            .batch()
            .set("x", &NotJson)
            .commit()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Encode(_)), "{err}");
    }

    fn result(version: u64, result: Option<pb::op_result::Result>) -> pb::OpResult {
        pb::OpResult { version, result }
    }

    #[test]
    fn results_become_typed_per_op() {
        use pb::op_result::Result as R;
        let kinds = [OpKind::Set, OpKind::Delete, OpKind::Incr, OpKind::Merge];
        let reply = pb::BatchResponse {
            applied: true,
            failed_check: None,
            current_version: 0,
            results: vec![
                result(5, None),
                result(0, Some(R::Deleted(false))),
                result(7, Some(R::Number(3.0))),
                result(
                    8,
                    Some(R::Value(crate::json::to_proto(&json!({"a": 1})).unwrap())),
                ),
            ],
        };
        let outcome = BatchOutcome::from_proto(&kinds, reply).unwrap();
        assert_eq!(
            outcome,
            BatchOutcome {
                applied: true,
                failed_check: None,
                current_version: 0,
                results: vec![
                    OpResult::Set { version: 5 },
                    OpResult::Delete {
                        deleted: false,
                        version: 0
                    },
                    OpResult::Incr {
                        value: 3.0,
                        version: 7
                    },
                    OpResult::Merge {
                        value: json!({"a": 1}),
                        version: 8
                    },
                ],
            }
        );
        assert_eq!(
            outcome
                .results
                .iter()
                .map(OpResult::version)
                .collect::<Vec<_>>(),
            [5, 0, 7, 8]
        );
    }

    #[test]
    fn a_failed_check_has_no_results() {
        let reply = pb::BatchResponse {
            applied: false,
            failed_check: Some(1),
            current_version: 42,
            results: vec![],
        };
        let outcome = BatchOutcome::from_proto(&[OpKind::Set], reply).unwrap();
        assert!(!outcome.applied);
        assert_eq!(outcome.failed_check, Some(1));
        assert_eq!(outcome.current_version, 42);
        assert!(outcome.results.is_empty());
    }

    #[test]
    fn mismatched_results_are_protocol_errors() {
        use pb::op_result::Result as R;
        let applied = |results| pb::BatchResponse {
            applied: true,
            failed_check: None,
            current_version: 0,
            results,
        };
        let too_few =
            BatchOutcome::from_proto(&[OpKind::Set, OpKind::Set], applied(vec![result(1, None)]));
        assert!(matches!(too_few, Err(Error::Protocol(_))));
        let wrong_kind = BatchOutcome::from_proto(
            &[OpKind::Incr],
            applied(vec![result(1, Some(R::Deleted(true)))]),
        );
        assert!(matches!(wrong_kind, Err(Error::Protocol(_))));
        let no_value = BatchOutcome::from_proto(
            &[OpKind::Merge],
            applied(vec![result(
                1,
                Some(R::Value(prost_types::Value { kind: None })),
            )]),
        );
        assert!(matches!(no_value, Err(Error::Protocol(_))));
    }
}
