//! The configuration file (`--config kv.toml`): every flag of `kv-server`
//! as a top-level TOML key spelled like the long flag (`max-key-bytes =
//! 4096`, `redis-url = ["redis://a:7000", "redis://b:7000"]`).
//!
//! Precedence: a flag, then its `KV_*` environment variable, then the
//! file, then the built-in default. The file's values become the flags'
//! defaults before the command line is parsed, so clap itself applies the
//! first three layers. An unknown key, a table, or a value the flag would
//! refuse stops the server with exit code 2 naming the file and the key.

use std::{
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, parser::ValueSource};

use crate::logging::LogArgs;

/// Flags of the configuration file.
#[derive(Args, Debug, Clone)]
pub struct FileArgs {
    /// Read settings from this TOML file (keys are the long flag names);
    /// flags and KV_* environment variables override it.
    #[arg(long = "config", env = "KV_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective settings, where each came from (flag, env,
    /// file, default) and secrets redacted, then exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Flags that are not settings, so not keys of the file.
const NOT_KEYS: [&str; 4] = ["config", "print-config", "help", "version"];

/// Flags whose values are secrets: never printed.
const SECRETS: [&str; 2] = ["admin-token", "redis-password"];

/// Why the command line and the file did not give a configuration.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("config file {path}: cannot read it: {source}", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path}: not valid TOML: {message}", path = .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key that is no flag.
    #[error("config file {path}: unknown key `{key}` (keys are the long flag names, such as max-key-bytes)", path = .path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value the flag refuses.
    #[error("config file {path}: key `{key}`: {message}", path = .path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A failed parse: clap's own error (printed and exited with by
/// [`clap::Error::exit`]), or the file's, with the logging flags the
/// command line gave so the error can be logged in the chosen format.
#[derive(Debug)]
pub enum ParseError {
    /// A bad flag or environment variable, `--help` or `--version`.
    Clap(clap::Error),
    /// A bad configuration file.
    File(Box<FileError>, LogArgs),
}

/// The parsed command line of `C` (the server's is
/// [`crate::config::Cli`]).
pub struct Parsed<C> {
    /// The flags, with the file's values where neither a flag nor the
    /// environment gave one.
    pub cli: C,
    matches: ArgMatches,
    file: Option<(PathBuf, Vec<String>)>,
}

/// Parses `args` (the program name first) and the environment, and the
/// file `--config` or `KV_CONFIG` names, if any, into the flags `C`, which
/// must flatten [`FileArgs`] and [`LogArgs`].
///
/// ```
/// use kv_server::{config::Cli, config_file};
/// let parsed = config_file::parse::<Cli, _, _>(["kv-server", "--max-key-bytes", "100"]).unwrap();
/// assert_eq!(parsed.cli.max_key_bytes, 100);
/// assert!(parsed.describe().contains("max-key-bytes = 100  # flag"));
/// ```
///
/// # Errors
///
/// [`ParseError`] naming the flag, or the file and its key.
pub fn parse<C, I, T>(args: I) -> Result<Parsed<C>, ParseError>
where
    C: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = C::command()
        .try_get_matches_from(&args)
        .map_err(ParseError::Clap)?;
    let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
        let cli = C::from_arg_matches(&first).map_err(ParseError::Clap)?;
        return Ok(Parsed {
            cli,
            matches: first,
            file: None,
        });
    };
    let log = LogArgs::from_arg_matches(&first).map_err(ParseError::Clap)?;
    let fail = |e: FileError| ParseError::File(Box::new(e), log.clone());
    let text = std::fs::read_to_string(&path).map_err(|source| {
        fail(FileError::Read {
            path: path.clone(),
            source,
        })
    })?;
    let values = file_values::<C>(&path, &text).map_err(fail)?;
    let keys = values.iter().map(|(key, _)| key.clone()).collect();
    let mut command = C::command();
    for (key, vals) in values {
        let id = arg_of(&command, &key).map(|arg| arg.get_id().clone());
        if let Some(id) = id {
            command = command.mut_arg(id, |arg| arg.default_values(vals));
        }
    }
    let matches = command
        .try_get_matches_from(&args)
        .map_err(ParseError::Clap)?;
    let cli = C::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    Ok(Parsed {
        cli,
        matches,
        file: Some((path, keys)),
    })
}

/// Every key the file accepts: the long flags of `C` that are settings.
pub fn keys<C: CommandFactory>() -> Vec<String> {
    C::command()
        .get_arguments()
        .filter_map(Arg::get_long)
        .filter(|long| !NOT_KEYS.contains(long))
        .map(str::to_string)
        .collect()
}

fn arg_of<'a>(command: &'a clap::Command, key: &str) -> Option<&'a Arg> {
    if NOT_KEYS.contains(&key) {
        return None;
    }
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(key))
}

