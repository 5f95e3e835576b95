//! TLS and mutual TLS against the real binary, with certificates made in the
//! test: handshakes that must work do, and those that must not fail cleanly
//! and promptly.

use std::time::{Duration, Instant};

use kv_client::{Client, Tls};
use kv_tests::{BinaryServer, pki::TestPki};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

fn start(pki: &TestPki, dir: &std::path::Path, mutual: bool) -> BinaryServer {
    let files = pki.write_to(dir);
    let mut args = vec![
        "--tls-cert".to_string(),
        files.server_cert.display().to_string(),
        "--tls-key".to_string(),
        files.server_key.display().to_string(),
    ];
    if mutual {
        args.extend([
            "--tls-client-ca".to_string(),
            files.ca.display().to_string(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BinaryServer::start(BIN, &args)
}

/// Connects and makes one call; the error (if any) and how long it took.
async fn try_call(url: String, tls: Option<Tls>) -> (Result<(), kv_client::Error>, Duration) {
    let started = Instant::now();
    let result = async {
        let mut builder = Client::builder(url)
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        let kv = builder.connect().await?.project("secure");
        kv.set("k", &"over TLS").await?;
        assert_eq!(kv.get::<String>("k").await?.as_deref(), Some("over TLS"));
        Ok(())
    }
    .await;
    (result, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusting_clients_and_refuses_others_cleanly() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&pki, dir.path(), false);
    let port = server.addr.port();
    let trusting = Tls::new().ca_certificate_pem(pki.ca.clone());

    let (ok, _) = try_call(format!("https://127.0.0.1:{port}"), Some(trusting.clone())).await;
    ok.expect("a client trusting the CA works");

    // Plaintext against TLS: an error, not a hang.
    let (plain, took) = try_call(format!("http://127.0.0.1:{port}"), None).await;
    assert!(
        plain.is_err(),
        "plaintext must not work against a TLS server"
    );
    assert!(
        took < Duration::from_secs(8),
        "plaintext failure took {took:?}"
    );

    // A client that does not trust the server's CA refuses it.
    let (untrusted, took) = try_call(format!("https://127.0.0.1:{port}"), Some(Tls::new())).await;
    let err = untrusted.expect_err("the system roots do not trust a test CA");
    assert_eq!(err.code(), kv_client::Code::Unavailable, "{err}");
    assert!(took < Duration::from_secs(8));

    // The name must match the certificate.
    let wrong_name = trusting.clone().domain_name("not-this-server.example");
    let (mismatch, _) = try_call(format!("https://127.0.0.1:{port}"), Some(wrong_name)).await;
    assert!(mismatch.is_err());

    // And the server still serves.
    let (again, _) = try_call(format!("https://127.0.0.1:{port}"), Some(trusting)).await;
    again.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&pki, dir.path(), true);
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let trusting = Tls::new().ca_certificate_pem(pki.ca.clone());

    let (anonymous, took) = try_call(url.clone(), Some(trusting.clone())).await;
    assert!(anonymous.is_err(), "no client certificate must be refused");
    assert!(took < Duration::from_secs(8));

    let stranger = trusting
        .clone()
        .client_identity_pem(pki.stranger.cert.clone(), pki.stranger.key.clone());
    let (refused, _) = try_call(url.clone(), Some(stranger)).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must be refused"
    );

    let member = trusting.client_identity_pem(pki.client.cert.clone(), pki.client.key.clone());
    let (ok, _) = try_call(url, Some(member)).await;
    ok.expect("a client certificate from the CA works");
}

#[test]
fn tls_flags_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| kv_tests::run_to_exit(BIN, "127.0.0.1:0", dir.path(), args, &[]);
    let (code, stderr) = run(&["--tls-cert", "cert.pem"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--tls-cert and --tls-key go together"));

    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let (code, stderr) = run(&["--tls-cert", missing, "--tls-key", missing]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot read TLS file") && stderr.contains("missing.pem"),
        "{stderr}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_str().unwrap();
    let (code, stderr) = run(&["--tls-cert", garbage, "--tls-key", garbage]);
    assert_eq!(code, Some(1), "{stderr}");
}
