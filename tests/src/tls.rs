//! A test certificate authority.
//!
//! rustls refuses a self-signed certificate used directly as a server certificate,
//! and real sites use a private CA anyway, so tests do the same: a CA, and leaf
//! certificates it signs for servers (and later, for mTLS clients).

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A CA that can issue certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key written to files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate as `dir/ca.crt` (the name `certs.d` directories use).
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("ca.crt");
        std::fs::write(&path, self.ca_pem())?;
        Ok(path)
    }

    fn issue(
        &self,
        cert_file: PathBuf,
        key_file: PathBuf,
        params: CertificateParams,
        with_chain: bool,
    ) -> Result<Issued> {
        if let Some(dir) = cert_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: cert_file,
            key: key_file,
        };
        let mut pem = cert.pem();
        if with_chain {
            pem.push_str(&self.ca_pem());
        }
        std::fs::write(&issued.cert, pem)?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }

    /// A server certificate for `names` (DNS names or IP addresses), written as
    /// `dir/server.crt` (the leaf alone) and `dir/server.key`.
    pub fn issue_server(&self, dir: &Path, names: &[&str]) -> Result<Issued> {
        self.server(dir, names, false)
    }

    /// Like [`TestCa::issue_server`], with the CA certificate after the leaf in
    /// `server.crt`, as servers configured with a full chain send it; clients must
    /// still trust the CA themselves.
    pub fn issue_server_chain(&self, dir: &Path, names: &[&str]) -> Result<Issued> {
        self.server(dir, names, true)
    }

    fn server(&self, dir: &Path, names: &[&str], with_chain: bool) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.issue(
            dir.join("server.crt"),
            dir.join("server.key"),
            params,
            with_chain,
        )
    }

    /// A client certificate with common name `cn` (for mutual TLS), written as
    /// `dir/<cn>.cert` and `dir/<cn>.key`: in a containers `certs.d`-style directory
    /// (`--cert-dir`) a `*.crt` file is a CA to trust, and a client certificate must
    /// be a `*.cert` with a `*.key` of the same stem, so the directory can be given
    /// to skopeo (or Airlock) as it is.
    pub fn issue_client(&self, dir: &Path, cn: &str) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(
            dir.join(format!("{cn}.cert")),
            dir.join(format!("{cn}.key")),
            params,
            false,
        )
    }
}
