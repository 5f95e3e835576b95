//! `kvctl`: the command-line client for the kv service.
//!
//! Data commands (`get`, `set`, `has`, `del`, `incr`, `merge`, `ls`,
//! `watch`, `clear`) work on one project; `project` and `token` manage
//! projects, quotas and tokens with the admin token; `export` and `import`
//! move entries as JSON lines; `backup` saves a consistent backup file and
//! `restore` brings one back into a new data directory. See README.md ("kvctl") for examples, the
//! export format and the exit codes (listed in `exit.rs`).

mod admin;
mod backup;
mod cli;
mod connect;
mod data;
mod exit;
mod export;
mod import;
mod output;

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, parser::ValueSource};

use cli::{Cli, Command};
use connect::connect;
use exit::Failure;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let project_flag = project_on_command_line(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
    match runtime.block_on(run(cli, project_flag)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("kvctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Whether `--project` was given as a flag (at any level), not only through
/// `KV_PROJECT`: `export` narrows to one project only when asked on its
/// command line, so a shell with `KV_PROJECT` set still exports everything.
fn project_on_command_line(matches: &ArgMatches) -> bool {
    let mut level = Some(matches);
    while let Some(m) = level {
        if m.value_source("project") == Some(ValueSource::CommandLine) {
            return true;
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    false
}

async fn run(cli: Cli, project_flag: bool) -> Result<u8, Failure> {
    let global = &cli.global;
    match cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "kvctl", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Project(command) => admin::project(&connect(global).await?, global, command).await,
        Command::Token(command) => admin::token(&connect(global).await?, global, command).await,
        Command::Export(args) => {
            let only = global.project.as_deref().filter(|_| project_flag);
            export::run(&connect(global).await?, global, only, args).await
        }
        Command::Import(args) => import::run(global, args).await,
        Command::Restore(args) => backup::restore(global, args).await,
        Command::Backup(args) => {
            let only = global.project.as_deref().filter(|_| project_flag);
            backup::run(&connect(global).await?, global, only, args).await
        }
        command => {
            let name = global.project.as_deref().ok_or_else(|| {
                Failure::usage("no project: give --project NAME or set KV_PROJECT")
            })?;
            let project = connect(global).await?.project(name);
            data::run(&project, global, command).await
        }
    }
}
