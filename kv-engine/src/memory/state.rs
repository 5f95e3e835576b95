//! The memory store as the state transactions are evaluated against.

use bytes::Bytes;

use super::{MemoryStore, Usage, namespace::Meta, requests::Remembered};
use crate::{project::ProjectName, txn::State};

impl State for MemoryStore {
    fn version(&self, project: &ProjectName) -> u64 {
        MemoryStore::version(self, project)
    }

    fn usage(&self, project: &ProjectName) -> Usage {
        MemoryStore::usage(self, project)
    }

    fn incarnation(&self, project: &ProjectName) -> u64 {
        MemoryStore::incarnation(self, project)
    }

    fn has_namespace(&self, project: &ProjectName) -> bool {
        MemoryStore::has_namespace(self, project)
    }

    fn remembered(&self, project: &ProjectName, id: &str, now: u64) -> Option<Remembered> {
        MemoryStore::remembered(self, project, id, now)
    }

    fn meta(&self, project: &ProjectName, key: &str) -> Option<Meta> {
        MemoryStore::meta(self, project, key)
    }

    fn value(&self, project: &ProjectName, key: &str) -> Option<Bytes> {
        MemoryStore::value(self, project, key)
    }

    fn live_count(&self, project: &ProjectName, now: u64) -> u64 {
        MemoryStore::live_count(self, project, now)
    }
}
