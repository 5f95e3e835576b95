//! `kvctl`: the command-line client for the kv service.
//!
//! Data commands (`get`, `set`, `has`, `del`, `incr`, `merge`, `ls`,
//! `watch`, `clear`) work on one project; `project` and `token` manage
//! projects, quotas and tokens with the admin token; `export` and `import`
//! move entries as JSON lines. See README.md ("kvctl") for examples, the
//! export format and the exit codes (listed in `exit.rs`).

mod admin;
mod cli;
mod data;
mod exit;
mod export;
mod import;
mod output;

use std::{
    io::{BufRead, IsTerminal, Write},
    process::ExitCode,
};

use clap::{CommandFactory, Parser};
use kv_client::{Client, Tls};

use cli::{Cli, Command, Global};
use exit::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kvctl: cannot start the async runtime: {e}");
            return ExitCode::from(exit::SERVER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("kvctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let global = &cli.global;
    match cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "kvctl", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Project(command) => admin::project(&connect(global).await?, global, command).await,
        Command::Token(command) => admin::token(&connect(global).await?, global, command).await,
        Command::Export(args) => export::run(&connect(global).await?, global, args).await,
        Command::Import(args) => import::run(global, args).await,
        command => {
            let name = global.project.as_deref().ok_or_else(|| {
                Failure::usage("no project: give --project NAME or set KV_PROJECT")
            })?;
            let project = connect(global).await?.project(name);
            data::run(&project, global, command).await
        }
    }
}

/// A client for the URLs, token, TLS files and timeout of the command line.
pub(crate) async fn connect(global: &Global) -> Result<Client, Failure> {
    let mut builder = Client::builder(global.url.clone()).timeout(global.timeout);
    if let Some(token) = &global.token {
        builder = builder.token(token.clone());
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Failure::input(format!("cannot read {}: {e}", path.display())))
    };
    let tls_wanted = global.tls_ca.is_some()
        || global.tls_cert.is_some()
        || global.tls_domain.is_some()
        || global.url.iter().any(|u| u.starts_with("https://"));
    if tls_wanted {
        let mut tls = Tls::new();
        if let Some(ca) = &global.tls_ca {
            tls = tls.ca_certificate_pem(read(ca)?);
        }
        if let (Some(cert), Some(key)) = (&global.tls_cert, &global.tls_key) {
            tls = tls.client_identity_pem(read(cert)?, read(key)?);
        }
        if let Some(domain) = &global.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        builder = builder.tls(tls);
    }
    Ok(builder.connect().await?)
}

/// Asks `question` on stderr and reads the answer from stdin: true only for
/// `y` or `yes`. A closed stdin counts as no.
pub(crate) fn confirm(question: &str) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{question} [y/N] ");
    let _ = err.flush();
    drop(err);
    let mut answer = String::new();
    let stdin = std::io::stdin();
    if stdin.lock().read_line(&mut answer).unwrap_or(0) == 0 {
        if !stdin.is_terminal() {
            eprintln!("(no answer on stdin; pass --yes to skip the question)");
        }
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
