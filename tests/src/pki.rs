//! Certificates made for a test: a CA, a server certificate for
//! `localhost`/`127.0.0.1`, a client certificate from the same CA, and one
//! from an unrelated CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct Pair {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
}

/// Everything a TLS test needs, in PEM.
#[derive(Clone)]
pub struct TestPki {
    /// The CA that signed `server` and `client`.
    pub ca: String,
    /// Server certificate for `localhost` and `127.0.0.1`.
    pub server: Pair,
    /// Client certificate signed by `ca`.
    pub client: Pair,
    /// Client certificate signed by another CA, which the server must refuse.
    pub stranger: Pair,
}

/// Paths of the PEM files written by [`TestPki::write_to`].
pub struct PkiFiles {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate")
}

fn leaf(names: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) -> Pair {
    let key = KeyPair::generate().expect("leaf key");
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl TestPki {
    /// Generates a fresh PKI.
    ///
    /// # Panics
    ///
    /// When key generation fails.
    pub fn generate() -> Self {
        let authority = ca("kv test CA");
        let other = ca("unrelated CA");
        Self {
            ca: authority.pem(),
            server: leaf(&["localhost", "127.0.0.1"], &authority),
            client: leaf(&["kv-test-client"], &authority),
            stranger: leaf(&["stranger"], &other),
        }
    }

    /// Writes the CA and the server pair as PEM files into `dir`.
    ///
    /// # Panics
    ///
    /// When the files cannot be written.
    pub fn write_to(&self, dir: &Path) -> PkiFiles {
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        PkiFiles {
            ca: write("ca.pem", &self.ca),
            server_cert: write("server.pem", &self.server.cert),
            server_key: write("server.key", &self.server.key),
        }
    }
}
