//! The configuration file with the real binary: precedence (flag, then
//! environment, then file, then default) for numbers, durations, booleans,
//! lists, paths and strings; the effect on a running server; errors that
//! exit 2 naming the file and the key; and `kv.example.toml`, which must
//! list every flag with its default.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
};

use kv_client::{Client, Code};
use kv_tests::BinaryServer;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// `key -> (value, source)` as `--print-config` reports them; unset keys
/// have the value "unset".
type Effective = BTreeMap<String, (String, String)>;

/// Runs `kv-server --print-config` with only `env` in the environment.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> Result<Effective, (Option<i32>, String)> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--print-config")
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        return Err((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let mut effective = Effective::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if let Some(key) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            effective.insert(key.into(), ("unset".into(), "default".into()));
        } else {
            let (key, rest) = line.split_once(" = ").expect("key = value");
            let (value, source) = rest.rsplit_once("  # ").expect("a source");
            effective.insert(key.into(), (value.into(), source.into()));
        }
    }
    Ok(effective)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[track_caller]
fn expect(effective: &Effective, key: &str, value: &str, source: &str) {
    let got = effective
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing"));
    assert_eq!(
        (got.0.as_str(), got.1.as_str()),
        (value, source),
        "setting {key}"
    );
}

const LAYERED: &str = r#"
# Every kind of value, each also given by env or flag in some runs.
max-key-bytes = 100
max-batch-ops = 50
idle-timeout-ms = 200000
keepalive-interval-ms = 20000
repair = true
insecure-open = true
data-dir = "/srv/kv-file"
tls-cert = "/etc/kv/file-cert.pem"
tls-key = "/etc/kv/file-key.pem"
backend = "redis-cluster"
redis-url = ["redis://file-a:7000", "redis://file-b:7000"]
redis-namespace = "from-file"
fsync = "interval:50"
max-memory = "2GiB"
"#;

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kv.toml", LAYERED);

    // The file alone over the defaults.
    let only_file = print_config(&["--config", &file], &[]).unwrap();
    expect(&only_file, "max-key-bytes", "100", "file");
    expect(&only_file, "idle-timeout-ms", "200000", "file");
    expect(&only_file, "repair", "true", "file");
    expect(&only_file, "data-dir", "\"/srv/kv-file\"", "file");
    expect(
        &only_file,
        "redis-url",
        "[\"redis://file-a:7000\", \"redis://file-b:7000\"]",
        "file",
    );
    expect(&only_file, "fsync", "\"interval:50\"", "file");
    expect(&only_file, "max-memory", "\"2GiB\"", "file");
    expect(&only_file, "max-value-bytes", "16777216", "default");
    expect(&only_file, "listen", "\"127.0.0.1:50051\"", "default");
    expect(&only_file, "tls-client-ca", "unset", "default");

    // The environment over the file.
    let env = [
        ("KV_MAX_BATCH_OPS", "60"),
        ("KV_IDLE_TIMEOUT_MS", "300000"),
        ("KV_REPAIR", "false"),
        ("KV_DATA_DIR", "/srv/kv-env"),
        ("KV_REDIS_URL", "redis://env-a:7000,redis://env-b:7000"),
        ("KV_MAX_VALUE_BYTES", "1000"),
    ];
    let with_env = print_config(&["--config", &file], &env).unwrap();
    expect(&with_env, "max-key-bytes", "100", "file");
    expect(&with_env, "max-batch-ops", "60", "env");
    expect(&with_env, "idle-timeout-ms", "300000", "env");
    expect(&with_env, "repair", "false", "env");
    expect(&with_env, "data-dir", "\"/srv/kv-env\"", "env");
    expect(
        &with_env,
        "redis-url",
        "[\"redis://env-a:7000\", \"redis://env-b:7000\"]",
        "env",
    );
    expect(&with_env, "max-value-bytes", "1000", "env");

    // Flags over both.
    let with_flags = print_config(
        &[
            "--config",
            &file,
            "--max-batch-ops",
            "70",
            "--max-key-bytes",
            "200",
            "--data-dir",
            "/srv/kv-flag",
            "--redis-url",
            "redis://flag:7000",
            "--keepalive-interval-ms",
            "15000",
            "--fsync",
            "never",
        ],
        &env,
    )
    .unwrap();
    expect(&with_flags, "max-key-bytes", "200", "flag");
    expect(&with_flags, "max-batch-ops", "70", "flag");
    expect(&with_flags, "keepalive-interval-ms", "15000", "flag");
    expect(&with_flags, "idle-timeout-ms", "300000", "env");
    expect(&with_flags, "data-dir", "\"/srv/kv-flag\"", "flag");
    expect(&with_flags, "redis-url", "[\"redis://flag:7000\"]", "flag");
    expect(&with_flags, "fsync", "\"never\"", "flag");
    expect(&with_flags, "redis-namespace", "\"from-file\"", "file");
    expect(&with_flags, "tls-cert", "\"/etc/kv/file-cert.pem\"", "file");

    // KV_CONFIG names the file too; --config wins over it.
    let other = write(dir.path(), "other.toml", "max-key-bytes = 300\n");
    let by_env = print_config(&[], &[("KV_CONFIG", &other)]).unwrap();
    expect(&by_env, "max-key-bytes", "300", "file");
    let both = print_config(&["--config", &file], &[("KV_CONFIG", &other)]).unwrap();
    expect(&both, "max-key-bytes", "100", "file");
}

