//! The real `grpcurl` against the real binary, through server reflection
//! only (no proto files): what an operator typing commands sees.

use std::{
    io::Write,
    net::SocketAddr,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use kv_tests::{BinaryServer, tool_available};
use serde_json::{Value as Json, json};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

fn start() -> Option<BinaryServer> {
    tool_available("grpcurl", "-version").then(|| BinaryServer::start(BIN, &[]))
}

/// Runs grpcurl with `args` (the address is appended before `method`),
/// sending `data` on stdin when given.
fn grpcurl(addr: SocketAddr, headers: &[&str], data: Option<&str>, target: &[&str]) -> Output {
    let mut cmd = Command::new("grpcurl");
    cmd.args(["-plaintext", "-max-time", "30"]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    if data.is_some() {
        cmd.args(["-d", "@"]);
    }
    cmd.arg(addr.to_string()).args(target);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grpcurl starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    if let Some(data) = data {
        stdin.write_all(data.as_bytes()).expect("write request");
    }
    drop(stdin);
    child.wait_with_output().expect("grpcurl finishes")
}

/// A successful call's JSON reply.
#[track_caller]
fn ok(out: Output) -> Json {
    assert!(
        out.status.success(),
        "grpcurl failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failed call: grpcurl exits with 64 + the gRPC code and prints the code
/// name and message.
#[track_caller]
fn fails(out: Output, code: tonic::Code, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64 + code as i32), "{stderr}");
    // tonic's Debug names match grpcurl's code names (InvalidArgument...).
    assert!(stderr.contains(&format!("Code: {code:?}")), "{stderr}");
    assert!(stderr.contains(says), "{stderr} does not say {says:?}");
}

#[test]
fn list_and_describe_through_reflection() {
    let Some(server) = start() else { return };
    let listed = text(&grpcurl(server.addr, &[], None, &["list"]));
    for service in [
        "kv.v1.KvService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} in {listed}"
        );
    }
    let methods = text(&grpcurl(
        server.addr,
        &[],
        None,
        &["list", "kv.v1.KvService"],
    ));
    for method in ["Get", "Set", "Has", "Delete", "Clear"] {
        assert!(
            methods.contains(&format!("kv.v1.KvService.{method}")),
            "{methods}"
        );
    }
    let service = text(&grpcurl(
        server.addr,
        &[],
        None,
        &["describe", "kv.v1.KvService"],
    ));
    assert!(
        service.contains("rpc Get ( .kv.v1.GetRequest ) returns ( .kv.v1.GetResponse )"),
        "{service}"
    );
    let set = text(&grpcurl(
        server.addr,
        &[],
        None,
        &["describe", "kv.v1.SetRequest"],
    ));
    assert!(set.contains(".google.protobuf.Value value = 2;"), "{set}");
    assert!(set.contains("optional uint64 ttl_ms = 3;"), "{set}");
    let value = text(&grpcurl(
        server.addr,
        &[],
        None,
        &["describe", "google.protobuf.Value"],
    ));
    assert!(value.contains("double number_value = 2;"), "{value}");
}

#[test]
fn health_is_serving() {
    let Some(server) = start() else { return };
    for service in ["", "kv.v1.KvService"] {
        let reply = ok(grpcurl(
            server.addr,
            &[],
            Some(&json!({ "service": service }).to_string()),
            &["grpc.health.v1.Health/Check"],
        ));
        assert_eq!(reply, json!({"status": "SERVING"}), "service {service:?}");
    }
}

#[test]
fn json_values_round_trip_per_project() {
    let Some(server) = start() else { return };
    let shop = ["x-kv-project: shop"];
    let values = [
        json!({"user": {"name": "Ada", "tags": ["a", "b"], "age": 36, "admin": false, "nick": null}}),
        json!([1, "two", null, [3.5], {"four": 4}]),
        json!("just a string"),
        json!(42),
        json!(-0.5),
        json!(true),
        json!(null),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("k{i}");
        let set = json!({"key": key, "value": value});
        assert_eq!(
            ok(grpcurl(
                server.addr,
                &shop,
                Some(&set.to_string()),
                &["kv.v1.KvService/Set"]
            )),
            // uint64 prints as a JSON string in protobuf's JSON mapping.
            json!({"applied": true, "version": (i + 1).to_string()})
        );
        let got = ok(grpcurl(
            server.addr,
            &shop,
            Some(&json!({"key": key}).to_string()),
            &["kv.v1.KvService/Get"],
        ));
        let version = (i + 1).to_string();
        assert_eq!(
            got,
            json!({"found": true, "value": value, "version": version}),
            "key {key}"
        );
    }
    // The default project does not see shop's keys.
    let other = ok(grpcurl(
        server.addr,
        &[],
        Some(r#"{"key":"k0"}"#),
        &["kv.v1.KvService/Get"],
    ));
    assert_eq!(
        other,
        json!({}),
        "found=false and no value print as an empty object"
    );
    let has = ok(grpcurl(
        server.addr,
        &shop,
        Some(r#"{"key":"k0"}"#),
        &["kv.v1.KvService/Has"],
    ));
    assert_eq!(has, json!({"exists": true}));
    let deleted = ok(grpcurl(
        server.addr,
        &shop,
        Some(r#"{"key":"k0"}"#),
        &["kv.v1.KvService/Delete"],
    ));
    assert_eq!(deleted, json!({"deleted": true, "version": "8"}));
    let cleared = ok(grpcurl(
        server.addr,
        &shop,
        Some("{}"),
        &["kv.v1.KvService/Clear"],
    ));
    assert_eq!(
        cleared,
        json!({"deleted": (values.len() - 1).to_string(), "version": (values.len() + 2).to_string()}),
        "uint64 prints as a string"
    );
}

#[test]
fn ttl_expires_keys() {
    let Some(server) = start() else { return };
    let set = r#"{"key":"session","value":"s3cr3t","ttl_ms":"1500"}"#;
    ok(grpcurl(
        server.addr,
        &[],
        Some(set),
        &["kv.v1.KvService/Set"],
    ));
    let has = || {
        ok(grpcurl(
            server.addr,
            &[],
            Some(r#"{"key":"session"}"#),
            &["kv.v1.KvService/Has"],
        ))
    };
    assert_eq!(has(), json!({"exists": true}));
    let start = Instant::now();
    while has() != json!({}) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "key still there 5 s after a 1.5 s TTL"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = ok(grpcurl(
        server.addr,
        &[],
        Some(r#"{"key":"session"}"#),
        &["kv.v1.KvService/Get"],
    ));
    assert_eq!(got, json!({}));
}

/// One refused call: metadata, request JSON, method, expected code, and a
/// fragment of the expected message.
struct Refused {
    headers: &'static [&'static str],
    data: String,
    method: &'static str,
    code: tonic::Code,
    says: &'static str,
}

#[test]
fn bad_input_gets_its_exact_status() {
    use tonic::Code;
    let Some(server) = start() else { return };
    let refused = |headers, data: &str, method, code, says| Refused {
        headers,
        data: data.to_string(),
        method,
        code,
        says,
    };
    let set = "kv.v1.KvService/Set";
    let has = "kv.v1.KvService/Has";
    let deep = (0..33).fold(json!(1), |v, _| json!([v]));
    let cases = [
        refused(
            &[],
            r#"{"key":""}"#,
            "kv.v1.KvService/Get",
            Code::InvalidArgument,
            "key is empty",
        ),
        refused(
            &[],
            r#"{"key":"k"}"#,
            set,
            Code::InvalidArgument,
            "value is required",
        ),
        refused(
            &[],
            r#"{"key":"k","value":1,"ttl_ms":"0"}"#,
            set,
            Code::InvalidArgument,
            "ttl_ms is 0",
        ),
        refused(
            &[],
            r#"{"key":"k","value":1,"ttl_ms":"315360000001"}"#,
            set,
            Code::InvalidArgument,
            "the limit is 315360000000 ms",
        ),
        refused(
            &[],
            &json!({"key": "k", "value": deep}).to_string(),
            set,
            Code::InvalidArgument,
            "limit of 32 levels",
        ),
        refused(
            &[],
            &json!({"key": "k".repeat(4097), "value": 1}).to_string(),
            set,
            Code::ResourceExhausted,
            "the limit is 4096 bytes",
        ),
        refused(
            &[],
            &json!({"key": "big", "value": "v".repeat(16 * 1024 * 1024)}).to_string(),
            set,
            Code::ResourceExhausted,
            "the limit is 16777216 bytes",
        ),
        refused(
            &["x-kv-project: not/valid"],
            r#"{"key":"k"}"#,
            has,
            Code::InvalidArgument,
            "x-kv-project",
        ),
        refused(
            &["x-kv-project: "],
            r#"{"key":"k"}"#,
            has,
            Code::InvalidArgument,
            "project name is empty",
        ),
    ];
    for case in cases {
        let out = grpcurl(server.addr, case.headers, Some(&case.data), &[case.method]);
        fails(out, case.code, case.says);
    }
    // Nothing was stored, and the server still answers.
    let exists = ok(grpcurl(server.addr, &[], Some(r#"{"key":"k"}"#), &[has]));
    assert_eq!(exists, json!({}));
}

/// Every grpcurl command in the README works as written (pointed at this
/// test's server), and the documented error is the one printed.
#[test]
fn readme_grpcurl_commands_work_as_written() {
    let Some(server) = start() else { return };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let mut ran = 0;
    for (i, line) in lines.iter().enumerate() {
        // Commands that need an authenticated server (the Security
        // section) are covered by the auth tests instead.
        if !line.starts_with("grpcurl ") || line.contains("admin.token") {
            continue;
        }
        let command = line.replace("127.0.0.1:50051", &server.addr.to_string());
        let out = Command::new("sh").args(["-c", &command]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if line.contains("KvService/Watch") {
            // A watch streams until -max-time passes: grpcurl then exits
            // with 64 + DEADLINE_EXCEEDED (4), having printed no other error.
            assert_eq!(out.status.code(), Some(68), "{line}: {stderr}");
            assert!(stderr.contains("DeadlineExceeded"), "{line}: {stderr}");
        } else if lines.get(i + 1) == Some(&"# ERROR:") {
            for expected in &lines[i + 2..i + 4] {
                let expected = expected.trim_start_matches('#').trim();
                assert!(
                    stderr.contains(expected),
                    "{line}: {stderr} lacks {expected:?}"
                );
            }
            assert_ne!(out.status.code(), Some(0), "{line} should fail");
        } else {
            assert!(out.status.success(), "{line}: {stderr}");
        }
        ran += 1;
    }
    assert!(ran >= 10, "found only {ran} grpcurl commands in the README");
}

/// The race-free calls as an operator sees them: numbers, merged values,
/// batch results, pages and watch events print as plain JSON, retries with
/// a request id answer the first outcome, and refusals carry their code.
#[test]
fn race_free_calls_through_grpcurl() {
    let Some(server) = start() else { return };
    let shop = ["x-kv-project: shop"];
    let call = |method: &str, body: Json| {
        grpcurl(
            server.addr,
            &shop,
            Some(&body.to_string()),
            &[&format!("kv.v1.KvService/{method}")],
        )
    };
    // A watch of "c" running beside the calls below; events print as JSON
    // objects one after another.
    let watch = Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "6", "-H", shop[0], "-d"])
        .arg(json!({"key": "c"}).to_string())
        .arg(server.addr.to_string())
        .arg("kv.v1.KvService/Watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grpcurl starts");
    // grpcurl gives no sign when its stream is open; it takes it well
    // under a second (reflection, then the call). The SDK watch tests
    // check ordering exactly; this one checks what grpcurl prints.
    std::thread::sleep(Duration::from_millis(1500));

    let incr = json!({"key": "c", "delta": 2, "request_id": "once"});
    assert_eq!(
        ok(call("Incr", incr.clone())),
        json!({"value": 2, "version": "1"})
    );
    // The retry answers the first outcome and does not add again.
    assert_eq!(ok(call("Incr", incr)), json!({"value": 2, "version": "1"}));
    fails(
        call(
            "Incr",
            json!({"key": "c", "delta": 5, "request_id": "once"}),
        ),
        tonic::Code::FailedPrecondition,
        "already used for a different request",
    );
    assert_eq!(
        ok(call("Incr", json!({"key": "c", "delta": -0.5}))),
        json!({"value": 1.5, "version": "2"})
    );
    ok(call("Set", json!({"key": "s", "value": "text"})));
    fails(
        call("Incr", json!({"key": "s", "delta": 1})),
        tonic::Code::FailedPrecondition,
        "holds a string, not a number",
    );
    assert_eq!(
        ok(call(
            "Merge",
            json!({"key": "m", "patch": {"a": 1, "b": {"c": true}}})
        )),
        json!({"value": {"a": 1, "b": {"c": true}}, "version": "4"})
    );
    assert_eq!(
        ok(call(
            "Merge",
            json!({"key": "m", "patch": {"a": null, "b": {"d": "x"}}})
        )),
        json!({"value": {"b": {"c": true, "d": "x"}}, "version": "5"})
    );
    // Compare-and-swap: a stale version is an answer, not an error.
    assert_eq!(
        ok(call(
            "Set",
            json!({"key": "m", "value": 1, "if_version": "4"})
        )),
        json!({"version": "5"}),
        "applied=false prints as absent"
    );
    assert_eq!(
        ok(call(
            "Set",
            json!({"key": "m", "value": 1, "if_version": "5"})
        )),
        json!({"applied": true, "version": "6"})
    );
    let batch = json!({
        "checks": [{"key": "m", "version": "6"}, {"key": "new", "absent": true}],
        "ops": [
            {"set": {"key": "new", "value": [1]}},
            {"incr": {"key": "c", "delta": 1}},
            {"delete": {"key": "s"}},
            {"merge": {"key": "m", "patch": {"z": 0}}}
        ]
    });
    assert_eq!(
        ok(call("Batch", batch.clone())),
        json!({"applied": true, "results": [
            {"version": "7"},
            {"version": "8", "number": 2.5},
            {"version": "9", "deleted": true},
            {"version": "10", "value": {"z": 0}}
        ]})
    );
    // The same batch again fails its first check and changes nothing.
    assert_eq!(
        ok(call("Batch", batch)),
        json!({"failedCheck": 0, "currentVersion": "10"})
    );
    assert_eq!(
        ok(call("GetMany", json!({"keys": ["c", "missing"]}))),
        json!({"results": [{"found": true, "value": 2.5, "version": "8"}, {}]})
    );
    assert_eq!(
        ok(call("List", json!({"limit": 2, "keys_only": true}))),
        json!({
            "entries": [{"key": "c", "version": "8"}, {"key": "m", "version": "10"}],
            "nextStartAfter": "m",
            "version": "10"
        })
    );
    fails(
        call("List", json!({"limit": 1001})),
        tonic::Code::InvalidArgument,
        "the maximum is 1000",
    );
    fails(
        call("Watch", json!({"from_version": "99"})),
        tonic::Code::InvalidArgument,
        "ahead of the project's current version 10",
    );

    let watched = watch.wait_with_output().expect("grpcurl watch finishes");
    assert_eq!(watched.status.code(), Some(68), "ends at -max-time");
    let events: Vec<Json> = serde_json::Deserializer::from_slice(&watched.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("events print as JSON");
    assert_eq!(
        events,
        vec![
            json!({"kind": "EVENT_KIND_SET", "key": "c", "value": 2, "version": "1"}),
            json!({"kind": "EVENT_KIND_SET", "key": "c", "value": 1.5, "version": "2"}),
            json!({"kind": "EVENT_KIND_SET", "key": "c", "value": 2.5, "version": "8"}),
        ]
    );
}

/// `Pipeline` from grpcurl: frames of calls in, replies by id out, each
/// call with its own result or error, calls on a key in the order sent.
#[test]
fn pipeline_through_grpcurl() {
    let Some(server) = start() else { return };
    let frames = [
        json!({"calls": [
            {"id": "1", "set": {"key": "a", "value": {"n": 1}}},
            {"id": "2", "get": {"key": "a"}},
            {"id": "3", "incr": {"key": "hits", "delta": 2}},
            {"id": "4", "get": {"key": ""}},
        ]}),
        json!({"calls": [
            {"id": "5", "has": {"key": "a"}},
            {"id": "6", "delete": {"key": "a"}},
            {"id": "7", "has": {"key": "a"}},
            {"id": "8", "merge": {"key": "m", "patch": {"x": true}}},
            {"id": "9"},
        ]}),
    ];
    let body = frames
        .iter()
        .map(Json::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let out = grpcurl(
        server.addr,
        &["x-kv-project: shop"],
        Some(&body),
        &["kv.v1.KvService/Pipeline"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // grpcurl prints each response frame as a JSON object.
    let mut replies = std::collections::BTreeMap::new();
    for frame in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Json>() {
        for reply in frame.unwrap()["replies"].as_array().unwrap() {
            let id: u64 = reply["id"].as_str().unwrap().parse().unwrap();
            let mut rest = reply.clone();
            rest.as_object_mut().unwrap().remove("id");
            replies.insert(id, rest);
        }
    }
    assert_eq!(replies.len(), 9, "{replies:?}");
    assert_eq!(replies[&1]["set"]["applied"], json!(true));
    assert_eq!(
        replies[&2]["get"]["value"],
        json!({"n": 1}),
        "the read sees the set before it"
    );
    assert_eq!(replies[&3]["incr"]["value"], json!(2));
    assert_eq!(replies[&4]["error"]["code"], json!(3), "{:?}", replies[&4]);
    assert!(
        replies[&4]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key is empty"),
        "{:?}",
        replies[&4]
    );
    assert_eq!(replies[&5]["has"]["exists"], json!(true));
    assert_eq!(replies[&6]["delete"]["deleted"], json!(true));
    assert_eq!(replies[&7]["has"], json!({}), "absent after the delete");
    assert_eq!(replies[&8]["merge"]["value"], json!({"x": true}));
    assert_eq!(replies[&9]["error"]["code"], json!(3), "{:?}", replies[&9]);
}

const TENANCY_ADMIN: &str = "grpcurl-tenancy-admin-0123456789";

/// A grpcurl process left running (a watch), its output gathered as it
/// comes; killed on drop so a failing test leaves nothing behind.
struct Running {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("grpcurl starts");
        let gather = |mut pipe: Box<dyn std::io::Read + Send>| {
            let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = buffer.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = std::io::Read::read(&mut pipe, &mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            buffer
        };
        let stdout = gather(Box::new(child.stdout.take().expect("stdout is piped")));
        let stderr = gather(Box::new(child.stderr.take().expect("stderr is piped")));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> (String, String) {
        (
            String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned(),
        )
    }

    /// The exit code, once the process exits within `limit`.
    fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for grpcurl") {
                // Let the readers take the last of the output.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with an admin token, project `b` and a token for it (secret
/// and id), all through grpcurl.
fn tenancy_server() -> Option<(BinaryServer, String, String)> {
    if !tool_available("grpcurl", "-version") {
        return None;
    }
    let server = BinaryServer::start(BIN, &["--admin-token", TENANCY_ADMIN]);
    let admin = format!("authorization: Bearer {TENANCY_ADMIN}");
    ok(grpcurl(
        server.addr,
        &[&admin],
        Some(r#"{"name":"b"}"#),
        &["kv.v1.AdminService/CreateProject"],
    ));
    let created = ok(grpcurl(
        server.addr,
        &[&admin],
        Some(r#"{"project":"b"}"#),
        &["kv.v1.AdminService/CreateToken"],
    ));
    let secret = created["token"].as_str().expect("a token").to_string();
    let id = created["info"]["id"].as_str().expect("an id").to_string();
    Some((server, secret, id))
}

/// `grpcurl ... kv.v1.KvService/Watch` with `token`, once it is known to
/// be streaming: writes go to `b` until one shows in its output.
fn open_grpcurl_watch(server: &BinaryServer, token: &str) -> Running {
    let mut cmd = Command::new("grpcurl");
    // -max-time only bounds a server that never ends the stream.
    cmd.args(["-plaintext", "-max-time", "30", "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .args(["-d", "{}"])
        .arg(server.addr.to_string())
        .arg("kv.v1.KvService/Watch");
    let watch = Running::spawn(cmd);
    let admin = format!("authorization: Bearer {TENANCY_ADMIN}");
    let start = Instant::now();
    while !watch.output().0.contains("ping") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the grpcurl watch never streamed: {:?}",
            watch.output()
        );
        ok(grpcurl(
            server.addr,
            &[&admin, "x-kv-project: b"],
            Some(r#"{"key":"k","value":"ping"}"#),
            &["kv.v1.KvService/Set"],
        ));
        std::thread::sleep(Duration::from_millis(200));
    }
    watch
}

/// A grpcurl watch whose token is revoked exits UNAUTHENTICATED (64 + 16)
/// within about a second, and shows nothing written after the revocation.
#[test]
fn grpcurl_watch_ends_unauthenticated_when_its_token_is_revoked() {
    let Some((server, token, id)) = tenancy_server() else {
        return;
    };
    let mut watch = open_grpcurl_watch(&server, &token);
    let admin = format!("authorization: Bearer {TENANCY_ADMIN}");
    let revoked = ok(grpcurl(
        server.addr,
        &[&admin],
        Some(&json!({ "id": id }).to_string()),
        &["kv.v1.AdminService/RevokeToken"],
    ));
    let since = Instant::now();
    assert_eq!(revoked, json!({"revoked": true}));
    ok(grpcurl(
        server.addr,
        &[&admin, "x-kv-project: b"],
        Some(r#"{"key":"k","value":"after-revocation"}"#),
        &["kv.v1.KvService/Set"],
    ));
    let code = watch.exit_within(Duration::from_secs(3));
    let (stdout, stderr) = watch.output();
    assert_eq!(
        code,
        Some(64 + tonic::Code::Unauthenticated as i32),
        "after {:?}: {stdout}\n{stderr}",
        since.elapsed()
    );
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(!stdout.contains("after-revocation"), "{stdout}");
}

/// A grpcurl watch whose project is deleted exits NOT_FOUND (64 + 5)
/// within about a second, naming the project, and shows nothing of the
/// project created again under its name.
#[test]
fn grpcurl_watch_ends_not_found_when_its_project_is_deleted() {
    let Some((server, token, _)) = tenancy_server() else {
        return;
    };
    let mut watch = open_grpcurl_watch(&server, &token);
    let admin = format!("authorization: Bearer {TENANCY_ADMIN}");
    ok(grpcurl(
        server.addr,
        &[&admin],
        Some(r#"{"name":"b"}"#),
        &["kv.v1.AdminService/DeleteProject"],
    ));
    let since = Instant::now();
    ok(grpcurl(
        server.addr,
        &[&admin],
        Some(r#"{"name":"b"}"#),
        &["kv.v1.AdminService/CreateProject"],
    ));
    ok(grpcurl(
        server.addr,
        &[&admin, "x-kv-project: b"],
        Some(r#"{"key":"k","value":"successor"}"#),
        &["kv.v1.KvService/Set"],
    ));
    let code = watch.exit_within(Duration::from_secs(3));
    let (stdout, stderr) = watch.output();
    assert_eq!(
        code,
        Some(64 + tonic::Code::NotFound as i32),
        "after {:?}: {stdout}\n{stderr}",
        since.elapsed()
    );
    assert!(stderr.contains("NotFound"), "{stderr}");
    assert!(stderr.contains("project b"), "{stderr}");
    assert!(!stdout.contains("successor"), "{stdout}");
}
