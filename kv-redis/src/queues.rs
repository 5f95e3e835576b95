//! Every project's write queue on this front-end (drained by
//! `writer.rs`).

use std::sync::{Arc, atomic::AtomicUsize};

use dashmap::DashMap;
use kv_engine::{EngineError, Txn, TxnOutcome, project::ProjectName};
use tokio::sync::{mpsc, oneshot};

pub(crate) type Reply = oneshot::Sender<Result<Arc<TxnOutcome>, EngineError>>;

pub(crate) struct Pending {
    pub(crate) txn: Txn,
    pub(crate) reply: Reply,
}

/// Every project's queue on this front-end.
#[derive(Default)]
pub(crate) struct Queues {
    /// Writes submitted and not yet answered, all projects together.
    pub(crate) queued: AtomicUsize,
    pub(crate) projects: DashMap<ProjectName, mpsc::UnboundedSender<Pending>>,
}
