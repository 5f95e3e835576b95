//! The client the command line describes: URLs, token, TLS, timeout.

use kv_client::{Client, Tls};

use crate::{cli::Global, exit::Failure};

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
