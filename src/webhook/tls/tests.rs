//! Unit tests of the pure certificate logic, the live-swapping resolver (through real TLS
//! handshakes over in-memory pipes) and the files mode.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use secrecy::{ExposeSecret as _, SecretString};
use time::{Duration, OffsetDateTime, macros::datetime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::certs::{self, Decision, Material, Validity};
use super::*;

const NOW: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

fn settings() -> TlsSettings {
    TlsSettings {
        namespace: "credvend".into(),
        service_name: "credvend-webhook".into(),
        secret_name: "credvend-webhook-tls".into(),
        webhook_config_name: "credvend".into(),
        extra_sans: vec!["127.0.0.1".into()],
        check_interval: DEFAULT_CHECK_INTERVAL,
        file_poll_interval: StdDuration::from_millis(20),
    }
}

fn sans() -> Vec<String> {
    settings().sans()
}

fn metrics() -> (prometheus::Registry, TlsMetrics) {
    let registry = prometheus::Registry::new();
    let metrics = TlsMetrics::register(&registry).unwrap();
    (registry, metrics)
}

/// Fresh material (new CA and leaf) as of `now`.
fn fresh(now: OffsetDateTime) -> Material {
    match certs::decide(None, &sans(), now).unwrap() {
        Decision::Replace { material, .. } => material,
        Decision::Keep(_) => panic!("nothing stored, yet kept"),
    }
}

fn copy(m: &Material) -> Material {
    Material {
        ca_bundle: m.ca_bundle.clone(),
        ca_key: m.ca_key.clone(),
        cert: m.cert.clone(),
        key: m.key.clone(),
    }
}

fn resolver_for(m: &Material) -> Arc<CertResolver> {
    let key = certs::certified_key(&m.cert, m.key.expose_secret(), "tls.crt", "tls.key").unwrap();
    Arc::new(CertResolver::new(Arc::new(key)))
}

fn bundle_len(pem: &str) -> usize {
    CertificateDer::pem_slice_iter(pem.as_bytes()).count()
}

/// Completes a TLS handshake against `server` as a client trusting only `trusted_pem`,
/// connecting to `name`; returns the certificate the server presented and the ALPN protocol.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    trusted_pem: &str,
    name: &str,
) -> Result<(CertificateDer<'static>, Option<Vec<u8>>), String> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(trusted_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let mut client = ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let mut stream = acceptor.accept(server_io).await.ok()?;
        stream.write_all(b"ok").await.ok()?;
        stream.shutdown().await.ok()
    });
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let result = async {
        let mut stream = TlsConnector::from(Arc::new(client))
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = stream.get_ref();
        let presented = conn.peer_certificates().unwrap()[0].clone();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let mut greeting = Vec::new();
        stream
            .read_to_end(&mut greeting)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(greeting, b"ok");
        Ok((presented, alpn))
    }
    .await;
    let _ = server_task.await;
    result
}

