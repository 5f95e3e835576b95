//! Model-based property test of tenancy: random project creations and
//! deletions, token creations and revocations, writes, watches and
//! restarts, against a model of which incarnation of a project every
//! value, token and watch belongs to.
//!
//! Every value written is unique and tagged with the incarnation the model
//! believes it lands in. No watch may deliver a value of another
//! incarnation than the one it was opened on, nor one written after its
//! token was revoked or its project deleted; those watches end with
//! UNAUTHENTICATED and NOT_FOUND. Every read, through the admin token or
//! any project token, shows exactly the current incarnation, and a
//! revoked token or one of a deleted project is refused.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use kv_engine::{
    ManualClock,
    wal::{FsyncPolicy, LogOptions},
};
use kv_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, kv_service_client::KvServiceClient,
    watch_request::Target as WatchTarget,
};
use kv_server::{auth::AdminToken, config::Config};
use kv_tests::{CLOCK_START_MS, InProcessDurable, Target as _};
use proptest::prelude::*;
use prost_types::{Value, value::Kind};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{Code, Request, Status, transport::Channel};

const ADMIN: &str = "model-admin-secret-0123456789";
const NAMES: [&str; 2] = ["a", "b"];
const KEYS: [&str; 3] = ["k0", "k1", "x0"];
/// Bound on any wait for something the model says must happen.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Who {
    Admin,
    /// The i-th newest token (modulo their number): the newest are the
    /// likeliest to still be valid.
    Token(usize),
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
enum From {
    Now,
    Zero,
    One,
    /// The project's current version.
    Current,
    /// The newest version of the incarnation before the current one.
    OldLast,
}

/// Which incarnation a watch names.
#[derive(Debug, Clone, Copy)]
enum Named {
    No,
    Current,
    Old,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    CreateProject(usize),
    DeleteProject(usize),
    CreateToken {
        p: usize,
        read_only: bool,
    },
    RevokeToken(usize),
    Write {
        who: Who,
        p: usize,
        k: usize,
    },
    OpenWatch {
        who: Who,
        p: usize,
        target: usize,
        from: From,
        named: Named,
    },
    Restart,
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        2 => Just(Who::Admin),
        3 => (0..2usize).prop_map(Who::Token),
        1 => (0..8usize).prop_map(Who::Token),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let p = 0..NAMES.len();
    let from = prop_oneof![
        3 => Just(From::Now),
        1 => Just(From::Zero),
        1 => Just(From::One),
        1 => Just(From::Current),
        1 => Just(From::OldLast),
    ];
    let named = prop_oneof![
        3 => Just(Named::No),
        1 => Just(Named::Current),
        1 => Just(Named::Old),
    ];
    prop_oneof![
        4 => p.clone().prop_map(Step::CreateProject),
        1 => p.clone().prop_map(Step::DeleteProject),
        3 => (p.clone(), any::<bool>()).prop_map(|(p, read_only)| Step::CreateToken { p, read_only }),
        1 => (0..8usize).prop_map(Step::RevokeToken),
        12 => (who(), p.clone(), 0..KEYS.len()).prop_map(|(who, p, k)| Step::Write { who, p, k }),
        6 => (who(), p.clone(), 0..3usize, from, named)
            .prop_map(|(who, p, target, from, named)| Step::OpenWatch { who, p, target, from, named }),
        1 => Just(Step::Restart),
    ]
}

/// Whether a watch of `target` (all, prefix "k", key "k0") covers key `k`.
fn covers(target: usize, k: usize) -> bool {
    match target {
        0 => true,
        1 => KEYS[k].starts_with('k'),
        _ => k == 0,
    }
}

fn watch_target(target: usize) -> Option<WatchTarget> {
    match target {
        0 => None,
        1 => Some(WatchTarget::Prefix("k".into())),
        _ => Some(WatchTarget::Key(KEYS[0].into())),
    }
}

