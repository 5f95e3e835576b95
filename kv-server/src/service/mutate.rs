//! Mutating requests: each kind says once how it becomes a transaction and
//! how the transaction's outcome becomes its response; [`KvService::start`]
//! does the rest (request id, incarnation, submission) the same way for
//! all of them, unary or pipelined.

use std::future::Future;

use kv_engine::{Backend, Check, Op, OpOutcome, TxnOutcome};
use kv_proto::wire::{
    self, BatchRequest, BatchResponse, ClearRequest, ClearResponse, DeleteManyRequest,
    DeleteManyResponse, DeleteRequest, DeleteResponse, IncrRequest, IncrResponse, MergeRequest,
    MergeResponse, SetManyRequest, SetManyResponse, SetRequest, SetResponse,
};
use prost::Message;
use tonic::Status;

use super::{
    error::RequestError,
    respond,
    shared::{KvService, Scope},
};
use crate::{rate, status::engine_status};

/// A request that writes: its transaction and its response.
pub(super) trait Mutating: Message + Clone {
    /// The unary method's response.
    type Response: Send + 'static;
    /// The method's name: part of the request-id fingerprint, so one id
    /// reused for another kind of call is caught.
    const METHOD: &'static str;

    /// The request id the client sent ("" for none).
    fn request_id(&self) -> &str;

    /// The request id's field: taken out of the request to fingerprint
    /// everything else without copying the request.
    fn request_id_mut(&mut self) -> &mut String;

    /// Validates the request into its transaction's checks and operations.
    ///
    /// # Errors
    ///
    /// INVALID_ARGUMENT or RESOURCE_EXHAUSTED naming the field and limit.
    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status>;

    /// The response to an outcome of that transaction.
    ///
    /// # Errors
    ///
    /// INTERNAL when the outcome does not fit the request (a bug).
    fn respond(outcome: &TxnOutcome) -> Result<Self::Response, Status>;
}

/// Every mutating request of the wire carries its id in a field named
/// `request_id`.
macro_rules! request_id_field {
    () => {
        fn request_id(&self) -> &str {
            &self.request_id
        }

        fn request_id_mut(&mut self) -> &mut String {
            &mut self.request_id
        }
    };
}

impl<B: Backend> KvService<B> {
    /// Validates `request`, submits its transaction to the backend now
    /// (see [`Backend::submit`]: the order of `start` calls is the order
    /// the writes apply in), and returns the future of its response. The
    /// future borrows nothing, so a stream can keep it in flight while it
    /// reads on.
    ///
    /// # Errors
    ///
    /// The request's validation error; nothing was submitted.
    ///
    /// The request id is moved out of `request` (into the transaction).
    pub(super) fn start<M: Mutating>(
        &self,
        scope: &Scope,
        request: &mut M,
    ) -> Result<impl Future<Output = Result<M::Response, Status>> + Send + 'static, Status> {
        crate::logging::note_request_id(request.request_id());
        let (checks, ops) = request.txn(self)?;
        if let Some(memory) = &self.memory {
            memory.admit(adds(&ops, request.request_id()))?;
        }
        self.admit_rate(scope, rate::write_bytes(&ops))?;
        let id = Self::request_id(M::METHOD, request, M::request_id_mut)?;
        let submitted = self
            .backend
            .submit(&scope.project, self.txn(scope, checks, ops, id));
        Ok(async move {
            let outcome = submitted.await.map_err(engine_status)?;
            M::respond(&outcome)
        })
    }
}

/// About how many bytes `ops` add to what the server holds: 0 for
/// deletes and clears, which are never refused for memory.
fn adds(ops: &[Op], request_id: &str) -> usize {
    use crate::memory::WRITE_OVERHEAD;
    let data: usize = ops
        .iter()
        .map(|op| match op {
            Op::Set { key, value, .. } => key.len() + value.len() + WRITE_OVERHEAD,
            // A number's encoding is at most 24 bytes.
            Op::Incr { key, .. } => key.len() + 24 + WRITE_OVERHEAD,
            Op::Merge { key, patch, .. } => key.len() + patch.len() + WRITE_OVERHEAD,
            Op::Delete { .. } | Op::Clear => 0,
        })
        .sum();
    if data == 0 {
        0
    } else {
        data + request_id.len()
    }
}

