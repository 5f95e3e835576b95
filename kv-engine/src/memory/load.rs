//! Bulk loading during a recovery, and the ordered key indexes built
//! after it ([`OrderBuild`]).

use super::*;

/// Namespaces whose ordered indexes are still to be built after a
/// recovery; [`OrderBuild::run`] builds them (on a thread of its own).
pub(crate) struct OrderBuild {
    pub(super) namespaces: Vec<(ProjectName, Arc<Namespace>)>,
    /// Keys whose index is made from a snapshot's key order (a seed), not
    /// by sorting.
    pub(crate) presorted: usize,
}

/// Up to this many keys, all projects together, indexes are built at once
/// when the load ends (small projects first): a few milliseconds at most,
/// and a store of small projects then needs no thread. Past it, many
/// mid-sized projects would add up to the delay the background build
/// avoids.
pub(super) const INLINE_BUILD_KEYS: usize = 4096;

/// Projects with fewer keys are left out of the sizes a clean stop
/// records: their maps grow in little time.
pub(crate) const MIN_HINTED_KEYS: u64 = 4096;

impl OrderBuild {
    /// Whether there is anything left to build.
    pub(crate) fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Keys held by the namespaces left to build.
    pub(crate) fn keys(&self) -> usize {
        self.namespaces.iter().map(|(_, ns)| ns.entries.len()).sum()
    }

    /// Builds every index, one namespace after another, and marks each
    /// ready as soon as it is installed.
    pub(crate) fn run(self) {
        for (_, ns) in self.namespaces {
            let tree = Self::sorted(&ns);
            Self::install(&ns, tree);
        }
    }

    /// The namespace's blocks, in key order: collected from what a
    /// snapshot's load put into the map (its seed), or read
    /// from its map after the load. Nothing but the map's shards (one at a
    /// time) is locked while the tree is made, so writers go on meanwhile:
    /// the walk is fuzzy, but every change since the load ended (and with
    /// a seed, every change the log replay made over it) is also queued in
    /// `changes`, and the install replays those over whatever the tree
    /// holds (each leaves its key as the last change made it).
    pub(super) fn sorted(ns: &Namespace) -> BTreeSet<Block> {
        let seed = match &mut *write_lock(&ns.cold().order) {
            OrderIndex::Ready(_) => return BTreeSet::new(),
            OrderIndex::Building(pending) => pending.seed.take(),
        };
        if let Some(seed) = seed {
            // In key order, or a few runs of it (one per replay worker):
            // the collect's stable sort finds the runs in one pass and
            // merges them, then builds the tree in another. A key loaded
            // twice keeps its last block, the one the map holds.
            return seed.into_iter().collect();
        }
        let mut blocks = Vec::with_capacity(ns.entries.len());
        let _ = ns.entries.try_for_each(|block| {
            blocks.push(block.clone());
            Ok::<_, std::convert::Infallible>(())
        });
        // The map yields keys unordered, each once: an unstable sort is
        // the fastest way to order them, and a BTreeSet collected from
        // sorted keys is built in one linear pass.
        blocks.sort_unstable();
        blocks.into_iter().collect()
    }

    /// Replays the changes queued since the load onto `tree` and makes it
    /// the namespace's index.
    pub(super) fn install(ns: &Namespace, mut tree: BTreeSet<Block>) {
        {
            let mut order = write_lock(&ns.cold().order);
            if let OrderIndex::Building(pending) = &mut *order {
                let mut ready = OrderIndex::Ready(std::mem::take(&mut tree));
                for change in pending.changes.drain(..) {
                    ready.change(change, Phase::Live);
                }
                *order = ready;
            }
        }
        ns.cold().built.set();
    }
}

impl MemoryStore {
    /// Puts the store in bulk loading, for a recovery: the ordered key
    /// indexes are not kept key by key (see [`MemoryStore::end_load`]),
    /// and until [`MemoryStore::begin_log_replay`] writes publish nothing
    /// (a snapshot's entries are states; its own records restore the
    /// change history).
    pub(crate) fn begin_load(&self) {
        self.history.frozen.store(true, Ordering::Relaxed);
        self.loading.store(true, Ordering::Relaxed);
    }

    /// Sizes the maps of the projects named, when the load creates them,
    /// for the keys given (what they held when the log was closed): a map
    /// grown by doubling rehashes every key about twenty times on the way
    /// to a million and touches twice its final memory.
    pub(crate) fn expect_sizes(&self, sizes: Vec<(ProjectName, u64)>) {
        let mut expected = lock(&self.expected);
        for (project, keys) in sizes {
            expected.insert(project, usize::try_from(keys).unwrap_or(usize::MAX));
        }
    }

    /// The projects holding at least [`MIN_HINTED_KEYS`] keys, with their
    /// key counts (for the next start's [`Self::expect_sizes`]).
    pub(crate) fn large_projects(&self) -> Vec<(ProjectName, u64)> {
        self.project_usages()
            .into_iter()
            .filter(|(_, usage)| usage.keys >= MIN_HINTED_KEYS)
            .map(|(project, usage)| (project, usage.keys))
            .collect()
    }