#[test]
fn secrets_from_the_file_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "kv.toml",
        r#"
admin-token = "admin-Secret-in-the-file-5c2e9a"
backend = "redis-cluster"
redis-url = ["redis://user:url-Secret-3b8d@node:7000"]
redis-password = "redis-Secret-in-the-file-71f0"
"#,
    );
    let out = Command::new(BIN)
        .args(["--config", &file, "--print-config"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("admin-token = \"<redacted>\"  # file"),
        "{all}"
    );
    assert!(all.contains("redis://<redacted>@node:7000"), "{all}");
    for secret in ["admin-Secret", "url-Secret", "redis-Secret"] {
        assert!(!all.contains(secret), "{secret} printed: {all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_uses_the_file_unless_the_environment_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kv.toml", "max-key-bytes = 8\n");

    let server = BinaryServer::start(BIN, &["--config", &file]);
    let kv = server.project("limits").await;
    kv.set("eight-ch", &1).await.unwrap();
    let err = kv.set("nine-char", &1).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("the limit is 8 bytes"), "{err}");
    let log = server.log();
    assert!(
        log.iter()
            .any(|l| l.contains("settings read from the config file")),
        "{log:#?}"
    );
    drop(server);

    let server =
        BinaryServer::start_with_env(BIN, &["--config", &file], &[("KV_MAX_KEY_BYTES", "16")]);
    let kv = Client::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
        .project("limits");
    kv.set("nine-char", &1).await.unwrap();
}

/// Runs the server on `text` as its config file and expects exit 2 with
/// stderr naming the file and each of `says`.
#[track_caller]
fn refused(text: &str, says: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", text);
    let (code, err) = kv_tests::run_to_exit(
        BIN,
        "127.0.0.1:0",
        dir.path(),
        &["--config", &file],
        &[("RUST_LOG", "info")],
    );
    assert_eq!(code, Some(2), "{text:?} must be refused: {err}");
    assert!(err.contains(&file), "{err} does not name the file");
    for said in says {
        assert!(err.contains(said), "{err} lacks {said:?}");
    }
}