/// One incarnation of a name, as the model knows it.
#[derive(Debug)]
struct Life {
    /// Which life of the name: 0 for the first.
    seq: u32,
    /// Its incarnation, as the server reported it.
    number: u64,
    /// Key index to (value, version).
    entries: BTreeMap<usize, (String, u64)>,
    /// Every write, in order: key index, value, version.
    log: Vec<(usize, String, u64)>,
    /// The current version: the incarnation until the first write.
    version: u64,
    /// History is in memory: after a restart, resuming from before this
    /// version may be OUT_OF_RANGE.
    floor: u64,
}

#[derive(Debug, Default)]
struct Name {
    life: Option<Life>,
    lives: u32,
    /// The largest version or incarnation ever answered for the name.
    newest: u64,
    /// Incarnations of the lives that ended.
    old_numbers: Vec<u64>,
    /// The newest version of the life before the current one.
    old_last: Option<u64>,
}

#[derive(Debug)]
struct Tok {
    secret: String,
    id: String,
    p: usize,
    seq: u32,
    read_only: bool,
    revoked: bool,
}

#[derive(Debug)]
enum Item {
    Event(pb::WatchEvent),
    End(Status),
    /// The stream ended without a status.
    Closed,
}

/// An open watch and what the model expects of it.
struct Watch {
    label: String,
    p: usize,
    seq: u32,
    number: u64,
    token: Option<usize>,
    target: usize,
    rx: Option<mpsc::UnboundedReceiver<Item>>,
    task: Option<JoinHandle<()>>,
    /// Values that must arrive, in this order.
    required: VecDeque<String>,
    /// Values that may arrive (history a lenient start may or may not
    /// replay), in version order with the required ones.
    allowed: HashSet<String>,
    /// Every delivered version is above this.
    above: u64,
    last_version: u64,
    /// Codes the watch may be refused with before delivering anything.
    may_refuse: Vec<Code>,
    /// Acceptance is wrong: it must be refused with one of `may_refuse`.
    must_refuse: bool,
    received_any: bool,
    /// Codes it must end with (revoked, deleted); empty while it must go on.
    ending: Vec<Code>,
    /// The step at which an end became due.
    ending_since: usize,
    /// Writes numbered from here on must never reach it.
    cutoff: u64,
    /// Ended or refused as expected: nothing may follow.
    done: bool,
}