    /// `project`'s ordered keys once its index is built, each checked to
    /// be the block its map holds (an older one would keep an overwritten
    /// value alive), and checked against the map's keys, for tests.
    #[cfg(test)]
    pub(crate) fn index_keys(&self, project: &ProjectName) -> Vec<String> {
        let Some(ns) = self.namespace(project) else {
            return Vec::new();
        };
        ns.cold().built.wait();
        let mut map: Vec<String> = Vec::new();
        let _ = ns.entries.try_for_each(|b| {
            map.push(b.key().to_string());
            Ok::<_, ()>(())
        });
        map.sort_unstable();
        if !ns.entries.is_big() {
            return map;
        }
        let OrderIndex::Ready(tree) = &*read_lock(&ns.cold().order) else {
            panic!("built, yet not ready");
        };
        for block in tree {
            let held = ns.entries.get(block.key());
            assert!(
                held.is_some_and(|held| held.ptr_eq(block)),
                "the index holds a block the map does not: {block:?}"
            );
        }
        let index: Vec<String> = tree.iter().map(|b| b.key().to_string()).collect();
        assert_eq!(index, map, "the index and the map hold different keys");
        index
    }

    /// How many entries `project`'s map can hold without growing.
    #[cfg(test)]
    pub(crate) fn map_capacity(&self, project: &ProjectName) -> usize {
        self.namespace(project)
            .map_or(0, |ns| ns.entries.capacity())
    }

    /// A namespace for `project`, the next incarnation after `base`;
    /// during a load, its map sized as expected.
    pub(super) fn new_namespace(&self, project: &ProjectName, base: u64) -> Namespace {
        let phase = self.phase();
        let mut ns = Namespace::new(phase, base);
        if phase != Phase::Live
            && let Some(&keys) = lock(&self.expected).get(project)
        {
            ns.entries = super::entries::Entries::with_capacity(keys);
        }
        ns
    }

    /// The snapshot is loaded; what is replayed from now on are the logged
    /// changes, published into the change history as live application
    /// publishes them.
    pub(crate) fn begin_log_replay(&self) {
        self.history.frozen.store(false, Ordering::Relaxed);
    }

    /// Ends the bulk load. Small namespaces get their ordered index at
    /// once; the others are returned, to be built by [`OrderBuild::run`]
    /// while the store serves (their Lists wait until then).
    pub(crate) fn end_load(&self) -> OrderBuild {
        self.history.frozen.store(false, Ordering::Relaxed);
        self.loading.store(false, Ordering::Relaxed);
        *lock(&self.expected) = HashMap::default();
        let mut presorted = 0;
        let mut namespaces: Vec<_> = self
            .namespaces()
            .into_iter()
            .filter_map(|(project, ns)| {
                let cold = ns.cold_if_made()?;
                let loaded = match &mut *write_lock(&cold.order) {
                    OrderIndex::Ready(_) => return None,
                    // Only a sharded map's keys enter a seed: a list's
                    // index is made from the list.
                    OrderIndex::Building(pending) if !ns.entries.is_big() => {
                        pending.seed = None;
                        pending.changes = Vec::new();
                        ns.entries.len()
                    }
                    OrderIndex::Building(pending) => {
                        presorted += pending.seed.as_ref().map_or(0, Vec::len);
                        ns.entries.len()
                    }
                };
                Some((loaded, project, ns))
            })
            .collect();
        namespaces.sort_unstable_by_key(|(loaded, _, _)| *loaded);
        let mut budget = INLINE_BUILD_KEYS;
        namespaces.retain(|(loaded, _, ns)| {
            let inline = *loaded <= budget;
            if inline {
                budget -= loaded;
                OrderBuild::install(ns, OrderBuild::sorted(ns));
            }
            !inline
        });
        OrderBuild {
            namespaces: namespaces
                .into_iter()
                .map(|(_, project, ns)| (project, ns))
                .collect(),
            presorted,
        }
    }

    pub(super) fn loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed)
    }

    /// Whether a recovery is loading a snapshot's state (the history is
    /// frozen only then), replaying the log, or neither.
    pub(super) fn phase(&self) -> Phase {
        match (self.loading(), self.history.recording()) {
            (false, _) => Phase::Live,
            (true, false) => Phase::State,
            (true, true) => Phase::Log,
        }
    }

    /// Records a change of `ns`'s key set in its ordered index.
    pub(super) fn change_order(&self, ns: &Namespace, change: OrderChange) {
        write_lock(&ns.cold().order).change(change, self.phase());
    }

    /// Waits until `project`'s ordered index is ready (it is being built
    /// after a recovery), without blocking the thread.
    pub(crate) async fn order_ready(&self, project: &ProjectName) {
        if let Some(ns) = self.namespace(project)
            && !ns.order_built()
        {
            ns.cold().built.wait_async().await;
        }
    }
}
