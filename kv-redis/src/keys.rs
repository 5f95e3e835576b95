//! Names of the Redis keys of a project, and of the due-project buckets.
//!
//! Every name starts with the deployment's namespace (`kv` by default), so
//! several kv deployments (or test runs) can share one cluster.

use kv_engine::project::ProjectName;

/// How many due-project buckets there are: each is one sorted set in its
/// own slot, so sweeping spreads over the cluster.
pub const BUCKETS: u32 = 16;

/// The key names of one deployment.
#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
}

impl Names {
    /// Names under `namespace` (letters, digits, `_`, `.`, `-`).
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
        }
    }

    /// The meta hash of `project` (its counters); its hash tag is the
    /// project's slot.
    ///
    /// ```
    /// let p = kv_engine::project::ProjectName::parse("shop").unwrap();
    /// assert_eq!(kv_redis::keys::Names::new("kv").meta(&p), "kv:{shop}:m");
    /// ```
    pub fn meta(&self, project: &ProjectName) -> String {
        format!("{}:{{{project}}}:m", self.namespace)
    }

    /// Every key of `project` a data function declares, in the order the
    /// library numbers them: meta, entries, index, deadlines, stream.
    pub fn project_keys(&self, project: &ProjectName) -> [String; 5] {
        let tag = format!("{}:{{{project}}}:", self.namespace);
        ["m", "h", "i", "d", "s"].map(|suffix| format!("{tag}{suffix}"))
    }

    /// Where the outcome of request id `id` of `project` is remembered.
    pub fn request(&self, project: &ProjectName, id: &str) -> String {
        format!("{}:{{{project}}}:r:{id}", self.namespace)
    }

    /// Where the outcome of a front-end's write `id` is remembered.
    pub fn write(&self, project: &ProjectName, id: &str) -> String {
        format!("{}:{{{project}}}:w:{id}", self.namespace)
    }

    /// The change stream of `project`.
    pub fn stream(&self, project: &ProjectName) -> String {
        format!("{}:{{{project}}}:s", self.namespace)
    }

    /// The due-project bucket `index`. Its hash tag starts with `#`, which
    /// no project name holds, so it never shares a name with a project's
    /// keys.
    pub fn bucket(&self, index: u32) -> String {
        format!("{}:{{#due.{index}}}", self.namespace)
    }

    /// The catalog's project hash.
    ///
    /// ```
    /// assert_eq!(kv_redis::keys::Names::new("kv").catalog(), "kv:{#catalog}:p");
    /// ```
    pub fn catalog(&self) -> String {
        format!("{}:{{#catalog}}:p", self.namespace)
    }

    /// The catalog's change stream.
    pub fn catalog_stream(&self) -> String {
        format!("{}:{{#catalog}}:s", self.namespace)
    }

    /// Every key a catalog function declares: projects, tokens, stream.
    pub fn catalog_keys(&self) -> [String; 3] {
        let tag = format!("{}:{{#catalog}}:", self.namespace);
        ["p", "t", "s"].map(|suffix| format!("{tag}{suffix}"))
    }

    /// The due-project bucket of `project`: the same on every front-end (a
    /// 64-bit FNV-1a of the name).
    ///
    /// ```
    /// let names = kv_redis::keys::Names::new("kv");
    /// let p = kv_engine::project::ProjectName::parse("shop").unwrap();
    /// assert_eq!(names.bucket_of(&p), names.bucket_of(&p));
    /// assert!(names.bucket_of(&p).starts_with("kv:{#due."));
    /// ```
    pub fn bucket_of(&self, project: &ProjectName) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in project.as_str().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.bucket((hash % u64::from(BUCKETS)) as u32)
    }
}