/// The file's settings as the strings the flags would be given, each
/// checked by its flag's own parser.
fn file_values<C: CommandFactory>(
    path: &Path,
    text: &str,
) -> Result<Vec<(String, Vec<String>)>, FileError> {
    let document = toml_edit::Document::parse(text).map_err(|e| FileError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })?;
    let command = C::command();
    let mut values = Vec::new();
    for (key, item) in document.as_table().iter() {
        let Some(arg) = arg_of(&command, key) else {
            return Err(FileError::UnknownKey {
                path: path.to_path_buf(),
                key: key.to_string(),
            });
        };
        let bad = |message: String| FileError::BadValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let value = item
            .as_value()
            .ok_or_else(|| bad(format!("expected a value, found a {}", item.type_name())))?;
        let list = match value.as_array() {
            Some(array) if matches!(arg.get_action(), ArgAction::Append) => {
                array.iter().map(scalar).collect::<Result<Vec<_>, _>>()
            }
            Some(_) => Err("takes one value, not a list".to_string()),
            None => scalar(value).map(|one| vec![one]),
        }
        .map_err(bad)?;
        for one in &list {
            check(arg, key, one).map_err(bad)?;
        }
        values.push((key.to_string(), list));
    }
    Ok(values)
}

/// Runs `value` through the flag's own parser, as if given as `--key=value`.
fn check(arg: &Arg, key: &str, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("expected true or false, found {value:?}")),
        };
    }
    clap::Command::new("kv-server")
        .no_binary_name(true)
        .arg(arg.clone())
        .try_get_matches_from([format!("--{key}={value}")])
        .map(drop)
        .map_err(|e| clap_reason(&e, value, key))
}

fn scalar(value: &toml_edit::Value) -> Result<String, String> {
    if let Some(s) = value.as_str() {
        Ok(s.to_string())
    } else if let Some(i) = value.as_integer() {
        Ok(i.to_string())
    } else if let Some(b) = value.as_bool() {
        Ok(b.to_string())
    } else {
        Err(format!(
            "expected a string, integer or boolean, found a {}",
            value.type_name()
        ))
    }
}

/// Clap's message for a refused value, without its "error:" prefix and
/// usage hints, and without the value itself when the key is a secret.
fn clap_reason(error: &clap::Error, value: &str, key: &str) -> String {
    let rendered = error.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let reason = first.trim_start_matches("error: ").to_string();
    if SECRETS.contains(&key) {
        reason.replace(value, "<redacted>")
    } else {
        reason
    }
}

impl<C: CommandFactory> Parsed<C> {
    /// The file given with `--config`, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }

    /// `message` (an error naming a flag), followed by where that flag's
    /// value came from when it was the file.
    pub fn explain(&self, message: &str) -> String {
        if let Some((path, keys)) = &self.file {
            for key in keys {
                let from_file = self
                    .matches
                    .value_source(key_id::<C>(key).as_str())
                    .is_some_and(|s| s == ValueSource::DefaultValue);
                if from_file && message.contains(&format!("--{key}")) {
                    return format!(
                        "{message} (`{key}` is set in the config file {})",
                        path.display()
                    );
                }
            }
        }
        message.to_string()
    }

    /// The effective settings as TOML, one `key = value  # source` line per
    /// setting (source: flag, env, file or default), secrets redacted.
    /// Settings without a value are listed as comments.
    pub fn describe(&self) -> String {
        let command = C::command();
        let mut out = String::new();
        for arg in command.get_arguments() {
            let Some(key) = arg.get_long().filter(|long| !NOT_KEYS.contains(long)) else {
                continue;
            };
            let id = arg.get_id().as_str();
            let raw: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|vals| {
                    vals.map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let source = match self.matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "env",
                Some(ValueSource::DefaultValue)
                    if self
                        .file
                        .as_ref()
                        .is_some_and(|(_, keys)| keys.iter().any(|k| k == key)) =>
                {
                    "file"
                }
                _ => "default",
            };
            if raw.is_empty() {
                let _ = writeln!(out, "# {key} is not set");
                continue;
            }
            let shown: Vec<String> = raw
                .iter()
                .map(|v| {
                    if SECRETS.contains(&key) {
                        quote("<redacted>")
                    } else {
                        toml_scalar(&redact_userinfo(v))
                    }
                })
                .collect();
            let value = if matches!(arg.get_action(), ArgAction::Append) {
                format!("[{}]", shown.join(", "))
            } else {
                shown.join(", ")
            };
            let _ = writeln!(out, "{key} = {value}  # {source}");
        }
        out
    }
}

fn key_id<C: CommandFactory>(key: &str) -> String {
    C::command()
        .get_arguments()
        .find(|arg| arg.get_long() == Some(key))
        .map(|arg| arg.get_id().to_string())
        .unwrap_or_default()
}

/// `redis://user:password@host` with the password (and user) hidden.
pub fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn toml_scalar(value: &str) -> String {
    if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
        value.to_string()
    } else {
        quote(value)
    }
}

fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[path = "config_file_tests.rs"]
mod tests;
