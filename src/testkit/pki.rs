//! Certificates made at run time with rcgen: a CA and a leaf for the given names. No private key
//! is ever checked in.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A CA and one leaf certificate signed by it.
pub struct Pki {
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// Leaf private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// Files written by [`Pki::write`]; the directory is removed on drop.
pub struct PkiFiles {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// Leaf chain.
    pub cert: PathBuf,
    /// Leaf key.
    pub key: PathBuf,
}

impl Drop for PkiFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

impl Pki {
    /// A fresh CA and a leaf valid for `names` (DNS names or IP literals).
    pub fn new(names: &[&str]) -> Result<Pki, String> {
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "muxgate test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().map_err(e)?;
        let mut leaf =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(e)?;
        leaf.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(e)?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// The usual test PKI: `localhost`, `127.0.0.1`, `::1`.
    pub fn localhost() -> Result<Pki, String> {
        Pki::new(&["localhost", "127.0.0.1", "::1"])
    }

    /// Writes `ca.pem`, `cert.pem`, `key.pem` into a fresh temporary directory.
    pub fn write(&self) -> Result<PkiFiles, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "muxgate-pki-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(e)?;
        let w = |name: &str, text: &str| -> Result<PathBuf, String> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(e)?;
            Ok(p)
        };
        Ok(PkiFiles {
            ca: w("ca.pem", &self.ca_pem)?,
            cert: w("cert.pem", &self.cert_pem)?,
            key: w("key.pem", &self.key_pem)?,
            dir,
        })
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, String> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(e)
    }

    /// A server config for the leaf, offering `alpn`; `tls12_only` pins TLS 1.2.
    pub fn server_config(
        &self,
        alpn: &[&[u8]],
        tls12_only: bool,
    ) -> Result<Arc<ServerConfig>, String> {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let mut cfg = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(versions)
            .map_err(e)?
            .with_no_client_auth()
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(e)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A client config trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.map_err(e)?).map_err(e)?;
        }
        let mut cfg = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(e)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}