fn text_of(value: Option<&Value>) -> Option<&str> {
    match value.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// `name/life/n`: the project, the life the model believes the value is
/// written in, and the write's number.
fn parse_tag(value: &str) -> (String, u32, u64) {
    let mut parts = value.split('/');
    let (Some(name), Some(seq), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("{value:?} is no value of this test");
    };
    (
        name.to_string(),
        seq.parse().expect("a life"),
        n.parse().expect("a write number"),
    )
}

impl Watch {
    fn take(&mut self, item: Item) {
        let label = &self.label;
        assert!(!self.done, "{label}: {item:?} after its end");
        match item {
            Item::Event(event) => {
                assert!(
                    !self.must_refuse,
                    "{label}: must be refused but delivered {event:?}"
                );
                self.received_any = true;
                let value = text_of(event.value.as_ref())
                    .unwrap_or_else(|| panic!("{label}: not a value of this test: {event:?}"))
                    .to_string();
                let (name, seq, n) = parse_tag(&value);
                assert_eq!(
                    (name.as_str(), seq),
                    (NAMES[self.p], self.seq),
                    "{label}: delivered a value of another incarnation: {event:?}"
                );
                assert_eq!(
                    event.incarnation, self.number,
                    "{label}: event of incarnation {}: {event:?}",
                    event.incarnation
                );
                assert!(
                    event.version > self.last_version && event.version > self.above,
                    "{label}: version {} after {} (above {}): {event:?}",
                    event.version,
                    self.last_version,
                    self.above
                );
                if !self.ending.is_empty() {
                    assert!(
                        n < self.cutoff,
                        "{label}: delivered write #{n}, made after its end was due (from #{}): {event:?}",
                        self.cutoff
                    );
                }
                if self.required.front() == Some(&value) {
                    self.required.pop_front();
                } else if !self.allowed.remove(&value) {
                    panic!(
                        "{label}: delivered {value:?} out of place; next expected {:?}: {event:?}",
                        self.required.front()
                    );
                }
                self.last_version = event.version;
            }
            Item::End(status) => {
                if !self.ending.is_empty() {
                    assert!(
                        self.ending.contains(&status.code()),
                        "{label}: ended with {status:?}, expected one of {:?}",
                        self.ending
                    );
                    if status.code() == Code::NotFound {
                        let says = format!("project {}", NAMES[self.p]);
                        assert!(
                            status.message().contains(&says),
                            "{label}: {status:?} does not say {says:?}"
                        );
                    }
                } else {
                    assert!(
                        !self.received_any && self.may_refuse.contains(&status.code()),
                        "{label}: ended unexpectedly with {status:?} (may be refused with {:?})",
                        self.may_refuse
                    );
                }
                self.done = true;
            }
            Item::Closed => panic!("{label}: ended without a status"),
        }
    }

    fn drain(&mut self) {
        while !self.done {
            let Some(rx) = self.rx.as_mut() else { return };
            match rx.try_recv() {
                Ok(item) => self.take(item),
                Err(_) => return,
            }
        }
    }

    async fn pump(&mut self, until: impl Fn(&Watch) -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !until(self) {
            let label = self.label.clone();
            let rx = self
                .rx
                .as_mut()
                .unwrap_or_else(|| panic!("{label}: no stream, waiting for {what}"));
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => self.take(item),
                Ok(None) => panic!("{label}: the stream reader stopped, waiting for {what}"),
                Err(_) => panic!(
                    "{label}: {what} did not happen within {WAIT:?} (still required {:?}, ending {:?})",
                    self.required, self.ending
                ),
            }
        }
    }

    /// Its end is due from `step` on, with `code`; writes from `cutoff` on
    /// must never reach it, and what it was still owed may not come.
    fn end_due(&mut self, code: Code, step: usize, cutoff: u64) {
        if self.done {
            return;
        }
        if self.ending.is_empty() {
            self.ending_since = step;
            self.cutoff = cutoff;
            self.allowed.extend(self.required.drain(..));
        }
        self.ending.push(code);
    }
}

fn spawn_reader(
    mut stream: tonic::Streaming<pb::WatchEvent>,
) -> (mpsc::UnboundedReceiver<Item>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let item = match stream.message().await {
                Ok(Some(event)) => Item::Event(event),
                Ok(None) => Item::Closed,
                Err(status) => Item::End(status),
            };
            let last = !matches!(item, Item::Event(_));
            if tx.send(item).is_err() || last {
                return;
            }
        }
    });
    (rx, task)
}

fn config() -> Config {
    Config {
        admin_token: Some(AdminToken::new(ADMIN).unwrap()),
        log: LogOptions {
            fsync: FsyncPolicy::Never,
            ..Config::default().log
        },
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    }
}

fn request<T>(message: T, token: &str, project: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    if let Some(project) = project {
        request
            .metadata_mut()
            .insert("x-kv-project", project.parse().expect("ASCII name"));
    }
    request
}

struct Conn {
    kv: KvServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
}

async fn connect(server: &InProcessDurable) -> Conn {
    let channel = Channel::from_shared(server.ctx().url.clone())
        .unwrap()
        .connect()
        .await
        .expect("connects");
    Conn {
        kv: KvServiceClient::new(channel.clone()),
        admin: AdminServiceClient::new(channel),
    }
}

