//! kvctl end to end: every data and admin command against the real
//! kv-server binary, human and `--json` output, exit codes, the
//! confirmation prompt and shell completions.

mod common;

use std::time::Duration;

use common::{ADMIN, Kv, server, wait};
use serde_json::json;

#[test]
fn data_commands_print_values_and_say_what_happened_in_exit_codes() {
    let server = server();
    let kv = Kv::admin(&server).in_project("shop");

    let set = kv
        .expect(0, &["set", "cart:1", r#"{"items":[1,2]}"#, "--json"])
        .json();
    assert_eq!(set["applied"], true);
    let v1 = set["version"].as_u64().expect("a version");
    assert_eq!(
        kv.expect(0, &["get", "cart:1"]).stdout.trim(),
        r#"{"items":[1,2]}"#
    );
    let got = kv.expect(0, &["get", "cart:1", "--json"]).json();
    assert_eq!(got["value"], json!({"items": [1, 2]}));
    assert_eq!(got["version"], v1);
    assert_eq!(got["expires_at_ms"], json!(null));

    // Absent keys, false conditions: exit 1.
    let missing = kv.expect(1, &["get", "nope"]);
    assert!(missing.stderr.contains("no key \"nope\""), "{missing:?}");
    assert_eq!(
        kv.expect(1, &["get", "nope", "--json"]).json()["found"],
        false
    );
    assert_eq!(kv.expect(0, &["has", "cart:1"]).stdout.trim(), "true");
    assert_eq!(kv.expect(1, &["has", "nope"]).stdout.trim(), "false");
    assert_eq!(
        kv.expect(1, &["has", "nope", "--json"]).json()["exists"],
        false
    );
    let refused = kv
        .expect(1, &["set", "cart:1", "3", "--if-absent", "--json"])
        .json();
    assert_eq!(refused["applied"], false);
    assert_eq!(refused["version"], v1);
    kv.expect(
        1,
        &[
            "set",
            "cart:1",
            "3",
            "--if-version",
            &(v1 + 100).to_string(),
        ],
    );
    kv.expect(0, &["set", "cart:1", "3", "--if-version", &v1.to_string()]);
    assert_eq!(kv.expect(0, &["get", "cart:1"]).stdout.trim(), "3");

    // Strings: JSON, or --string as is; bad JSON is a usage error.
    kv.expect(0, &["set", "name", r#""Ada""#]);
    kv.expect(0, &["set", "note", "hello world", "--string"]);
    assert_eq!(
        kv.expect(0, &["get", "note"]).stdout.trim(),
        r#""hello world""#
    );
    let bad = kv.expect(2, &["set", "name", "Ada"]);
    assert!(bad.stderr.contains("VALUE is not JSON"), "{bad:?}");

    // TTLs in human units.
    let now = now_ms();
    kv.expect(0, &["set", "session", "1", "--ttl", "5m"]);
    let session = kv.expect(0, &["get", "session", "--json"]).json();
    let deadline = session["expires_at_ms"].as_u64().expect("a deadline");
    assert!(
        deadline >= now + 299_000 && deadline <= now_ms() + 300_000,
        "{session}"
    );
    kv.expect(0, &["set", "blink", "1", "--ttl", "250ms"]);
    std::thread::sleep(Duration::from_millis(600));
    kv.expect(1, &["has", "blink"]);
    let zero = kv.expect(2, &["set", "k", "1", "--ttl", "0s"]);
    assert!(zero.stderr.contains("zero"), "{zero:?}");
    let unit = kv.expect(2, &["set", "k", "1", "--ttl", "5 fortnights"]);
    assert!(unit.stderr.contains("--ttl"), "{unit:?}");

    // incr and merge print the result.
    assert_eq!(kv.expect(0, &["incr", "visits"]).stdout.trim(), "1");
    assert_eq!(kv.expect(0, &["incr", "visits", "41"]).stdout.trim(), "42");
    assert_eq!(
        kv.expect(0, &["incr", "visits", "-2", "--json"]).json()["value"],
        40
    );
    let merged = kv.expect(0, &["merge", "prefs", r#"{"theme":"dark","beta":true}"#]);
    assert_eq!(merged.stdout.trim(), r#"{"beta":true,"theme":"dark"}"#);
    let merged = kv
        .expect(0, &["merge", "prefs", r#"{"beta":null}"#, "--json"])
        .json();
    assert_eq!(merged["value"], json!({"theme": "dark"}));
    // A non-number is refused by the server: its message, exit 5.
    let not_a_number = kv.expect(5, &["incr", "name"]);
    assert!(not_a_number.stderr.contains("kvctl: "), "{not_a_number:?}");

    // del: exit 1 when there was nothing to delete.
    assert_eq!(
        kv.expect(0, &["del", "name", "--json"]).json()["deleted"],
        true
    );
    assert_eq!(
        kv.expect(1, &["del", "name", "--json"]).json()["deleted"],
        false
    );
}

#[test]
fn ls_pages_through_keys_with_or_without_values() {
    let server = server();
    let kv = Kv::admin(&server).in_project("shop");
    for i in 0..7 {
        kv.expect(0, &["set", &format!("item:{i}"), &i.to_string()]);
    }
    kv.expect(0, &["set", "other", "true", "--ttl", "1h"]);

    // Pages of 2 walk all seven, in key order.
    let all = kv
        .expect(0, &["ls", "item:", "--page-size", "2", "--json"])
        .json();
    let entries = all["entries"].as_array().expect("entries");
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        (0..7).map(|i| format!("item:{i}")).collect::<Vec<_>>()
    );
    assert_eq!(entries[3]["value"], 3);
    assert_eq!(all["next_start_after"], json!(null));

    // --limit stops early and says where to go on.
    let first = kv
        .expect(0, &["ls", "item:", "--limit", "3", "--json"])
        .json();
    assert_eq!(first["entries"].as_array().unwrap().len(), 3);
    assert_eq!(first["next_start_after"], "item:2");
    let rest = kv
        .expect(0, &["ls", "item:", "--start-after", "item:2", "--json"])
        .json();
    assert_eq!(rest["entries"].as_array().unwrap().len(), 4);

    let keys_only = kv.expect(0, &["ls", "--keys-only", "--json"]).json();
    let other = &keys_only["entries"].as_array().unwrap()[7];
    assert_eq!(other["key"], "other");
    assert!(other.get("value").is_none(), "{other}");
    assert!(other["expires_at_ms"].as_u64().is_some(), "{other}");

    // The table: a header, one row per key, the TTL left.
    let table = kv.expect(0, &["ls"]).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 9, "{table}");
    assert!(
        lines[0].starts_with("KEY") && lines[0].ends_with("VALUE"),
        "{table}"
    );
    assert!(
        lines[8].starts_with("other") && lines[8].contains("59m"),
        "{table}"
    );
    let more = kv.expect(0, &["ls", "--limit", "2"]).stdout;
    assert!(more.contains("(more: --start-after \"item:1\")"), "{more}");
}

#[test]
fn watch_replays_from_a_version_then_follows_live_changes() {
    let server = server();
    let kv = Kv::admin(&server).in_project("shop");
    let v = kv.expect(0, &["set", "stock:a", "1", "--json"]).json()["version"]
        .as_u64()
        .unwrap();
    kv.expect(0, &["set", "ignored", "1"]);
    kv.expect(0, &["del", "stock:a"]);

    // Replay: after version v, only the prefix's changes.
    let replay = kv.expect(
        0,
        &[
            "watch",
            "stock:",
            "--from-version",
            &(v - 1).to_string(),
            "--count",
            "2",
            "--json",
        ],
    );
    let events: Vec<serde_json::Value> = replay
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 2, "{replay:?}");
    assert_eq!(
        (events[0]["kind"].as_str(), events[0]["value"].clone()),
        (Some("set"), json!(1))
    );
    assert_eq!(events[1]["kind"], "deleted");
    assert_eq!(events[1]["key"], "stock:a");

    // Live: a watcher started now sees a write made after it starts (from
    // the current version, so it cannot miss one made before it is open).
    let now = kv.expect(0, &["set", "marker", "0", "--json"]).json()["version"]
        .as_u64()
        .unwrap();
    let child = kv
        .command(&["watch", "--from-version", &now.to_string(), "--count", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kvctl watch starts");
    kv.expect(0, &["set", "stock:b", r#"{"n":5}"#]);
    let live = wait(child, &["watch"], Duration::from_secs(30));
    assert_eq!(live.code, Some(0), "{live:?}");
    let line = live.stdout.trim();
    assert!(
        line.contains("set") && line.contains("stock:b") && line.contains(r#"{"n":5}"#),
        "{line}"
    );
}

#[test]
fn clear_and_project_rm_ask_first_unless_yes() {
    let server = server();
    let admin = Kv::admin(&server);
    admin.expect(0, &["project", "create", "shop"]);
    let kv = admin.in_project("shop");
    kv.expect(0, &["set", "a", "1"]);
    kv.expect(0, &["set", "b", "2"]);

    // "n" (or anything but y/yes, or no answer at all) deletes nothing.
    let no = kv.run_with_stdin(&["clear"], Some(b"n\n"));
    assert_eq!(no.code, Some(6), "{no:?}");
    assert!(
        no.stderr
            .contains("delete every key of project \"shop\"? [y/N]"),
        "{no:?}"
    );
    assert!(no.stderr.contains("aborted"), "{no:?}");
    assert_eq!(kv.run(&["clear"]).code, Some(6));
    kv.expect(0, &["has", "a"]);

    let yes = kv.run_with_stdin(&["clear", "--json"], Some(b"y\n"));
    assert_eq!(yes.code, Some(0), "{yes:?}");
    assert_eq!(yes.json()["deleted"], 2);
    kv.expect(1, &["has", "a"]);

    kv.expect(0, &["set", "c", "3"]);
    assert_eq!(
        kv.expect(0, &["clear", "--yes"]).stdout.trim(),
        "deleted 1 keys"
    );

    let keep = admin.run_with_stdin(&["project", "rm", "shop"], Some(b"no\n"));
    assert_eq!(keep.code, Some(6), "{keep:?}");
    admin.expect(0, &["project", "get", "shop"]);
    let gone = admin.run_with_stdin(&["project", "rm", "shop", "--json"], Some(b"yes\n"));
    assert_eq!(gone.code, Some(0), "{gone:?}");
    assert_eq!(gone.json()["deleted"], true);
    admin.expect(1, &["project", "get", "shop"]);
    admin.expect(1, &["project", "rm", "shop", "--yes"]);
}

#[test]
fn projects_quotas_and_tokens_are_managed_with_the_admin_token() {
    let server = server();
    let admin = Kv::admin(&server);
    let made = admin
        .expect(
            0,
            &["project", "create", "shop", "--max-keys", "2", "--json"],
        )
        .json();
    assert_eq!(made["name"], "shop");
    assert_eq!(made["quota"]["max_keys"], 2);
    let twice = admin.expect(5, &["project", "create", "shop"]);
    assert!(twice.stderr.contains("already exists"), "{twice:?}");
    admin.expect(0, &["project", "create", "blog"]);

    let listed = admin.expect(0, &["project", "ls", "--json"]).json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["blog", "shop"]);
    let table = admin.expect(0, &["project", "ls"]).stdout;
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    // The quota holds: the third key is refused (exit 5, the server's words).
    let shop = admin.in_project("shop");
    shop.expect(0, &["set", "a", "1"]);
    shop.expect(0, &["set", "b", "1"]);
    let over = shop.expect(5, &["set", "c", "1"]);
    assert!(over.stderr.contains("ResourceExhausted"), "{over:?}");
    let raised = admin
        .expect(
            0,
            &["project", "quota", "shop", "--max-keys", "10", "--json"],
        )
        .json();
    assert_eq!(raised["quota"]["max_keys"], 10);
    shop.expect(0, &["set", "c", "1"]);
    assert_eq!(
        admin
            .expect(0, &["project", "get", "shop", "--json"])
            .json()["keys"],
        3
    );

    // Tokens: the secret is printed once; read-only ones may not write.
    let reader = admin
        .expect(0, &["token", "create", "shop", "--read-only", "--json"])
        .json();
    let writer = admin.expect(0, &["token", "create", "shop"]).stdout;
    let writer_secret = writer
        .lines()
        .nth(1)
        .expect("the secret on its own line")
        .trim()
        .to_string();
    let as_reader = shop.with_token(reader["token"].as_str());
    assert_eq!(as_reader.expect(0, &["get", "a"]).stdout.trim(), "1");
    let denied = as_reader.expect(4, &["set", "a", "2"]);
    assert!(denied.stderr.contains("PermissionDenied"), "{denied:?}");
    shop.with_token(Some(&writer_secret))
        .expect(0, &["set", "a", "2"]);
    // A project token may not use the admin API.
    Kv::admin(&server)
        .with_token(Some(&writer_secret))
        .expect(4, &["project", "ls"]);

    let tokens = admin.expect(0, &["token", "ls", "--json"]).json();
    assert_eq!(tokens.as_array().unwrap().len(), 2, "{tokens}");
    let blog_tokens = admin
        .expect(0, &["token", "ls", "--for-project", "blog", "--json"])
        .json();
    assert_eq!(blog_tokens, json!([]));
    let id = reader["id"].as_str().unwrap();
    assert!(admin.expect(0, &["token", "ls"]).stdout.contains(id));
    assert_eq!(
        admin.expect(0, &["token", "revoke", id, "--json"]).json()["revoked"],
        true
    );
    admin.expect(1, &["token", "revoke", id]);
    as_reader.expect(4, &["get", "a"]);
}

#[test]
fn failures_map_to_documented_exit_codes() {
    let server = server();
    let kv = Kv::admin(&server).in_project("shop");
    // 2: usage (clap's, and a data command without a project).
    kv.expect(2, &["frobnicate"]);
    let no_project = Kv::admin(&server).expect(2, &["get", "a"]);
    assert!(no_project.stderr.contains("KV_PROJECT"), "{no_project:?}");
    // 3: nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Kv {
        url: format!("http://127.0.0.1:{port}"),
        ..kv.clone()
    };
    let unreachable = down.expect(3, &["get", "a", "--timeout", "2s"]);
    assert!(
        unreachable.stderr.contains("cannot connect"),
        "{unreachable:?}"
    );
    // 4: no token, a wrong token.
    kv.with_token(None).expect(4, &["get", "a"]);
    let wrong = kv
        .with_token(Some("not-the-token"))
        .expect(4, &["get", "a"]);
    assert!(wrong.stderr.contains("Unauthenticated"), "{wrong:?}");
    // 5: refused by the server, with its message.
    let long_key = "k".repeat(100_000);
    let refused = kv.expect(5, &["set", &long_key, "1"]);
    assert!(
        refused.stderr.contains("the limit is 4096 bytes"),
        "{refused:?}"
    );
    // 7: an unreadable file.
    kv.expect(7, &["import", "/nonexistent/file.jsonl"]);
    let _ = ADMIN;
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(common::kvctl())
            .args(["completions", shell])
            .output()
            .expect("kvctl runs");
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("kvctl") && script.contains("import"),
            "{shell}: {script}"
        );
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn tls_options_reach_a_mutual_tls_server() {
    let pki = kv_tests::pki::TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_to(dir.path());
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (client_cert, client_key) = (
        write("client.pem", &pki.client.cert),
        write("client.key", &pki.client.key),
    );
    let (cert, key, ca) = (
        files.server_cert.display().to_string(),
        files.server_key.display().to_string(),
        files.ca.display().to_string(),
    );
    let server = kv_tests::BinaryServer::start_with_env(
        &common::kv_server(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        &[("KV_ADMIN_TOKEN", ADMIN)],
    );
    let kv = Kv {
        url: format!("https://127.0.0.1:{}", server.addr.port()),
        ..Kv::admin(&server)
    }
    .in_project("shop");
    let tls = [
        "--tls-ca",
        &ca,
        "--tls-cert",
        &client_cert,
        "--tls-key",
        &client_key,
    ];
    let mut set = vec!["set", "a", "1"];
    set.extend(tls);
    kv.expect(0, &set);
    let mut get = vec!["get", "a", "--json"];
    get.extend(tls);
    assert_eq!(kv.expect(0, &get).json()["value"], 1);
    // Without the CA the server is not trusted; without the client
    // certificate it refuses the connection: both are "unreachable".
    kv.expect(
        3,
        &[
            "get",
            "a",
            "--timeout",
            "3s",
            "--tls-cert",
            &client_cert,
            "--tls-key",
            &client_key,
        ],
    );
    kv.expect(3, &["get", "a", "--timeout", "3s", "--tls-ca", &ca]);
    // A certificate without its key is a usage error.
    kv.expect(2, &["get", "a", "--tls-cert", &client_cert]);
}

#[test]
fn import_reads_stdin_and_names_the_line_it_cannot_read() {
    let server = server();
    let kv = Kv::admin(&server);
    let lines = concat!(
        r#"{"project":"shop","key":"a","value":{"n":1},"version":3,"expires_at_ms":null}"#,
        "\n\n",
        r#"{"project":"shop","key":"b","value":"x"}"#,
        "\n",
        r#"{"project":"blog","key":"c","value":[1,2],"expires_at_ms":1}"#,
        "\n",
    );
    let done = kv.run_with_stdin(&["import", "--json"], Some(lines.as_bytes()));
    assert_eq!(done.code, Some(0), "{done:?}");
    // Piped: no progress bar, only the summary.
    assert_eq!(done.stderr, "", "{done:?}");
    let summary = done.json();
    assert_eq!(
        (
            summary["written"].as_u64(),
            summary["skipped_expired"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(
        kv.in_project("shop").expect(0, &["get", "a"]).stdout.trim(),
        r#"{"n":1}"#
    );
    assert_eq!(
        kv.in_project("shop").expect(0, &["get", "b"]).stdout.trim(),
        r#""x""#
    );

    let bad = format!("{lines}{{\"project\":\"shop\",\"key\":\"d\"}}\n");
    let refused = kv.run_with_stdin(&["import", "--dry-run"], Some(bad.as_bytes()));
    assert_eq!(refused.code, Some(7), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("line 5: not an exported entry: missing field `value`"),
        "{refused:?}"
    );
}

#[test]
fn a_batch_applied_but_not_recorded_is_not_written_twice_on_resume() {
    let server = server();
    let kv = Kv::admin(&server);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    // "a" has a deadline: its TTL is counted from each attempt's moment,
    // so the resent first batch is not byte for byte the first one.
    let deadline = now_ms() + 3_600_000;
    let lines: String = ["a", "b", "c", "d"]
        .iter()
        .map(|k| {
            let expires = if *k == "a" { deadline.to_string() } else { "null".into() };
            format!(
                "{{\"project\":\"shop\",\"key\":\"{k}\",\"value\":\"{k}\",\"expires_at_ms\":{expires}}}\n"
            )
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let file_arg = file.to_str().unwrap();
    let progress = dir.path().join("in.jsonl.progress");

    kv.expect(
        6,
        &[
            "import",
            file_arg,
            "--batch-size",
            "2",
            "--stop-after-batches",
            "1",
        ],
    );
    let shop = kv.in_project("shop");
    let version_of = |key: &str| {
        shop.expect(0, &["get", key, "--json"]).json()["version"]
            .as_u64()
            .unwrap()
    };
    let (a, b) = (version_of("a"), version_of("b"));
    shop.expect(1, &["has", "c"]);
    // As if the process died after the batch applied but before it was
    // recorded: the re-run sends the first batch again, with its id.
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    assert_eq!(saved["lines"], 2);
    saved["lines"] = json!(0);
    std::fs::write(&progress, saved.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let resumed = kv
        .expect(0, &["import", file_arg, "--batch-size", "2", "--json"])
        .json();
    assert_eq!(resumed["written"], 4, "{resumed}");
    // The server answered the repeated batch from memory: a and b were not
    // written again (a write would have given them new versions).
    assert_eq!((version_of("a"), version_of("b")), (a, b));
    assert_eq!(shop.expect(0, &["get", "d"]).stdout.trim(), r#""d""#);

    // A new import of the same file is a new run: it writes again.
    kv.expect(0, &["import", file_arg, "--batch-size", "2"]);
    assert!(version_of("a") > a);
}

#[test]
fn backup_writes_a_complete_file_that_restore_brings_back() {
    let server = server();
    let kv = Kv::admin(&server).in_project("shop");
    kv.expect(0, &["set", "a", "1"]);
    kv.expect(0, &["set", "b", r#"{"x":2}"#, "--ttl", "1h"]);
    let b = kv.expect(0, &["get", "b", "--json"]).json();
    Kv::admin(&server)
        .in_project("other")
        .expect(0, &["set", "c", "3"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.backup");
    let file_arg = file.to_str().unwrap();
    let out = Kv::admin(&server)
        .expect(0, &["backup", file_arg, "--json"])
        .json();
    let bytes = out["bytes"].as_u64().expect("bytes");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), bytes);
    assert_eq!(out["sha256"].as_str().map(str::len), Some(64), "{out}");
    assert!(
        !dir.path().join("kv.backup.partial").exists(),
        "the partial file is renamed once complete"
    );
    let human = Kv::admin(&server).expect(0, &["backup", file_arg]);
    assert!(
        human.stdout.contains("kv-server restore --from"),
        "{human:?}"
    );

    // One project only; an unknown one is not found.
    let shop_file = dir.path().join("shop.backup");
    Kv::admin(&server).expect(
        0,
        &["backup", shop_file.to_str().unwrap(), "--project", "shop"],
    );
    let unknown = Kv::admin(&server).expect(
        1,
        &[
            "backup",
            dir.path().join("x").to_str().unwrap(),
            "--project",
            "nope",
        ],
    );
    assert!(unknown.stderr.contains("NotFound"), "{unknown:?}");

    // kvctl restore refuses a damaged file and writes nothing.
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let damaged_file = dir.path().join("damaged.backup");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let nowhere = dir.path().join("nowhere");
    let refused = Kv::admin(&server).expect(
        7,
        &[
            "restore",
            damaged_file.to_str().unwrap(),
            "--data-dir",
            nowhere.to_str().unwrap(),
        ],
    );
    assert!(
        refused.stderr.contains("nothing was written"),
        "{refused:?}"
    );
    assert!(!nowhere.exists());

    // Both restores give the same server: kv-server's and kvctl's.
    let restored = dir.path().join("restored");
    let status = std::process::Command::new(common::kv_server())
        .args(["restore", "--from", file_arg, "--data-dir"])
        .arg(&restored)
        .status()
        .unwrap();
    assert!(status.success(), "kv-server restore: {status}");
    let by_kvctl = dir.path().join("by-kvctl");
    let done = Kv::admin(&server)
        .expect(
            0,
            &[
                "restore",
                file_arg,
                "--data-dir",
                by_kvctl.to_str().unwrap(),
                "--json",
            ],
        )
        .json();
    // (The file is the second, human-readable run's backup.)
    assert_eq!(done["sha256"].as_str().map(str::len), Some(64), "{done}");
    assert_eq!(done["projects"], 2, "{done}");
    let twin = kv_tests::BinaryServer::start_in_with_env(
        &common::kv_server(),
        &by_kvctl,
        &[],
        &[("KV_ADMIN_TOKEN", ADMIN)],
    );
    assert_eq!(
        Kv::admin(&twin)
            .in_project("shop")
            .expect(0, &["get", "b", "--json"])
            .json(),
        b
    );
    drop(twin);
    let again = kv_tests::BinaryServer::start_in_with_env(
        &common::kv_server(),
        &restored,
        &[],
        &[("KV_ADMIN_TOKEN", ADMIN)],
    );
    let kv = Kv::admin(&again).in_project("shop");
    assert_eq!(kv.expect(0, &["get", "a"]).stdout.trim(), "1");
    assert_eq!(kv.expect(0, &["get", "b", "--json"]).json(), b);
    assert_eq!(
        Kv::admin(&again)
            .in_project("other")
            .expect(0, &["get", "c"])
            .stdout
            .trim(),
        "3"
    );
}
