//! Printing: aligned tables for people, JSON for scripts.

use std::{
    io::{self, BufRead, IsTerminal, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A deadline as time left, rounded to seconds past a minute: `4m 59s`,
/// `-` for none, `expired` for a past one.
pub(crate) fn ttl_left(expires_at_ms: Option<u64>) -> String {
    match expires_at_ms {
        None => "-".into(),
        Some(at) => {
            let now = now_ms();
            if at <= now {
                return "expired".into();
            }
            let left = at - now;
            let left = if left >= 60_000 {
                Duration::from_secs(left / 1000)
            } else {
                Duration::from_millis(left)
            };
            humantime::format_duration(left).to_string()
        }
    }
}

/// Prints one JSON document on its own line.
pub(crate) fn json_line(value: &Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{value}");
}

/// Prints rows under a header, each column as wide as its widest cell; the
/// last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let header: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// A limit for a table cell: the number, or `-` for none.
pub(crate) fn limit(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
/// The position counts `unit`: `"keys"`, or `"bytes"` (shown as KiB, MiB).
pub(crate) fn progress(total: Option<u64>, what: &str, unit: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(total, target);
    let template = match (total.is_some(), unit) {
        (true, "bytes") => format!(
            "{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} {{msg}}"
        ),
        (false, "bytes") => format!("{what} {{spinner}} {{bytes}} {{bytes_per_sec}} {{msg}}"),
        (true, _) => {
            format!("{what} {{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}")
        }
        (false, _) => format!("{what} {{spinner}} {{pos}} {unit} {{per_sec}} {{msg}}"),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
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
