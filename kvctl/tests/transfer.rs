//! `kvctl export` and `import` between real servers: 100k keys in four
//! projects come back with the same values and deadlines, a dry run writes
//! nothing, and an import stopped or killed mid-way resumes to the same
//! end state.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{ADMIN, Kv, server, wait};
use kv_client::{Client, SetManyOptions};
use kv_tests::BinaryServer;
use serde_json::{Value, json};

const PROJECTS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const KEYS_PER_PROJECT: usize = 25_000;

/// key -> (value, deadline) of every project.
type Contents = BTreeMap<(String, String), (Value, Option<u64>)>;

async fn client(server: &BinaryServer) -> Client {
    Client::builder(format!("http://{}", server.addr))
        .token(ADMIN)
        .connect()
        .await
        .expect("SDK connects")
}

/// Fills the projects: batches of 1000, every other batch with a TTL of
/// its own (1 h plus the batch's number of seconds).
async fn fill(server: &BinaryServer) {
    let client = client(server).await;
    for (p, name) in PROJECTS.iter().enumerate() {
        client
            .admin()
            .create_project(name, Default::default())
            .await
            .expect("create");
        let project = client.project(name);
        for (batch, start) in (0..KEYS_PER_PROJECT).step_by(1000).enumerate() {
            let values: Vec<(String, Value)> = (start..start + 1000)
                .map(|i| {
                    (
                        format!("key:{i:06}"),
                        json!({"p": p, "i": i, "tags": ["x", i % 5], "s": "v".repeat(i % 9)}),
                    )
                })
                .collect();
            let refs = values.iter().map(|(k, v)| (k.as_str(), v));
            let mut options = SetManyOptions::new();
            if batch % 2 == 0 {
                options = options.ttl(Duration::from_secs(3600 + batch as u64));
            }
            project
                .set_many_with(refs, options)
                .await
                .expect("set_many");
        }
    }
}

async fn contents(server: &BinaryServer) -> Contents {
    let client = client(server).await;
    let mut all = Contents::new();
    for name in PROJECTS {
        for entry in client.project(name).list_all("").await.expect("list") {
            let value = entry.value.expect("listed with values");
            all.insert((name.into(), entry.key), (value, entry.expires_at_ms));
        }
    }
    all
}

/// Same keys and values; each deadline equal or later by the time the
/// import took to send it (it is sent as the time left).
fn assert_same(original: &Contents, copy: &Contents) {
    assert_eq!(original.len(), copy.len(), "key counts differ");
    for (key, (value, deadline)) in original {
        let (copied, copied_deadline) = copy
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} is missing"));
        assert_eq!(value, copied, "{key:?}");
        match (deadline, copied_deadline) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(
                *b >= *a && *b - *a < 10_000,
                "{key:?}: deadline {a} became {b}"
            ),
            other => panic!("{key:?}: deadline {other:?}"),
        }
    }
}

fn export(kv: &Kv, file: &Path, args: &[&str]) -> String {
    let out = std::fs::File::create(file).expect("export file");
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let child = kv
        .command(&all)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvctl export starts");
    // stdout goes to the file; `wait` drains only what is piped.
    let mut child = child;
    let stderr = child.stderr.take().expect("piped");
    let status = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "export did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut { stderr }, &mut said).expect("stderr");
    assert!(status.success(), "export failed: {said}");
    said
}

