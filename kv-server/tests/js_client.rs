//! The JavaScript client (`kv-js/`, the `@kv/client` package) against the
//! real binary: installs its locked dependencies (`npm ci`), checks its
//! TypeScript declarations (`tsc --noEmit` against a typed usage file) and
//! runs its tests (`node --test`), which start this binary themselves.
//! Prints SKIPPED without Node (18 or later) and npm, or when `npm ci`
//! cannot install the locked dependencies (offline), unless
//! `KV_TEST_REQUIRE_ALL=1`, which makes either a failure.

use std::{
    fs::File,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kv_tests::{pki::TestPki, require_all, tool_available};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// Runs `npm args` in `dir` with `env`, at most `limit`, and prints its
/// output; the output of a run that failed or overran is the error.
fn npm(dir: &Path, args: &[&str], env: &[(&str, &Path)], limit: Duration) -> Result<(), String> {
    let logs = tempfile::tempdir().expect("log directory");
    let out_path = logs.path().join("out");
    let out = File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("output file");
    let mut child = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run npm {args:?}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for npm") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!(
        "== npm {} ({:.1} s)\n{output}",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("npm {args:?} failed ({status}):\n{output}")),
        None => Err(format!(
            "npm {args:?} did not finish within {limit:?}:\n{output}"
        )),
    }
}

#[test]
fn javascript_client_passes_its_tests_against_the_binary() {
    if !tool_available("node", "--version") || !tool_available("npm", "--version") {
        return;
    }
    // The package and its test runner need Node 18 or later.
    let version = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 18 {
        assert!(
            !require_all(),
            "Node 18 or later is required (KV_TEST_REQUIRE_ALL=1), found {version:?}"
        );
        println!(
            "SKIPPED: Node {version} is older than 18 (set KV_TEST_REQUIRE_ALL=1 to fail instead)"
        );
        return;
    }
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kv-js");
    // The TLS tests' certificates, made here so they need no openssl.
    let pki_dir = tempfile::tempdir().expect("certificate directory");
    let pki = TestPki::generate();
    pki.write_to(pki_dir.path());
    std::fs::write(pki_dir.path().join("client.pem"), &pki.client.cert).expect("write PEM");
    std::fs::write(pki_dir.path().join("client.key"), &pki.client.key).expect("write PEM");

    // The dependencies come from the npm registry: without it (offline)
    // the package cannot be tested, like a missing tool.
    if let Err(e) = npm(
        &package,
        &["ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        &[],
        Duration::from_secs(300),
    ) {
        assert!(
            !require_all(),
            "npm ci is required (KV_TEST_REQUIRE_ALL=1): {e}"
        );
        println!(
            "SKIPPED: npm ci could not install the package's dependencies (set KV_TEST_REQUIRE_ALL=1 to fail instead): {e}"
        );
        return;
    }
    npm(
        &package,
        &["run", "typecheck"],
        &[],
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    npm(
        &package,
        &["test"],
        &[
            ("KV_SERVER_BIN", Path::new(BIN)),
            ("KV_TEST_PKI_DIR", pki_dir.path()),
        ],
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
