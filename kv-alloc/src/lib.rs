//! A counting global allocator: [`Counting`] wraps any allocator and keeps
//! the number of live bytes, which `kv-server` checks its memory limit
//! (`--max-memory`) against.
//!
//! The count is split over [`SHARDS`] cache-line-sized counters, and each
//! thread adds to its own one: a single shared counter would be written by
//! every thread on every allocation and free, and moving that one cache
//! line between cores cost the server about a sixth of its CPU time on
//! small writes. Deltas land in the shards at once (nothing is held per
//! thread), so threads that exit leave no drift behind; reading the total
//! sums the shards.
//!
//! ```
//! use kv_alloc::Counting;
//! static ALLOCATOR: Counting<std::alloc::System> = Counting::new(std::alloc::System);
//! // (install it with #[global_allocator] in a binary)
//! let before = ALLOCATOR.allocated();
//! let layout = std::alloc::Layout::from_size_align(4096, 8).unwrap();
//! // SAFETY: the layout is non-zero in size; the block is freed below with it.
//! let block = unsafe { std::alloc::GlobalAlloc::alloc(&ALLOCATOR, layout) };
//! assert!(ALLOCATOR.allocated() >= before + 4096);
//! // SAFETY: allocated above by this allocator with this layout.
//! unsafe { std::alloc::GlobalAlloc::dealloc(&ALLOCATOR, block, layout) };
//! ```

use std::{
    alloc::{GlobalAlloc, Layout},
    cell::Cell,
    sync::atomic::{AtomicIsize, AtomicUsize, Ordering},
};

/// How many counters the count is split over: more than the threads a
/// server runs busy at once, so they rarely share one.
pub const SHARDS: usize = 64;

/// One counter alone on its cache line (128 bytes: adjacent-line
/// prefetching pairs 64-byte lines on x86).
#[repr(align(128))]
struct Shard(AtomicIsize);

/// Wraps the allocator `A` and counts the bytes it has live.
pub struct Counting<A> {
    inner: A,
    shards: [Shard; SHARDS],
}

/// Hands each thread its shard, round robin.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading it never
    // allocates, which an allocator must not do.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard_index() -> usize {
    SHARD
        .try_with(|shard| {
            let mut index = shard.get();
            if index == usize::MAX {
                index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
                shard.set(index);
            }
            index
        })
        // A thread being torn down has no thread-locals left.
        .unwrap_or(0)
}

impl<A> Counting<A> {
    /// Counts what `inner` allocates.
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            shards: [const { Shard(AtomicIsize::new(0)) }; SHARDS],
        }
    }

    /// Bytes live now: allocated and not yet freed.
    pub fn allocated(&self) -> usize {
        let total: isize = self
            .shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
        // A shard may be negative (a thread frees what another allocated);
        // the sum never is, except for a moment between two shards' reads.
        total.max(0) as usize
    }

    fn add(&self, bytes: isize) {
        self.shards[shard_index()]
            .0
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments
// unchanged and only counts sizes, so `inner`'s guarantees hold as they are.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let block = unsafe { self.inner.alloc(layout) };
        if !block.is_null() {
            self.add(layout.size() as isize);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        let block = unsafe { self.inner.alloc_zeroed(layout) };
        if !block.is_null() {
            self.add(layout.size() as isize);
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { self.inner.dealloc(ptr, layout) };
        self.add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on.
        let block = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !block.is_null() {
            self.add(new_size as isize - layout.size() as isize);
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_threads_without_drift() {
        static COUNTING: Counting<std::alloc::System> = Counting::new(std::alloc::System);
        let layout = Layout::from_size_align(1000, 8).unwrap();
        let before = COUNTING.allocated();
        // Allocated on one thread each, freed on this one: the frees land
        // in another shard than the allocations, and the threads are gone.
        let blocks: Vec<usize> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    // SAFETY: non-zero layout; freed below with the same one.
                    unsafe { COUNTING.alloc(layout) as usize }
                })
                .join()
                .unwrap()
            })
            .collect();
        assert_eq!(COUNTING.allocated(), before + 8000);
        for block in blocks {
            // SAFETY: allocated above by COUNTING with this layout.
            unsafe { COUNTING.dealloc(block as *mut u8, layout) };
        }
        assert_eq!(COUNTING.allocated(), before);
        // SAFETY: non-zero layout; the block is reallocated then freed.
        let block = unsafe { COUNTING.alloc(layout) };
        // SAFETY: allocated above with `layout`.
        let grown = unsafe { COUNTING.realloc(block, layout, 3000) };
        assert_eq!(COUNTING.allocated(), before + 3000);
        let grown_layout = Layout::from_size_align(3000, 8).unwrap();
        // SAFETY: reallocated above to this size and alignment.
        unsafe { COUNTING.dealloc(grown, grown_layout) };
        assert_eq!(COUNTING.allocated(), before);
    }
}

/// Asks mimalloc to return to the system the memory it keeps free for
/// reuse (pages emptied by frees, including frees made by other threads
/// that this thread's heap has not collected yet). The memory limit reads
/// the resident memory too, and without this a store emptied by deletes
/// can stay "full" to it until the allocator gets round to purging.
/// Costly (it walks the calling thread's heap): call it rarely.
///
/// ```
/// kv_alloc::return_free_memory();
/// ```
#[cfg(feature = "mimalloc")]
pub fn return_free_memory() {
    mimalloc_api::mi_collect(true);
}

/// The one mimalloc function used beyond allocation, declared here rather
/// than through libmimalloc-sys's `extended` feature (which would add a
/// crate for C type aliases); libmimalloc-sys builds and links the
/// library that defines it.
#[cfg(feature = "mimalloc")]
mod mimalloc_api {
    use libmimalloc_sys as _;

    // SAFETY: the declaration matches mimalloc's
    // `void mi_collect(bool force)`: it takes no pointers and may be called
    // from any thread at any time, so calling it is safe.
    unsafe extern "C" {
        pub(super) safe fn mi_collect(force: bool);
    }
}
