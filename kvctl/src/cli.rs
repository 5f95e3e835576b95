//! The command line: global options and every subcommand.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Command-line client for the kv service.
///
/// Data commands work on one project (`--project` or `KV_PROJECT`); admin
/// commands (`project`, `token`, `export` of every project) need the admin
/// token. Exit codes: 0 ok, 1 not found / false / condition not met,
/// 2 usage, 3 unavailable or timed out, 4 authentication or permission,
/// 5 refused by the server, 6 aborted (prompt declined, import stopped),
/// 7 local input or file error, 8 other server error.
#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 ok, 1 not found / false / condition not met, 2 usage, \
        3 unavailable or timed out, 4 authentication or permission, 5 refused by the server, \
        6 aborted (prompt declined, import stopped), 7 local input or file error, \
        8 other server error."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Connection and output options shared by every command.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Server URL(s), comma-separated for failover (https:// for TLS).
    #[arg(
        long,
        env = "KV_URL",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ',',
        global = true
    )]
    pub(crate) url: Vec<String>,
    /// Bearer token: a project token, or the admin token for admin commands.
    #[arg(long, env = "KV_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Project of the data commands.
    #[arg(long, short = 'p', env = "KV_PROJECT", global = true)]
    pub(crate) project: Option<String>,
    /// PEM CA certificate to trust instead of the system roots.
    #[arg(long, env = "KV_TLS_CA", global = true)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key).
    #[arg(long, env = "KV_TLS_CERT", global = true, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KV_TLS_KEY", global = true, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the URL's host).
    #[arg(long, env = "KV_TLS_DOMAIN", global = true)]
    pub(crate) tls_domain: Option<String>,
    /// Deadline of each call, retries included (e.g. 30s, 2m).
    #[arg(long, env = "KV_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub(crate) timeout: Duration,
    /// Machine-readable JSON output instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// A human duration: `250ms`, `5m`, `1h30m`, `2days`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 250ms, 5m, 1h30m)"))?;
    if d.is_zero() {
        return Err("a duration of zero is not allowed".into());
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Prints a key's value (exit 1 when absent).
    Get { key: String },
    /// Sets a key to a JSON value.
    Set(SetArgs),
    /// Tells whether a key exists: prints true or false, exits 0 or 1.
    Has { key: String },
    /// Deletes a key (exit 1 when it did not exist).
    Del { key: String },
    /// Adds DELTA (default 1) to a JSON number and prints the result.
    Incr {
        key: String,
        #[arg(default_value_t = 1.0, allow_negative_numbers = true)]
        delta: f64,
        /// Time to live of the key after the update.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Applies a JSON merge patch (RFC 7386) and prints the result.
    Merge {
        key: String,
        /// The patch, as JSON.
        patch: String,
        /// Time to live of the key after the update.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Lists keys (with values unless --keys-only), page by page.
    Ls(LsArgs),
    /// Prints changes as they happen (one JSON object per line with --json).
    Watch(WatchArgs),
    /// Deletes every key of the project (asks unless --yes).
    Clear {
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Projects: create, list, show, remove, set quotas (admin).
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Tokens: create, list, revoke (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Writes every entry as JSON lines to stdout.
    Export(ExportArgs),
    /// Writes JSON lines made by `export` back, in batches, resumably.
    Import(ImportArgs),
    /// Saves a consistent backup of the whole server (or of --project) to a
    /// file, while writes go on (admin); `kv-server restore` brings it back.
    Backup(BackupArgs),
    /// Restores a backup file into a new data directory (offline: start a
    /// server on it afterwards), checking the whole file first.
    Restore(RestoreArgs),
    /// Prints a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    pub(crate) key: String,
    /// The value as JSON (`'"text"'`, `42`, `'{"a":1}'`); see --string.
    pub(crate) value: String,
    /// Store VALUE as a JSON string as it is, without parsing it.
    #[arg(long)]
    pub(crate) string: bool,
    /// Time to live: 250ms, 5m, 1h30m... (default: never expires).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) ttl: Option<Duration>,
    /// Write only if the key is absent (exit 1 when it exists).
    #[arg(long, conflicts_with = "if_version")]
    pub(crate) if_absent: bool,
    /// Write only if the key is at this version (exit 1 when it is not).
    #[arg(long)]
    pub(crate) if_version: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Only keys starting with this.
    #[arg(default_value = "")]
    pub(crate) prefix: String,
    /// Keys, versions and TTLs without values.
    #[arg(long)]
    pub(crate) keys_only: bool,
    /// Start after this key (the `next_start_after` of an earlier listing).
    #[arg(long)]
    pub(crate) start_after: Option<String>,
    /// Stop after this many entries (default: all).
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// Entries fetched per call.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) page_size: u32,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Only keys starting with this (default: every key).
    #[arg(default_value = "")]
    pub(crate) prefix: String,
    /// Replay the changes after this version first.
    #[arg(long)]
    pub(crate) from_version: Option<u64>,
    /// The project incarnation FROM_VERSION belongs to.
    #[arg(long, requires = "from_version")]
    pub(crate) incarnation: Option<u64>,
    /// Exit after this many events.
    #[arg(long)]
    pub(crate) count: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    /// Creates a project.
    Create {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Lists projects with their usage.
    Ls,
    /// Shows one project (exit 1 when it does not exist).
    Get { name: String },
    /// Deletes a project and all its keys (asks unless --yes).
    Rm {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Replaces a project's quota with the limits given (absent: none).
    Quota {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct QuotaArgs {
    /// Most keys.
    #[arg(long)]
    pub(crate) max_keys: Option<u64>,
    /// Most bytes of keys plus values.
    #[arg(long)]
    pub(crate) max_bytes: Option<u64>,
    /// Most calls per second (0: unlimited, whatever the server default).
    #[arg(long)]
    pub(crate) ops_per_second: Option<u64>,
    /// Most bytes written per second (0: unlimited).
    #[arg(long)]
    pub(crate) write_bytes_per_second: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Creates a token for a project and prints its secret (once).
    Create {
        project: String,
        /// The token may only read.
        #[arg(long)]
        read_only: bool,
        /// Most calls per second with this token.
        #[arg(long)]
        ops_per_second: Option<u64>,
        /// Most bytes written per second with this token.
        #[arg(long)]
        write_bytes_per_second: Option<u64>,
    },
    /// Lists tokens (of one project with --for-project).
    Ls {
        /// Only this project's tokens.
        #[arg(long)]
        for_project: Option<String>,
    },
    /// Revokes a token by id (exit 1 when there was no such token).
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Entries fetched per call.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) page_size: u32,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The backup file to write (written as FILE.partial, renamed when
    /// complete; an existing FILE is replaced only then).
    pub(crate) file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup file (from `kvctl backup` or AdminService.Backup).
    pub(crate) file: PathBuf,
    /// The data directory to create; it must be absent or empty.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The JSON lines file (default: stdin).
    pub(crate) file: Option<PathBuf>,
    /// Entries written per batch (all or nothing each).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch_size: u32,
    /// Where progress is kept for resuming (default: FILE.progress; none
    /// when reading stdin without this flag).
    #[arg(long)]
    pub(crate) resume_file: Option<PathBuf>,
    /// Read and check every line, count what would be written, write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Stop (exit 6) after this many batches, as an interruption would.
    #[arg(long, hide = true)]
    pub(crate) stop_after_batches: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_human_and_never_zero() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("5").unwrap_err().contains("examples: 250ms"));
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