fn first_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn issued_certificate_completes_handshakes_for_loopback_and_every_service_name() {
    let material = fresh(OffsetDateTime::now_utc());
    let config = Arc::new(server_config(resolver_for(&material)).unwrap());
    for name in [
        "127.0.0.1",
        "credvend-webhook",
        "credvend-webhook.credvend",
        "credvend-webhook.credvend.svc",
        "credvend-webhook.credvend.svc.cluster.local",
    ] {
        let (presented, alpn) = handshake(config.clone(), &material.ca_bundle, name)
            .await
            .unwrap_or_else(|e| panic!("handshake for {name} failed: {e}"));
        assert_eq!(presented, first_der(&material.cert));
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
}

#[tokio::test]
async fn handshake_fails_for_a_name_the_certificate_does_not_carry() {
    let material = fresh(OffsetDateTime::now_utc());
    let config = Arc::new(server_config(resolver_for(&material)).unwrap());
    let err = handshake(
        config.clone(),
        &material.ca_bundle,
        "credvend-webhook.other.svc",
    )
    .await
    .unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    handshake(config, &material.ca_bundle, "127.0.0.2")
        .await
        .unwrap_err();
}

#[tokio::test]
async fn client_trusting_another_ca_rejects_the_certificate() {
    let material = fresh(OffsetDateTime::now_utc());
    let other = fresh(OffsetDateTime::now_utc());
    let config = Arc::new(server_config(resolver_for(&material)).unwrap());
    let err = handshake(config, &other.ca_bundle, "127.0.0.1")
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn new_handshakes_see_the_certificate_set_on_the_resolver() {
    let now = OffsetDateTime::now_utc();
    let first = fresh(now);
    let resolver = resolver_for(&first);
    let config = Arc::new(server_config(resolver.clone()).unwrap());
    let (presented, _) = handshake(config.clone(), &first.ca_bundle, "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(presented, first_der(&first.cert));

    let second = fresh(now);
    let key = certs::certified_key(&second.cert, second.key.expose_secret(), "c", "k").unwrap();
    resolver.set(Arc::new(key));
    let (presented, _) = handshake(config.clone(), &second.ca_bundle, "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(presented, first_der(&second.cert));
    // The same ServerConfig no longer presents the old certificate.
    handshake(config, &first.ca_bundle, "127.0.0.1")
        .await
        .unwrap_err();
}

#[test]
fn renewal_starts_when_a_third_of_the_lifetime_remains() {
    let not_before = NOW;
    let not_after = NOW + Duration::days(90);
    // (days after not_before, renew?)
    let table = [
        (0, false),
        (59, false),
        (60, false), // exactly 30 of 90 days left: not yet
        (61, true),
        (89, true),
        (90, true),
        (400, true),
    ];
    for (day, expected) in table {
        let now = NOW + Duration::days(day);
        assert_eq!(
            needs_renewal(not_before, not_after, now),
            expected,
            "day {day}"
        );
    }
    // A certificate whose validity is empty or reversed is never kept.
    assert!(needs_renewal(NOW, NOW, NOW - Duration::days(1)));
    assert!(needs_renewal(
        NOW,
        NOW - Duration::days(1),
        NOW - Duration::days(2)
    ));
}

#[test]
fn generated_lifetimes_renew_the_leaf_after_60_days_and_the_ca_after_40_months() {
    let ca = certs::generate_ca(NOW).unwrap();
    let leaf = certs::issue_leaf(&ca, &sans(), NOW).unwrap();
    assert_eq!(leaf.validity.not_before, NOW - certs::BACKDATE);
    assert_eq!(leaf.validity.not_after, NOW + LEAF_LIFETIME);
    assert_eq!(ca.validity().not_after, NOW + CA_LIFETIME);
    assert!(!leaf.validity.needs_renewal(NOW + Duration::days(59)));
    assert!(leaf.validity.needs_renewal(NOW + Duration::days(61)));
    assert!(!ca.validity().needs_renewal(NOW + Duration::days(40 * 30)));
    assert!(ca.validity().needs_renewal(NOW + Duration::days(41 * 30)));
}

#[test]
fn validity_read_back_from_pem_matches_what_was_issued() {
    let ca = certs::generate_ca(NOW).unwrap();
    let leaf = certs::issue_leaf(&ca, &sans(), NOW).unwrap();
    assert_eq!(
        certs::validity_of_pem(&leaf.cert_pem, "tls.crt").unwrap(),
        leaf.validity
    );
    assert_eq!(
        certs::validity_of_pem(ca.cert_pem(), "ca.crt").unwrap(),
        ca.validity()
    );
    let err = certs::validity_of_pem("not pem", "tls.crt").unwrap_err();
    assert_eq!(err.to_string(), "tls.crt: no PEM certificate found");
}

#[test]
fn a_leaf_never_outlives_its_ca() {
    let ca = certs::generate_ca(NOW).unwrap();
    let late = NOW + CA_LIFETIME - Duration::days(10);
    let leaf = certs::issue_leaf(&ca, &sans(), late).unwrap();
    assert_eq!(leaf.validity.not_after, ca.validity().not_after);
}

#[test]
fn a_ca_loaded_from_pem_rejects_a_key_of_another_ca() {
    let a = certs::generate_ca(NOW).unwrap();
    let b = certs::generate_ca(NOW).unwrap();
    let err = certs::Ca::from_pem(a.cert_pem(), b.key_pem().expose_secret()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ca.key: the key does not belong to the certificate in ca.crt"
    );
    let leaf = certs::issue_leaf(&a, &sans(), NOW).unwrap();
    let err = certs::Ca::from_pem(&leaf.cert_pem, leaf.key_pem.expose_secret()).unwrap_err();
    assert_eq!(err.to_string(), "ca.crt: the certificate is not a CA");
}

#[test]
fn nothing_stored_makes_a_new_ca_and_leaf() {
    let Decision::Replace { material, reason } = certs::decide(None, &sans(), NOW).unwrap() else {
        panic!("expected a new certificate");
    };
    assert_eq!(reason, "no certificate is stored yet");
    assert_eq!(bundle_len(&material.ca_bundle), 1);
    assert!(material.ca_key.expose_secret().contains("PRIVATE KEY"));
}

#[test]
fn valid_material_is_kept() {
    let stored = fresh(NOW);
    let later = NOW + Duration::days(59);
    let Decision::Keep(kept) = certs::decide(Some(copy(&stored)), &sans(), later).unwrap() else {
        panic!("valid material was replaced");
    };
    assert!(kept.same_as(&stored));
}

#[test]
fn a_due_leaf_is_reissued_by_the_same_ca_so_the_ca_bundle_does_not_change() {
    let stored = fresh(NOW);
    let later = NOW + Duration::days(61);
    let Decision::Replace { material, reason } =
        certs::decide(Some(copy(&stored)), &sans(), later).unwrap()
    else {
        panic!("a due leaf was kept");
    };
    assert!(
        reason.starts_with("the serving certificate expires at"),
        "{reason}"
    );
    assert_eq!(material.ca_bundle, stored.ca_bundle);
    assert_eq!(
        material.ca_key.expose_secret(),
        stored.ca_key.expose_secret()
    );
    assert_ne!(material.cert, stored.cert);
    let validity = certs::validity_of_pem(&material.cert, "tls.crt").unwrap();
    assert_eq!(validity.not_after, later + LEAF_LIFETIME);
}

#[test]
fn a_leaf_missing_a_configured_name_is_reissued() {
    let stored = fresh(NOW);
    let mut more = settings();
    more.extra_sans.push("webhook.example.test".into());
    let Decision::Replace { material, reason } =
        certs::decide(Some(copy(&stored)), &more.sans(), NOW).unwrap()
    else {
        panic!("a leaf without a configured name was kept");
    };
    assert!(reason.contains("webhook.example.test"), "{reason}");
    assert_eq!(material.ca_bundle, stored.ca_bundle);
}

#[test]
fn a_leaf_whose_key_does_not_match_is_reissued() {
    let stored = fresh(NOW);
    let other = fresh(NOW);
    let mut broken = copy(&stored);
    broken.key = other.key.clone();
    let Decision::Replace { material, reason } = certs::decide(Some(broken), &sans(), NOW).unwrap()
    else {
        panic!("a mismatched key was kept");
    };
    assert_eq!(
        reason,
        "tls.key: the private key does not belong to the certificate in tls.crt"
    );
    assert_eq!(material.ca_bundle, stored.ca_bundle);
}

#[test]
fn a_leaf_signed_by_another_ca_is_reissued() {
    let stored = fresh(NOW);
    let other = fresh(NOW);
    let mut mixed = copy(&stored);
    mixed.cert = other.cert.clone();
    mixed.key = other.key.clone();
    let Decision::Replace { material, reason } = certs::decide(Some(mixed), &sans(), NOW).unwrap()
    else {
        panic!("a foreign leaf was kept");
    };
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert_eq!(material.ca_bundle, stored.ca_bundle);
}

#[tokio::test]
async fn a_due_ca_is_rotated_and_the_old_one_stays_trusted_until_it_expires() {
    let stored = fresh(NOW);
    let rotation = NOW + Duration::days(4 * 365);
    let Decision::Replace { material, reason } =
        certs::decide(Some(copy(&stored)), &sans(), rotation).unwrap()
    else {
        panic!("a due CA was kept");
    };
    assert!(reason.starts_with("the CA expires at"), "{reason}");
    assert_eq!(bundle_len(&material.ca_bundle), 2);
    assert!(material.ca_bundle.ends_with(&stored.ca_bundle));
    assert_ne!(
        material.ca_key.expose_secret(),
        stored.ca_key.expose_secret()
    );
    // The new CA is active: what the Secret now holds is kept as is.
    assert!(matches!(
        certs::decide(Some(copy(&material)), &sans(), rotation).unwrap(),
        Decision::Keep(_)
    ));
    // Once the old CA has expired it is dropped from the bundle; nothing else changes.
    let after_old_expiry = NOW + CA_LIFETIME + Duration::days(1);
    let new_ca_validity = certs::validity_of_pem(&material.ca_bundle, "ca.crt").unwrap();
    assert!(!new_ca_validity.needs_renewal(after_old_expiry));
    let mut renewed_leaf = copy(&material);
    let ca = certs::Ca::from_pem(&material.ca_bundle, material.ca_key.expose_secret()).unwrap();
    let leaf = certs::issue_leaf(&ca, &sans(), after_old_expiry).unwrap();
    renewed_leaf.cert = leaf.cert_pem;
    renewed_leaf.key = leaf.key_pem;
    let Decision::Replace {
        material: pruned,
        reason,
    } = certs::decide(Some(copy(&renewed_leaf)), &sans(), after_old_expiry).unwrap()
    else {
        panic!("an expired CA stayed in the bundle");
    };
    assert_eq!(reason, "1 expired or unreadable certificate(s) in ca.crt");
    assert_eq!(bundle_len(&pruned.ca_bundle), 1);
    assert_eq!(pruned.cert, renewed_leaf.cert);
}

#[test]
fn an_unusable_ca_key_makes_a_new_ca_and_keeps_the_old_certificate_trusted() {
    let stored = fresh(NOW);
    let mut broken = copy(&stored);
    broken.ca_key = SecretString::from("garbage".to_owned());
    let Decision::Replace { material, reason } = certs::decide(Some(broken), &sans(), NOW).unwrap()
    else {
        panic!("an unusable CA was kept");
    };
    assert!(
        reason.starts_with("the stored CA is unusable: ca.key:"),
        "{reason}"
    );
    assert_eq!(bundle_len(&material.ca_bundle), 2);
}

#[test]
fn debug_output_never_contains_private_keys() {
    let material = fresh(NOW);
    let ca = certs::Ca::from_pem(&material.ca_bundle, material.ca_key.expose_secret()).unwrap();
    let leaf = certs::issue_leaf(&ca, &sans(), NOW).unwrap();
    let resolver = resolver_for(&material);
    for debug in [
        format!("{material:?}"),
        format!("{ca:?}"),
        format!("{leaf:?}"),
        format!("{resolver:?}"),
        format!("{:?}", server_config(resolver.clone()).unwrap()),
    ] {
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(!debug.contains(material.key.expose_secret()), "{debug}");
    }
}

#[test]
fn sans_cover_every_service_name_and_the_extra_names_once() {
    let mut s = settings();
    s.extra_sans = vec!["127.0.0.1".into(), "credvend-webhook".into()];
    assert_eq!(
        s.sans(),
        [
            "credvend-webhook.credvend.svc",
            "credvend-webhook",
            "credvend-webhook.credvend",
            "credvend-webhook.credvend.svc.cluster.local",
            "127.0.0.1",
        ]
    );
}

// ---- files mode ----

/// Polls `check` until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

fn write_pair(dir: &std::path::Path, m: &Material) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, &m.cert).unwrap();
    std::fs::write(&key, m.key.expose_secret()).unwrap();
    (cert, key)
}

fn serves(resolver: &CertResolver, m: &Material) -> bool {
    resolver.current().cert[0] == first_der(&m.cert)
}

fn expiry(m: &Material) -> f64 {
    certs::validity_of_pem(&m.cert, "tls.crt")
        .unwrap()
        .not_after
        .unix_timestamp() as f64
}

#[tokio::test]
async fn files_mode_serves_the_files_and_reloads_them_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let first = fresh(now);
    let (cert, key) = write_pair(dir.path(), &first);
    let (_registry, metrics) = metrics();
    let (resolver, task) = files::start(cert.clone(), key.clone(), settings(), metrics.clone())
        .await
        .unwrap();
    assert!(serves(&resolver, &first));
    assert_eq!(metrics.expiration.get(), expiry(&first));

    let second = fresh(now);
    write_pair(dir.path(), &second);
    eventually("the new files are served", || serves(&resolver, &second)).await;
    assert_eq!(metrics.expiration.get(), expiry(&second));
    let config = Arc::new(server_config(resolver.clone()).unwrap());
    handshake(config, &second.ca_bundle, "127.0.0.1")
        .await
        .unwrap();
    task.abort();
}

#[tokio::test]
async fn files_mode_keeps_the_old_certificate_when_the_new_files_are_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let first = fresh(now);
    let (cert, key) = write_pair(dir.path(), &first);
    let (_registry, metrics) = metrics();
    let (resolver, task) = files::start(cert.clone(), key.clone(), settings(), metrics.clone())
        .await
        .unwrap();
    let failures = || metrics.errors.with_label_values(&["reload"]).get();

    // A rotation caught half-way: new certificate, old key.
    let second = fresh(now);
    std::fs::write(&cert, &second.cert).unwrap();
    eventually("the mismatched pair is rejected", || failures() == 1).await;
    assert!(serves(&resolver, &first));

    // Garbage, then a missing file: still the first certificate, each bad content counted once.
    std::fs::write(&cert, "not a certificate").unwrap();
    eventually("the garbage is rejected", || failures() == 2).await;
    std::fs::remove_file(&key).unwrap();
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    assert_eq!(failures(), 2);
    assert!(serves(&resolver, &first));

    // The rotation completes.
    write_pair(dir.path(), &second);
    eventually("the completed rotation is served", || {
        serves(&resolver, &second)
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn files_mode_fails_to_start_with_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_registry, metrics) = metrics();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let err = files::start(cert.clone(), key.clone(), settings(), metrics.clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read {}: No such file or directory (os error 2)",
            cert.display()
        )
    );
    let material = fresh(NOW);
    std::fs::write(&cert, &material.cert).unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = files::start(cert, key.clone(), settings(), metrics)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("{}: ", key.display())),
        "{err}"
    );
}

#[test]
fn metrics_register_in_the_given_registry() {
    let (registry, metrics) = metrics();
    metrics.served(Validity {
        not_before: NOW,
        not_after: NOW + Duration::days(1),
    });
    metrics.failed("renew");
    let text = String::from_utf8(crate::metrics::render(&registry)).unwrap();
    assert!(text.contains(&format!(
        "credvend_webhook_certificate_expiration_timestamp_seconds {}",
        (NOW + Duration::days(1)).unix_timestamp()
    )));
    assert!(text.contains("credvend_webhook_certificate_errors_total{operation=\"renew\"} 1"));
}