/// The checks of a call with an optional `if_version` on `key`.
fn if_version(key: &str, if_version: Option<u64>) -> Result<Vec<Check>, RequestError> {
    match if_version {
        Some(0) => Err(RequestError::VersionZero {
            field: "if_version",
        }),
        Some(version) => Ok(vec![Check::Version {
            key: key.into(),
            version,
        }]),
        None => Ok(Vec::new()),
    }
}

impl Mutating for SetRequest {
    type Response = SetResponse;
    const METHOD: &'static str = "Set";

    request_id_field!();

    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        let op = service.set_op(&wire::SetOp {
            key: self.key.clone(),
            value: self.value.clone(),
            ttl_ms: self.ttl_ms,
            keep_ttl: self.keep_ttl,
        })?;
        let checks = if self.if_absent {
            if self.if_version.is_some() {
                return Err(RequestError::Conflict(
                    "if_absent and if_version exclude each other: give one or neither",
                )
                .into());
            }
            vec![Check::Absent {
                key: service.key(&self.key)?.into(),
            }]
        } else {
            if_version(service.key(&self.key)?, self.if_version)?
        };
        Ok((checks, vec![op]))
    }

    fn respond(outcome: &TxnOutcome) -> Result<SetResponse, Status> {
        let version = if outcome.applied {
            match respond::first(outcome)? {
                OpOutcome::Set { version } => *version,
                _ => 0,
            }
        } else {
            outcome.current_version
        };
        Ok(SetResponse {
            applied: outcome.applied,
            version,
        })
    }
}

impl Mutating for DeleteRequest {
    type Response = DeleteResponse;
    const METHOD: &'static str = "Delete";

    request_id_field!();

    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        let key = service.key(&self.key)?;
        let checks = if_version(key, self.if_version)?;
        Ok((checks, vec![Op::Delete { key: key.into() }]))
    }

    fn respond(outcome: &TxnOutcome) -> Result<DeleteResponse, Status> {
        let (deleted, version) = match outcome.results.first() {
            Some(OpOutcome::Delete { deleted, version }) => (*deleted, *version),
            _ => (false, outcome.current_version),
        };
        Ok(DeleteResponse { deleted, version })
    }
}

impl Mutating for IncrRequest {
    type Response = IncrResponse;
    const METHOD: &'static str = "Incr";

    request_id_field!();

    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        let op = service.incr_op(&self.key, self.delta, self.ttl_ms)?;
        Ok((Vec::new(), vec![op]))
    }

    fn respond(outcome: &TxnOutcome) -> Result<IncrResponse, Status> {
        match respond::first(outcome)? {
            OpOutcome::Incr { value, version } => Ok(IncrResponse {
                value: *value,
                version: *version,
            }),
            _ => Err(Status::internal("incr returned another kind of result")),
        }
    }
}

impl Mutating for MergeRequest {
    type Response = MergeResponse;
    const METHOD: &'static str = "Merge";

    request_id_field!();

    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        let op = service.merge_op(&self.key, &self.patch, self.ttl_ms)?;
        Ok((Vec::new(), vec![op]))
    }

    fn respond(outcome: &TxnOutcome) -> Result<MergeResponse, Status> {
        match respond::first(outcome)? {
            OpOutcome::Merge { value, version } => Ok(MergeResponse {
                value: value.clone(),
                version: *version,
            }),
            _ => Err(Status::internal("merge returned another kind of result")),
        }
    }
}

impl Mutating for ClearRequest {
    type Response = ClearResponse;
    const METHOD: &'static str = "Clear";

    request_id_field!();

    fn txn<B>(&self, _: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        Ok((Vec::new(), vec![Op::Clear]))
    }

    fn respond(outcome: &TxnOutcome) -> Result<ClearResponse, Status> {
        let (deleted, version) = match respond::first(outcome)? {
            OpOutcome::Clear { removed, version } => (*removed, *version),
            _ => (0, 0),
        };
        Ok(ClearResponse { deleted, version })
    }
}

