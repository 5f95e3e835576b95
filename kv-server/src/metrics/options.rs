//! The metrics flags (`--metrics-listen`, `--metrics-top-projects`).

use std::net::{Ipv4Addr, SocketAddr};

/// Per-project series by default: enough for a dashboard of the busiest
/// projects, few enough that the series count stays small.
pub const DEFAULT_TOP_PROJECTS: usize = 20;
/// Most per-project series a server may be asked for.
pub const MAX_TOP_PROJECTS: usize = 1000;

/// Where and how metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the `/metrics` listener; `None` serves no metrics.
    pub listen: Option<SocketAddr>,
    /// Projects with their own per-project series; the rest are summed
    /// under `project="_other"`.
    pub top_projects: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            top_projects: DEFAULT_TOP_PROJECTS,
        }
    }
}

/// The metrics flags, flattened into the server's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics: `host:port`, or a
    /// bare port for 127.0.0.1:PORT (off by default).
    #[arg(long, env = "KV_METRICS_LISTEN", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Projects that get their own per-project series (by usage); the rest
    /// are summed under project="_other".
    #[arg(long, env = "KV_METRICS_TOP_PROJECTS", default_value_t = DEFAULT_TOP_PROJECTS as u64,
          value_parser = clap::value_parser!(u64).range(0..=MAX_TOP_PROJECTS as u64))]
    pub metrics_top_projects: u64,
}

impl MetricsArgs {
    /// The configuration these flags give.
    pub fn config(&self) -> MetricsConfig {
        MetricsConfig {
            listen: self.metrics_listen,
            // In range: the parser caps it at MAX_TOP_PROJECTS.
            top_projects: usize::try_from(self.metrics_top_projects).unwrap_or(MAX_TOP_PROJECTS),
        }
    }
}

/// Parses `--metrics-listen`: an address, or a bare port on loopback.
///
/// ```
/// use kv_server::metrics::options::parse_listen;
/// assert_eq!(parse_listen("9090").unwrap().to_string(), "127.0.0.1:9090");
/// assert_eq!(parse_listen("0.0.0.0:9100").unwrap().to_string(), "0.0.0.0:9100");
/// assert!(parse_listen("nine").unwrap_err().contains("host:port"));
/// ```
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse().map_err(|_| {
        format!("--metrics-listen {text:?} is neither host:port (e.g. 127.0.0.1:9100) nor a port")
    })
}
