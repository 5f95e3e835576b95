//! Tests of the config file loader's parts: its keys, the conversion of
//! TOML values, and the redaction of printed settings.

use super::*;
use crate::config::Cli;

fn values(text: &str) -> Result<Vec<(String, Vec<String>)>, FileError> {
    file_values::<Cli>(Path::new("kv.toml"), text)
}

#[test]
fn keys_are_the_long_flags_that_are_settings() {
    let keys = keys::<Cli>();
    for key in [
        "max-key-bytes",
        "redis-url",
        "log-format",
        "slow-request-ms",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key}");
    }
    for not_a_key in ["config", "print-config", "help", "version"] {
        assert!(!keys.iter().any(|k| k == not_a_key), "{not_a_key}");
    }
}

#[test]
fn values_become_flag_strings() {
    let got = values(
        "max-key-bytes = 10\nrepair = true\nredis-url = [\"redis://a:1\", \"redis://b:2\"]\nfsync = \"never\"\n",
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            ("max-key-bytes".to_string(), vec!["10".to_string()]),
            ("repair".to_string(), vec!["true".to_string()]),
            (
                "redis-url".to_string(),
                vec!["redis://a:1".to_string(), "redis://b:2".to_string()]
            ),
            ("fsync".to_string(), vec!["never".to_string()]),
        ]
    );
}

#[test]
fn errors_name_the_file_and_the_key() {
    let err = values("nope = 1\n").unwrap_err().to_string();
    assert!(err.contains("kv.toml") && err.contains("`nope`"), "{err}");
    let err = values("max-key-bytes = [1, 2]\n").unwrap_err().to_string();
    assert!(err.contains("`max-key-bytes`: takes one value"), "{err}");
    let err = values("max-key-bytes = 2024-01-01\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`max-key-bytes`") && err.contains("datetime"),
        "{err}"
    );
}

#[test]
fn a_secret_value_is_not_repeated_in_an_error() {
    let arg = Arg::new("redis_password")
        .long("redis-password")
        .value_parser(|s: &str| -> Result<String, String> { Err(format!("refused {s}")) });
    let err = check(&arg, "redis-password", "hunter2-secret").unwrap_err();
    assert!(!err.contains("hunter2-secret"), "{err}");
}

#[test]
fn userinfo_is_redacted_from_urls() {
    assert_eq!(
        redact_userinfo("redis://user:pw@host:7000"),
        "redis://<redacted>@host:7000"
    );
    assert_eq!(redact_userinfo("redis://host:7000"), "redis://host:7000");
    assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(toml_scalar("42"), "42");
    assert_eq!(toml_scalar("./kv-data"), "\"./kv-data\"");
}