impl Mutating for BatchRequest {
    type Response = BatchResponse;
    const METHOD: &'static str = "Batch";

    request_id_field!();

    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        service.count("ops", self.ops.len())?;
        let max = service.limits.max_batch_ops;
        if self.checks.len() > max {
            return Err(RequestError::Count {
                what: "checks",
                count: self.checks.len(),
                max,
            }
            .into());
        }
        let mut checks = Vec::with_capacity(self.checks.len());
        for (i, check) in self.checks.iter().enumerate() {
            let at = |e: RequestError| e.at(format!("checks[{i}]"));
            let key: Box<str> = service.key(&check.key).map_err(at)?.into();
            checks.push(match check.expect {
                Some(wire::check::Expect::Version(0)) => {
                    return Err(at(RequestError::VersionZero { field: "version" }).into());
                }
                Some(wire::check::Expect::Version(version)) => Check::Version { key, version },
                Some(wire::check::Expect::Absent(true)) => Check::Absent { key },
                Some(wire::check::Expect::Absent(false)) | None => {
                    return Err(RequestError::EmptyCheck { index: i }.into());
                }
            });
        }
        let mut ops = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            use wire::op::Op as O;
            let parsed = match &op.op {
                Some(O::Set(set)) => service
                    .set_op(set)
                    .map_err(|e| e.at(format!("ops[{i}].set"))),
                Some(O::Delete(delete)) => service
                    .key(&delete.key)
                    .map(|key| Op::Delete { key: key.into() })
                    .map_err(|e| e.at(format!("ops[{i}].delete"))),
                Some(O::Incr(incr)) => service
                    .incr_op(&incr.key, incr.delta, incr.ttl_ms)
                    .map_err(|e| e.at(format!("ops[{i}].incr"))),
                Some(O::Merge(merge)) => service
                    .merge_op(&merge.key, &merge.patch, merge.ttl_ms)
                    .map_err(|e| e.at(format!("ops[{i}].merge"))),
                None => Err(RequestError::EmptyOp { index: i }),
            };
            ops.push(parsed?);
        }
        Ok((checks, ops))
    }

    fn respond(outcome: &TxnOutcome) -> Result<BatchResponse, Status> {
        Ok(BatchResponse {
            applied: outcome.applied,
            failed_check: outcome.failed_check,
            current_version: outcome.current_version,
            results: outcome.results.iter().map(respond::op_result).collect(),
        })
    }
}

impl Mutating for SetManyRequest {
    type Response = SetManyResponse;
    const METHOD: &'static str = "SetMany";

    request_id_field!();

    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        service.count("entries", self.entries.len())?;
        let ops = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                service
                    .set_op(entry)
                    .map_err(|e| e.at(format!("entries[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Vec::new(), ops))
    }

    fn respond(outcome: &TxnOutcome) -> Result<SetManyResponse, Status> {
        let versions = outcome
            .results
            .iter()
            .map(|r| match r {
                OpOutcome::Set { version } => *version,
                _ => 0,
            })
            .collect();
        Ok(SetManyResponse { versions })
    }
}

impl Mutating for DeleteManyRequest {
    type Response = DeleteManyResponse;
    const METHOD: &'static str = "DeleteMany";

    request_id_field!();

    fn txn<B>(&self, service: &KvService<B>) -> Result<(Vec<Check>, Vec<Op>), Status> {
        service.count("keys", self.keys.len())?;
        let ops = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                service
                    .key(key)
                    .map(|key| Op::Delete { key: key.into() })
                    .map_err(|e| e.at(format!("keys[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Vec::new(), ops))
    }

    fn respond(outcome: &TxnOutcome) -> Result<DeleteManyResponse, Status> {
        let deleted = outcome
            .results
            .iter()
            .filter(|r| matches!(r, OpOutcome::Delete { deleted: true, .. }))
            .count() as u64;
        Ok(DeleteManyResponse { deleted })
    }
}
