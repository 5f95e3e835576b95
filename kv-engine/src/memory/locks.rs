//! Lock helpers that ignore poisoning (see [`lock`]).

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A std `Mutex` is right here: it is held only for short, non-async
/// critical sections. A panic while holding it cannot leave the set half
/// updated (BTreeSet operations are atomic from the outside), so poisoning is
/// ignored rather than turned into a second panic.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// As [`lock`]: the guarded sets and tables are changed by single calls
/// that leave them whole.
pub(super) fn read_lock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn write_lock<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