#[test]
fn unknown_keys_and_bad_values_exit_2_naming_the_key() {
    refused("max-key-byte = 100\n", &["unknown key `max-key-byte`"]);
    refused("max_key_bytes = 100\n", &["unknown key `max_key_bytes`"]);
    refused("config = \"other.toml\"\n", &["unknown key `config`"]);
    refused("[server]\nlisten = \"0.0.0.0:1\"\n", &["key `server`"]);
    refused(
        "max-key-bytes = \"many\"\n",
        &["key `max-key-bytes`", "invalid value 'many'"],
    );
    refused(
        "idle-timeout-ms = -5\n",
        &["key `idle-timeout-ms`", "invalid value '-5'"],
    );
    refused("max-key-bytes = 1.5\n", &["key `max-key-bytes`", "float"]);
    refused("repair = \"yes\"\n", &["key `repair`", "true or false"]);
    refused(
        "listen = [\"127.0.0.1:1\"]\n",
        &["key `listen`", "not a list"],
    );
    refused("fsync = \"sometimes\"\n", &["key `fsync`"]);
    refused("backend = \"postgres\"\n", &["key `backend`"]);
    refused("max-key-bytes = \n", &["not valid TOML"]);
    // In range for its type, out of range for the server: the limit's
    // message, and where the value came from.
    refused(
        "max-value-bytes = 1\n",
        &[
            "--max-value-bytes is 1",
            "`max-value-bytes` is set in the config file",
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let (code, err) = kv_tests::run_to_exit(
        BIN,
        "127.0.0.1:0",
        dir.path(),
        &["--config", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("absent.toml") && err.contains("cannot read"),
        "{err}"
    );
}

/// `kv.example.toml` at the repository root: every flag is in it, as a
/// commented `key = value` line; uncommenting the lines of the settings
/// that have a default yields exactly the defaults, and every other line
/// holds a value the server accepts.
#[test]
fn the_example_file_lists_every_flag_with_its_default() {
    let example_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../kv.example.toml");
    let example = std::fs::read_to_string(example_path).unwrap();
    let defaults = print_config(&[], &[]).unwrap();

    let mut listed = BTreeMap::new();
    for line in example.lines() {
        let Some((key, value)) = line.strip_prefix("# ").and_then(|l| l.split_once(" = ")) else {
            continue;
        };
        if key.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            let previous = listed.insert(key.to_string(), value.to_string());
            assert!(previous.is_none(), "{key} is listed twice");
        }
    }
    let flags: BTreeSet<_> = defaults.keys().cloned().collect();
    let keys: BTreeSet<_> = listed.keys().cloned().collect();
    assert_eq!(
        keys, flags,
        "kv.example.toml must list exactly the flags of kv-server"
    );

    // As shipped (all commented out) it changes nothing.
    let as_shipped = print_config(&["--config", example_path], &[]).unwrap();
    assert_eq!(as_shipped, defaults);

    let dir = tempfile::tempdir().unwrap();
    let with_defaults: String = listed
        .iter()
        .filter(|(key, _)| defaults[*key].0 != "unset")
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    let file = write(dir.path(), "defaults.toml", &with_defaults);
    let uncommented = print_config(&["--config", &file], &[]).unwrap();
    for (key, (value, source)) in &defaults {
        if value == "unset" {
            expect(&uncommented, key, "unset", "default");
        } else {
            assert_eq!(source, "default", "{key}");
            expect(&uncommented, key, value, "file");
        }
    }

    // The example values of settings without a default are accepted too
    // (the admin token once: from the file or inline, not both).
    let examples: String = listed
        .iter()
        .filter(|(key, _)| defaults[*key].0 == "unset" && *key != "admin-token-file")
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    let file = write(
        dir.path(),
        "examples.toml",
        &format!("backend = \"redis-cluster\"\n{examples}"),
    );
    let filled = print_config(&["--config", &file], &[]).unwrap();
    for key in listed.keys() {
        if defaults[key].0 == "unset" && key != "admin-token-file" {
            assert_eq!(filled[key].1, "file", "{key}");
        }
    }
}