#[test]
fn export_then_import_into_a_fresh_server_gives_the_same_data_even_when_interrupted() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let source = server();
    rt.block_on(fill(&source));
    let original = rt.block_on(contents(&source));
    assert_eq!(original.len(), PROJECTS.len() * KEYS_PER_PROJECT);

    // Export: one JSON line per entry, absolute deadlines, versions.
    let file = dir.path().join("all.jsonl");
    // KV_PROJECT does not narrow an export: only the flag does.
    let said = export(&Kv::admin(&source).in_project("beta"), &file, &[]);
    assert!(
        said.contains("exported 100000 entries from 4 projects"),
        "{said}"
    );
    let text = std::fs::read_to_string(&file).expect("read export");
    let mut with_deadline = 0;
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(entry["version"].as_u64().is_some_and(|v| v >= 1), "{entry}");
        let key = (
            entry["project"].as_str().unwrap().to_string(),
            entry["key"].as_str().unwrap().to_string(),
        );
        let (value, deadline) = &original[&key];
        assert_eq!(&entry["value"], value);
        assert_eq!(entry["expires_at_ms"].as_u64(), *deadline);
        with_deadline += usize::from(deadline.is_some());
    }
    assert_eq!(text.lines().count(), 100_000);
    assert_eq!(
        with_deadline, 52_000,
        "13 of 25 batches per project have a TTL"
    );
    // One project only.
    let one = dir.path().join("beta.jsonl");
    export(&Kv::admin(&source), &one, &["--project", "beta", "--json"]);
    let beta = std::fs::read_to_string(&one).unwrap();
    assert_eq!(beta.lines().count(), KEYS_PER_PROJECT);
    assert!(beta.lines().all(|l| l.contains(r#""project":"beta""#)));
    // An entry whose deadline has passed by import time is skipped.
    let expired =
        json!({"project": "alpha", "key": "gone", "value": 1, "version": 9, "expires_at_ms": 1000});
    std::fs::write(&file, format!("{text}{expired}\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    let progress = dir.path().join("all.jsonl.progress");

    // A dry run checks and counts, and writes nothing.
    let target = server();
    let kv = Kv::admin(&target);
    let dry = kv
        .expect(0, &["import", file_arg, "--dry-run", "--json"])
        .json();
    assert_eq!(dry["written"], 100_000);
    assert_eq!(dry["skipped_expired"], 1);
    assert_eq!(kv.expect(0, &["project", "ls", "--json"]).json(), json!([]));
    assert!(!progress.exists());

    // Stopped after three batches: exactly their lines are in, and the
    // progress file says so.
    let stopped = kv.expect(
        6,
        &[
            "import",
            file_arg,
            "--batch-size",
            "500",
            "--stop-after-batches",
            "3",
        ],
    );
    assert!(
        stopped.stderr.contains("resume after line 1500"),
        "{stopped:?}"
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    assert_eq!(saved["lines"], 1500);
    assert_eq!(
        kv.expect(0, &["project", "get", "alpha", "--json"]).json()["keys"],
        1500
    );
    let resumed = kv
        .expect(0, &["import", file_arg, "--batch-size", "500", "--json"])
        .json();
    assert_eq!(resumed["resumed_after_line"], 1500);
    assert_eq!(resumed["written"], 98_500);
    assert_eq!(resumed["skipped_expired"], 1);
    assert!(
        !progress.exists(),
        "a finished import leaves no progress file"
    );
    assert_same(&original, &rt.block_on(contents(&target)));
    drop(target);

    // Killed at an arbitrary point: the re-run resumes and ends the same.
    let target = server();
    let kv = Kv::admin(&target);
    let mut child = kv
        .command(&["import", file_arg, "--batch-size", "200"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvctl import starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines_at_kill = loop {
        let lines = std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|p| p["lines"].as_u64())
            .unwrap_or(0);
        if lines >= 10_000 {
            break lines;
        }
        assert!(Instant::now() < deadline, "import made no progress");
        std::thread::sleep(Duration::from_millis(2));
    };
    // SIGKILL: no chance to save anything more.
    child.kill().expect("kill kvctl");
    let killed = wait(child, &["import"], Duration::from_secs(10));
    assert_ne!(killed.code, Some(0), "killed before the end: {killed:?}");
    assert!(lines_at_kill < 100_001, "killed mid-way");
    let resumed = kv
        .expect(0, &["import", file_arg, "--batch-size", "200", "--json"])
        .json();
    let after = resumed["resumed_after_line"].as_u64().unwrap();
    assert!(after >= lines_at_kill && after < 100_001, "{resumed}");
    assert_same(&original, &rt.block_on(contents(&target)));

    // A different file under an old progress file is refused, not mixed up.
    std::fs::write(&progress, br#"{"input":"elsewhere","run":"r","lines":5}"#).unwrap();
    let refused = kv.expect(7, &["import", file_arg]);
    assert!(refused.stderr.contains("another input"), "{refused:?}");
}
