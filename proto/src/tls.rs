//! Mutual TLS for the control plane.
//!
//! Both ends read PEM files and check them with rustls before anything is bound or
//! dialled, so that a wrong file is reported as that file (an expired path, a key
//! that is not the certificate's, a CA file holding no certificate) rather than as
//! a handshake failure later. tonic then builds its own rustls configuration from
//! the same bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A certificate or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        what: String,
    },
}

/// The agent's side: its certificate and key, and the CA client certificates must
/// be signed by.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA certificate(s) client certificates must chain to.
    pub client_ca: PathBuf,
}

/// A client's side: the CA the agent's certificate must chain to, and the client's
/// own certificate and key.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// PEM CA certificate(s) of the agent's certificate.
    pub ca: PathBuf,
    /// PEM client certificate chain.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            path,
            "holds no certificate; expected PEM \"BEGIN CERTIFICATE\" blocks",
        ));
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        invalid(
            path,
            format!("holds no usable private key ({e}); expected a PEM PKCS#8, PKCS#1 or SEC1 key"),
        )
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path, pem)? {
        roots
            .add(c)
            .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl ServerFiles {
    /// Reads and checks the files; the result refuses any client without a
    /// certificate signed by `client_ca`.
    pub fn load(&self) -> Result<ServerTlsConfig, TlsError> {
        let (cert_pem, key_pem, ca_pem) =
            (read(&self.cert)?, read(&self.key)?, read(&self.client_ca)?);
        let chain = certs(&self.cert, &cert_pem)?;
        let private = key(&self.key, &key_pem)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            roots(&self.client_ca, &ca_pem)?,
            provider(),
        )
        .build()
        .map_err(|e| invalid(&self.client_ca, e.to_string()))?;
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&self.cert, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private)
            .map_err(|e| {
                invalid(
                    &self.key,
                    format!("cannot serve {} with this key: {e}", self.cert.display()),
                )
            })?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .client_ca_root(Certificate::from_pem(ca_pem))
            .client_auth_optional(false))
    }
}

impl ClientFiles {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let (ca_pem, cert_pem, key_pem) = (read(&self.ca)?, read(&self.cert)?, read(&self.key)?);
        let root_store = roots(&self.ca, &ca_pem)?;
        let chain = certs(&self.cert, &cert_pem)?;
        let private = key(&self.key, &key_pem)?;
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&self.cert, e.to_string()))?
            .with_root_certificates(root_store)
            .with_client_auth_cert(chain, private)
            .map_err(|e| {
                invalid(
                    &self.key,
                    format!("cannot use {} with this key: {e}", self.cert.display()),
                )
            })?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    struct Set {
        _dir: tempfile::TempDir,
        server: ServerFiles,
        other_key: PathBuf,
    }

    fn set() -> Set {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let d = dir.path();
        Set {
            server: ServerFiles {
                cert: write(d, "server.crt", &leaf.pem()),
                key: write(d, "server.key", &key.serialize_pem()),
                client_ca: write(d, "ca.crt", &ca.pem()),
            },
            other_key: write(
                d,
                "other.key",
                &KeyPair::generate().unwrap().serialize_pem(),
            ),
            _dir: dir,
        }
    }

    #[test]
    fn a_matching_set_of_files_loads() {
        set().server.load().unwrap();
    }

    #[test]
    fn each_wrong_file_is_named() {
        let s = set();
        let mut swapped = s.server.clone();
        swapped.key = s.other_key.clone();
        let err = swapped.load().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot serve", s.other_key.display())),
            "{err}"
        );

        let mut no_ca = s.server.clone();
        no_ca.client_ca = s.server.key.clone();
        let err = no_ca.load().unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");

        let mut missing = s.server.clone();
        missing.cert = PathBuf::from("/nonexistent/server.crt");
        let err = missing.load().unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/server.crt: "), "{err}");

        let mut no_key = s.server.clone();
        no_key.key = s.server.cert.clone();
        let err = no_key.load().unwrap_err().to_string();
        assert!(err.contains("holds no usable private key"), "{err}");
    }
}