/// The server, its clients and the model.
struct World {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    server: Option<InProcessDurable>,
    conn: Option<Conn>,
    names: Vec<Name>,
    tokens: Vec<Tok>,
    watches: Vec<Watch>,
    /// Writes attempted so far: numbers every value.
    writes: u64,
    step: usize,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
        let server = InProcessDurable::start_in(dir.path(), config(), clock.clone()).await;
        let conn = connect(&server).await;
        Self {
            dir,
            clock,
            server: Some(server),
            conn: Some(conn),
            names: NAMES.iter().map(|_| Name::default()).collect(),
            tokens: Vec::new(),
            watches: Vec::new(),
            writes: 0,
            step: 0,
        }
    }

    fn kv(&self) -> KvServiceClient<Channel> {
        self.conn.as_ref().expect("connected").kv.clone()
    }

    fn admin(&self) -> AdminServiceClient<Channel> {
        self.conn.as_ref().expect("connected").admin.clone()
    }

    fn valid(&self, t: usize) -> bool {
        let tok = &self.tokens[t];
        !tok.revoked
            && self.names[tok.p]
                .life
                .as_ref()
                .is_some_and(|l| l.seq == tok.seq)
    }

    /// The token index (None for the admin), its secret, the metadata
    /// project and the project the call acts on; None when the step does
    /// not apply (no tokens yet, or the admin on a project that does not
    /// exist, which the spec leaves open).
    fn resolve(
        &self,
        who: Who,
        p: usize,
    ) -> Option<(Option<usize>, String, Option<String>, usize)> {
        match who {
            Who::Admin => self.names[p]
                .life
                .as_ref()
                .map(|_| (None, ADMIN.to_string(), Some(NAMES[p].to_string()), p)),
            Who::Token(i) if !self.tokens.is_empty() => {
                let t = self.tokens.len() - 1 - i % self.tokens.len();
                let tok = &self.tokens[t];
                Some((Some(t), tok.secret.clone(), None, tok.p))
            }
            Who::Token(_) => None,
        }
    }

    async fn apply(&mut self, step: Step) {
        match step {
            Step::CreateProject(p) => self.create_project(p).await,
            Step::DeleteProject(p) => self.delete_project(p).await,
            Step::CreateToken { p, read_only } => self.create_token(p, read_only).await,
            Step::RevokeToken(i) => self.revoke_token(i).await,
            Step::Write { who, p, k } => self.write(who, p, k).await,
            Step::OpenWatch {
                who,
                p,
                target,
                from,
                named,
            } => self.open_watch(who, p, target, from, named).await,
            Step::Restart => self.restart().await,
        }
    }

    async fn create_project(&mut self, p: usize) {
        let name = NAMES[p];
        let reply = self
            .admin()
            .create_project(request(
                pb::CreateProjectRequest {
                    name: name.into(),
                    quota: None,
                },
                ADMIN,
                None,
            ))
            .await;
        if self.names[p].life.is_some() {
            let status = reply.expect_err("creating an existing project");
            assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
            return;
        }
        let number = reply.expect("CreateProject").into_inner().incarnation;
        let model = &mut self.names[p];
        if model.lives == 0 {
            assert_eq!(number, 0, "the first project named {name}");
        } else {
            assert!(
                number > model.newest,
                "recreated {name}: incarnation {number} is not above its old version {}",
                model.newest
            );
        }
        model.newest = model.newest.max(number);
        model.life = Some(Life {
            seq: model.lives,
            number,
            entries: BTreeMap::new(),
            log: Vec::new(),
            version: number,
            floor: number,
        });
        model.lives += 1;
        let info = self
            .admin()
            .get_project(request(
                pb::GetProjectRequest { name: name.into() },
                ADMIN,
                None,
            ))
            .await
            .expect("GetProject")
            .into_inner();
        assert_eq!(
            (info.incarnation, info.keys, info.bytes),
            (number, 0, 0),
            "a new {name}"
        );
    }

    async fn delete_project(&mut self, p: usize) {
        let reply = self
            .admin()
            .delete_project(request(
                pb::DeleteProjectRequest {
                    name: NAMES[p].into(),
                },
                ADMIN,
                None,
            ))
            .await;
        let Some(life) = self.names[p].life.take() else {
            let status = reply.expect_err("deleting a missing project");
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            return;
        };
        let deleted = reply.expect("DeleteProject").into_inner().deleted_keys;
        assert_eq!(deleted, life.entries.len() as u64, "keys of {}", NAMES[p]);
        let model = &mut self.names[p];
        model.old_numbers.push(life.number);
        model.old_last = Some(life.version);
        for watch in &mut self.watches {
            if watch.p == p && watch.seq == life.seq {
                watch.end_due(Code::NotFound, self.step, self.writes);
            }
        }
    }

    async fn create_token(&mut self, p: usize, read_only: bool) {
        let reply = self
            .admin()
            .create_token(request(
                pb::CreateTokenRequest {
                    project: NAMES[p].into(),
                    read_only,
                    limits: None,
                },
                ADMIN,
                None,
            ))
            .await;
        let Some(life) = &self.names[p].life else {
            let status = reply.expect_err("a token for a missing project");
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            return;
        };
        let reply = reply.expect("CreateToken").into_inner();
        self.tokens.push(Tok {
            secret: reply.token,
            id: reply.info.expect("token info").id,
            p,
            seq: life.seq,
            read_only,
            revoked: false,
        });
    }

    async fn revoke_token(&mut self, i: usize) {
        if self.tokens.is_empty() {
            return;
        }
        let t = i % self.tokens.len();
        let existed = self.valid(t);
        let revoked = self
            .admin()
            .revoke_token(request(
                pb::RevokeTokenRequest {
                    id: self.tokens[t].id.clone(),
                },
                ADMIN,
                None,
            ))
            .await
            .expect("RevokeToken")
            .into_inner()
            .revoked;
        assert_eq!(
            revoked, existed,
            "revoking token {t} (deleted with its project or revoked before: {})",
            !existed
        );
        self.tokens[t].revoked = true;
        for watch in &mut self.watches {
            if watch.token == Some(t) {
                watch.end_due(Code::Unauthenticated, self.step, self.writes);
            }
        }
    }

    async fn write(&mut self, who: Who, p: usize, k: usize) {
        let Some((token, secret, project, p)) = self.resolve(who, p) else {
            return;
        };
        let seq = match token {
            Some(t) => self.tokens[t].seq,
            None => self.names[p].life.as_ref().expect("resolved").seq,
        };
        let n = self.writes;
        self.writes += 1;
        let value = format!("{}/{seq}/{n}", NAMES[p]);
        let reply = self
            .kv()
            .set(request(
                pb::SetRequest {
                    key: KEYS[k].into(),
                    value: Some(Value {
                        kind: Some(Kind::StringValue(value.clone())),
                    }),
                    ..Default::default()
                },
                &secret,
                project.as_deref(),
            ))
            .await;
        let what = format!("write #{n} of {} by {who:?}", KEYS[k]);
        if let Some(t) = token {
            if !self.valid(t) {
                let status = reply.expect_err(&what);
                assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
                return;
            }
            if self.tokens[t].read_only {
                let status = reply.expect_err(&what);
                assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
                return;
            }
        }
        let version = reply
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
            .into_inner()
            .version;
        let life = self.names[p].life.as_mut().expect("a live project");
        assert_eq!(
            version,
            life.version + 1,
            "{what}: versions count up from the incarnation {}",
            life.number
        );
        life.version = version;
        life.entries.insert(k, (value.clone(), version));
        life.log.push((k, value.clone(), version));
        let seq = life.seq;
        let model = &mut self.names[p];
        model.newest = model.newest.max(version);
        for watch in &mut self.watches {
            if !watch.done
                && watch.ending.is_empty()
                && watch.p == p
                && watch.seq == seq
                && covers(watch.target, k)
            {
                watch.required.push_back(value.clone());
            }
        }
    }

    async fn open_watch(&mut self, who: Who, p: usize, target: usize, from: From, named: Named) {
        let Some((token, secret, project, p)) = self.resolve(who, p) else {
            return;
        };
        let name = &self.names[p];
        let label = format!(
            "watch #{} ({who:?} on {}, target {target}, from {from:?}, named {named:?}, opened at step {})",
            self.watches.len(),
            NAMES[p],
            self.step
        );
        let mut watch = Watch {
            label,
            p,
            seq: token.map_or_else(
                || name.life.as_ref().expect("resolved").seq,
                |t| self.tokens[t].seq,
            ),
            number: 0,
            token,
            target,
            rx: None,
            task: None,
            required: VecDeque::new(),
            allowed: HashSet::new(),
            above: 0,
            last_version: 0,
            may_refuse: Vec::new(),
            must_refuse: false,
            received_any: false,
            ending: Vec::new(),
            ending_since: 0,
            cutoff: 0,
            done: false,
        };
        let mut watch_request = pb::WatchRequest {
            target: watch_target(target),
            ..Default::default()
        };
        let usable = token.is_none_or(|t| self.valid(t));
        match &name.life {
            Some(life) if usable => {
                watch.number = life.number;
                watch.above = life.number;
                let from_version = match from {
                    From::Now => None,
                    From::Zero => Some(0),
                    From::One => Some(1),
                    From::Current => Some(life.version),
                    From::OldLast => name.old_last,
                };
                let incarnation = match named {
                    Named::No => None,
                    Named::Current => Some(life.number),
                    Named::Old => name.old_numbers.last().copied(),
                };
                watch_request.from_version = from_version;
                watch_request.incarnation = incarnation;
                let history = |above: u64| {
                    life.log
                        .iter()
                        .filter(move |(k, _, version)| *version > above && covers(target, *k))
                        .map(|(_, value, _)| value.clone())
                };
                if incarnation.is_some_and(|i| i != life.number) {
                    watch.must_refuse = true;
                    watch.may_refuse = vec![Code::FailedPrecondition];
                } else if let Some(from) = from_version {
                    // 0 is the current incarnation's first change.
                    let start = if from == 0 { life.number } else { from };
                    if start < life.number {
                        // A version of an earlier incarnation: refused, or
                        // nothing but this incarnation's changes.
                        watch.may_refuse = vec![Code::FailedPrecondition, Code::OutOfRange];
                        watch.allowed.extend(history(life.number));
                    } else if start > life.version {
                        watch.must_refuse = true;
                        watch.may_refuse = vec![Code::InvalidArgument];
                    } else {
                        if start < life.floor {
                            watch.may_refuse = vec![Code::OutOfRange];
                        }
                        watch.above = start;
                        watch.required.extend(history(start));
                    }
                }
            }
            _ => {
                // A revoked token, or one of a deleted project.
                watch.must_refuse = true;
                watch.may_refuse = vec![Code::Unauthenticated];
            }
        }
        watch.label = format!("{} {watch_request:?}", watch.label);
        match self
            .kv()
            .watch(request(watch_request, &secret, project.as_deref()))
            .await
        {
            Ok(stream) => {
                let (rx, task) = spawn_reader(stream.into_inner());
                watch.rx = Some(rx);
                watch.task = Some(task);
                if watch.must_refuse {
                    watch.pump(|w| w.done, "the refusal").await;
                }
            }
            Err(status) => watch.take(Item::End(status)),
        }
        self.watches.push(watch);
    }

    /// Checks every watch against what has happened: what is owed arrives,
    /// ends due before this step have happened.
    async fn settle(&mut self, all_ends: bool) {
        for watch in &mut self.watches {
            watch.drain();
        }
        for watch in &mut self.watches {
            if !watch.done
                && !watch.ending.is_empty()
                && (all_ends || watch.ending_since < self.step)
            {
                watch.pump(|w| w.done, "its end").await;
            }
        }
        for watch in &mut self.watches {
            if !watch.done && watch.ending.is_empty() {
                watch
                    .pump(|w| w.done || w.required.is_empty(), "the owed events")
                    .await;
            }
        }
    }

    /// Every read shows exactly the current incarnation, whoever reads.
    async fn check_reads(&self) {
        for (p, model) in self.names.iter().enumerate() {
            let listed = self
                .kv()
                .list(request(
                    pb::ListRequest {
                        limit: 1000,
                        ..Default::default()
                    },
                    ADMIN,
                    Some(NAMES[p]),
                ))
                .await;
            match &model.life {
                Some(life) => {
                    let listed = listed.expect("List of a live project").into_inner();
                    let got: Vec<(String, Option<String>, u64)> = listed
                        .entries
                        .iter()
                        .map(|e| {
                            (
                                e.key.clone(),
                                text_of(e.value.as_ref()).map(str::to_string),
                                e.version,
                            )
                        })
                        .collect();
                    let want: Vec<(String, Option<String>, u64)> = life
                        .entries
                        .iter()
                        .map(|(k, (value, version))| {
                            (KEYS[*k].to_string(), Some(value.clone()), *version)
                        })
                        .collect();
                    assert_eq!(got, want, "List of {}", NAMES[p]);
                    assert_eq!(
                        (listed.incarnation, listed.version),
                        (life.number, life.version),
                        "List of {}",
                        NAMES[p]
                    );
                }
                None => match listed {
                    Ok(listed) => assert!(
                        listed.into_inner().entries.is_empty(),
                        "a deleted {} still lists entries",
                        NAMES[p]
                    ),
                    Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
                },
            }
        }
        for (t, tok) in self.tokens.iter().enumerate() {
            let reply = self
                .kv()
                .get_many(request(
                    pb::GetManyRequest {
                        keys: KEYS.iter().map(|k| k.to_string()).collect(),
                    },
                    &tok.secret,
                    None,
                ))
                .await;
            if !self.valid(t) {
                let status = reply.expect_err("a revoked or orphaned token reads");
                assert_eq!(
                    status.code(),
                    Code::Unauthenticated,
                    "token {t}: {status:?}"
                );
                continue;
            }
            let life = self.names[tok.p]
                .life
                .as_ref()
                .expect("a valid token's project");
            let results = reply.expect("GetMany").into_inner().results;
            for (k, got) in results.iter().enumerate() {
                let want = life.entries.get(&k);
                assert_eq!(
                    (
                        text_of(got.value.as_ref()),
                        got.found.then_some(got.version)
                    ),
                    (
                        want.map(|(v, _)| v.as_str()),
                        want.map(|(_, version)| *version)
                    ),
                    "token {t} reads {}",
                    KEYS[k]
                );
                assert_eq!(got.incarnation, life.number, "token {t} reads {}", KEYS[k]);
            }
        }
    }

    /// Stops everything that reads from the server and the server itself.
    async fn shut_down(&mut self) {
        for watch in &mut self.watches {
            if let Some(task) = watch.task.take() {
                task.abort();
                let _ = task.await;
            }
        }
        self.watches.clear();
        self.conn = None;
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    async fn restart(&mut self) {
        self.settle(true).await;
        self.shut_down().await;
        let server =
            InProcessDurable::start_in(self.dir.path(), config(), self.clock.clone()).await;
        self.conn = Some(connect(&server).await);
        self.server = Some(server);
        for life in self.names.iter_mut().filter_map(|n| n.life.as_mut()) {
            life.floor = life.version;
        }
    }
}

/// Both projects with a token each: without them most early steps would
/// have nothing to act on.
const PRELUDE: [Step; 4] = [
    Step::CreateProject(0),
    Step::CreateProject(1),
    Step::CreateToken {
        p: 0,
        read_only: false,
    },
    Step::CreateToken {
        p: 1,
        read_only: false,
    },
];

async fn run(steps: Vec<Step>) {
    let mut world = World::new().await;
    for (i, step) in PRELUDE.into_iter().chain(steps).enumerate() {
        world.step = i;
        world.apply(step).await;
        world.settle(false).await;
        world.check_reads().await;
    }
    world.step += 1;
    world.settle(true).await;
    world.shut_down().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tenancy_matches_the_model(steps in prop::collection::vec(step(), 16..36)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), run(steps))
                .await
                .expect("a case finishes within 60 s");
        });
    }
}
