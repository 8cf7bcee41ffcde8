//! TLS (`rediss://`) for both Redis brokers: the roots of a private CA given to a broker, and the
//! rustls connector of the cluster broker's own subscriber connections (the `redis` crate's
//! clients make theirs from the same roots).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio_rustls::TlsConnector;

use crate::error::BrokerError;

/// The trust anchors of `pem` (one or more `CERTIFICATE` blocks; other blocks are skipped).
///
/// # Errors
/// [`BrokerError::Config`] for PEM that cannot be read, holds no certificate, or a certificate
/// that is not a usable trust anchor.
pub(super) fn parse_roots(pem: &[u8]) -> Result<RootCertStore, BrokerError> {
    let mut store = RootCertStore::empty();
    for (index, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let certificate = item.map_err(|e| {
            BrokerError::Config(format!("the TLS root certificates are not valid PEM: {e}"))
        })?;
        store.add(certificate).map_err(|e| {
            BrokerError::Config(format!(
                "TLS root certificate {} of the PEM is not a usable CA certificate: {e}",
                index + 1
            ))
        })?;
    }
    if store.is_empty() {
        return Err(BrokerError::Config(
            "the TLS root certificates hold no certificate: give the PEM of the CA that signed the Redis server's certificate (one or more `-----BEGIN CERTIFICATE-----` blocks)".to_owned(),
        ));
    }
    Ok(store)
}

/// `info` made to trust the CA certificates of `pem` (checked first) in the `redis` crate's
/// connections: what `tls_root_certificates` does on both brokers. `urls` names the broker's
/// Redis in errors; `is_tls` says whether its URLs are `rediss://` ones.
///
/// # Errors
/// [`BrokerError::Config`] when `pem` holds no usable certificate or the URLs are not `rediss://`.
pub(super) fn trusting(
    info: &[redis::ConnectionInfo],
    is_tls: bool,
    pem: &[u8],
    urls: &str,
) -> Result<Vec<redis::ConnectionInfo>, BrokerError> {
    parse_roots(pem)?;
    if !is_tls {
        return Err(BrokerError::Config(format!(
            "TLS root certificates were given for the Redis URL(s) {urls}, which do not use TLS: use `rediss://` URLs"
        )));
    }
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    };
    info.iter()
        .map(|one| {
            redis::Client::build_with_tls(one.clone(), certificates.clone())
                .map(|client| client.get_connection_info().clone())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BrokerError::Config(format!("the TLS root certificates for {urls}: {e}")))
}

/// A connector that trusts `roots`, or the platform's root certificates without them (as the
/// `redis` crate does), with the `ring` provider.
pub(super) fn connector(roots: Option<&[u8]>) -> Result<TlsConnector, BrokerError> {
    let store = match roots {
        Some(pem) => parse_roots(pem)?,
        None => platform_roots()?,
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BrokerError::Config(format!("TLS: {e}")))?
    .with_root_certificates(store)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn platform_roots() -> Result<RootCertStore, BrokerError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (_added, _ignored) = store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(BrokerError::Config(format!(
            "TLS: no root certificate found on this system{}; give the CA of the Redis servers' certificates to the broker (tls_root_certificates, or REDIS_TLS_CA_FILE)",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        )));
    }
    Ok(store)
}

/// The name a node's certificate is checked against: its host as the cluster announces it (an IP
/// address, or a DNS name).
pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| {
        format!("{host:?} is not a name a TLS certificate can be checked against: {e}")
    })
}

/// `error` with a hint when it says the server's certificate was refused: signed by a CA the
/// worker does not trust, or not naming the host it was reached at.
pub(super) fn explain(error: &str) -> String {
    if error.contains("(TLS: ") {
        return error.to_owned();
    }
    if error.contains("UnknownIssuer") {
        format!(
            "{error} (TLS: the server's certificate is not trusted; give the CA that signed it to the broker with tls_root_certificates, or REDIS_TLS_CA_FILE)"
        )
    } else if error.contains("not valid for name") || error.contains("NotValidForName") {
        format!(
            "{error} (TLS: the server's certificate does not name the host it was reached at; on a cluster, that is the address each node announces in CLUSTER SLOTS: put it in the certificates' subject alternative names, or make the nodes announce a name the certificates carry with cluster-announce-hostname and cluster-preferred-endpoint-type hostname)"
        )
    } else {
        error.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_is_refused() {
        for pem in [
            &b""[..],
            b"not pem at all",
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFQ2\n-----END PRIVATE KEY-----\n",
        ] {
            let err = parse_roots(pem).unwrap_err();
            assert!(
                matches!(&err, BrokerError::Config(m) if m.contains("no certificate")),
                "{err}"
            );
        }
        let err = parse_roots(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(matches!(&err, BrokerError::Config(_)), "{err}");
    }

    #[test]
    fn refused_certificates_are_explained_once() {
        let unknown = explain("redis at x: invalid peer certificate: UnknownIssuer");
        assert!(unknown.contains("tls_root_certificates"), "{unknown}");
        assert_eq!(explain(&unknown), unknown);
        let name = explain(
            "invalid peer certificate: certificate not valid for name \"10.0.0.1\"; certificate is only valid for DnsName(\"redis-0\")",
        );
        assert!(name.contains("subject alternative names"), "{name}");
        assert_eq!(explain("connection refused"), "connection refused");
    }

    #[test]
    fn ip_hosts_are_checked_as_addresses() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("redis-0.local"),
            Ok(ServerName::DnsName(_))
        ));
    }
}
