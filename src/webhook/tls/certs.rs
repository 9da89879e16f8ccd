//! The pure half of the webhook's TLS: making a CA and serving certificates, reading their
//! validity back, and deciding from what a Secret holds whether anything must be (re)issued.
//!
//! Nothing here talks to Kubernetes or the clock; callers pass `now`. That keeps the renewal
//! policy — the part that decides whether the API server can still reach the webhook next
//! month — testable as a table.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, crypto::CryptoProvider};
use secrecy::{ExposeSecret as _, SecretString};
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// Lifetime of a CA we generate. Long, because every CA rotation has to travel through the
/// caBundle of the MutatingWebhookConfiguration (and through anything else that pinned it),
/// and short enough that a CA key leaked from the Secret does not stay useful for a decade.
pub const CA_LIFETIME: Duration = Duration::days(5 * 365);
/// Lifetime of a serving certificate. Renewing one is invisible to the API server (same CA),
/// so it can be short; 90 days makes the renewal path run several times a year, where a
/// breakage is noticed long before the CA itself is due.
pub const LEAF_LIFETIME: Duration = Duration::days(90);
/// Certificates start this long before "now", so a replica or API server whose clock is a
/// little behind ours does not see a freshly written certificate as not yet valid.
pub const BACKDATE: Duration = Duration::hours(1);

/// When a certificate is valid: read back from its DER, or chosen when issuing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// See [`needs_renewal`].
    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        needs_renewal(self.not_before, self.not_after, now)
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        now >= self.not_after
    }
}

/// True once less than a third of the certificate's lifetime remains (30 days of a 90-day
/// serving certificate, 20 months of a 5-year CA), or when it is not valid at all.
///
/// A third leaves time for every replica's periodic check, for failed attempts to be retried
/// for weeks, and — for a CA — for the new CA to sit in the caBundle next to the old one long
/// before the old one is gone.
pub fn needs_renewal(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    let lifetime = not_after - not_before;
    if lifetime <= Duration::ZERO {
        return true;
    }
    not_after - now < lifetime / 3
}

/// The certificate authority that signs the webhook's serving certificates. Its certificate is
/// what the API server trusts (the caBundle); its key never leaves the operator's Secret.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    validity: Validity,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads a CA from its certificate and key, checking that they belong together and that
    /// the certificate is a CA — a Secret edited by hand must not silently sign garbage.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let cert_der = first_certificate(cert_pem, "ca.crt")?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("ca.key", e))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| invalid("ca.crt", e))?;
        if !parsed.is_ca() {
            return Err(invalid("ca.crt", "the certificate is not a CA"));
        }
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(invalid(
                "ca.key",
                "the key does not belong to the certificate in ca.crt",
            ));
        }
        let validity = validity_of(&parsed);
        Ok(Ca {
            cert_pem: pem_of(&cert_der),
            cert_der,
            key,
            validity,
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key in PKCS#8 PEM.
    pub fn key_pem(&self) -> SecretString {
        SecretString::from(self.key.serialize_pem())
    }

    pub fn validity(&self) -> Validity {
        self.validity
    }
}

/// A serving certificate and its key, both PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: SecretString,
    pub validity: Validity,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// Makes a new ECDSA P-256 CA valid from `now - BACKDATE` for [`CA_LIFETIME`].
///
/// The date in the common name tells a human reading a caBundle with two CAs (during a
/// rotation) which one is newer.
pub fn generate_ca(now: OffsetDateTime) -> Result<Ca, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    // Unique per key: clients pick the issuer of a certificate by name first, so two CAs with
    // one name (two replicas racing in the same second) would fail as a bad signature instead
    // of an unknown issuer.
    let id: String = params
        .key_identifier(&key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("credvend-webhook-ca-{}-{id}", now.date()),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "credvend");
    // Path length 0: this CA signs serving certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_LIFETIME;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok(Ca {
        cert_pem: pem_of(cert.der()),
        cert_der: cert.der().clone(),
        key,
        validity: Validity {
            not_before: params.not_before,
            not_after: params.not_after,
        },
    })
}

/// Issues a serving certificate for `sans` (DNS names; IP literals become IP SANs), valid for
/// [`LEAF_LIFETIME`] but never beyond the CA, so a certificate cannot outlive what vouches for it.
pub fn issue_leaf(ca: &Ca, sans: &[String], now: OffsetDateTime) -> Result<Leaf, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut params = CertificateParams::new(sans.to_vec()).map_err(TlsError::Generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = sans.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = (now + LEAF_LIFETIME).min(ca.validity.not_after);
    let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).map_err(TlsError::Generate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::Generate)?;
    Ok(Leaf {
        cert_pem: pem_of(cert.der()),
        key_pem: SecretString::from(key.serialize_pem()),
        validity: Validity {
            not_before: params.not_before,
            not_after: params.not_after,
        },
    })
}

/// The names the API server may use to reach the webhook's Service, most specific last, then
/// `extra` (for a `url:` client config, tests, or a differently named Service).
pub fn service_sans(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        format!("{service}.{namespace}.svc"),
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    for name in extra {
        if !sans.contains(name) {
            sans.push(name.clone());
        }
    }
    sans
}

/// Validity of the first certificate in `pem`.
pub fn validity_of_pem(pem: &str, what: &str) -> Result<Validity, TlsError> {
    let der = first_certificate(pem, what)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| invalid(what, e))?;
    Ok(validity_of(&parsed))
}

/// Builds what rustls serves from a PEM chain (leaf first) and a PEM key (PKCS#8, SEC1 or
/// PKCS#1), refusing a key that does not match the certificate.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    cert_what: &str,
    key_what: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_what, e))?;
    if chain.is_empty() {
        return Err(invalid(cert_what, "no PEM certificate found"));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid(key_what, e))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(
            key_what,
            format!("the private key does not belong to the certificate in {cert_what}"),
        ),
        other => invalid(key_what, other),
    })
}

/// The four PEM values the operator keeps in its Secret. `ca_bundle` may hold more than one
/// certificate: the active CA first, then older CAs that still sign serving certificates some
/// replica may be presenting, so the caBundle trusts both during a rotation.
pub struct Material {
    pub ca_bundle: String,
    pub ca_key: SecretString,
    pub cert: String,
    pub key: SecretString,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("ca_bundle", &self.ca_bundle)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Same certificates and keys (compares key material without printing it).
    pub fn same_as(&self, other: &Material) -> bool {
        self.ca_bundle == other.ca_bundle
            && self.cert == other.cert
            && self.ca_key.expose_secret() == other.ca_key.expose_secret()
            && self.key.expose_secret() == other.key.expose_secret()
    }
}

/// What [`decide`] concluded about stored material.
#[derive(Debug)]
pub enum Decision {
    /// Serve what is stored.
    Keep(Material),
    /// Store (and then serve) this instead; `reason` says why, for the log.
    Replace { material: Material, reason: String },
}

/// Decides whether `stored` can keep serving `sans` at `now`, and if not produces its
/// replacement: a new serving certificate from the same CA when only the leaf is wrong (so the
/// caBundle does not change), or a new CA — kept in the bundle in front of the old one — when
/// the CA itself is missing, unusable or due.
pub fn decide(
    stored: Option<Material>,
    sans: &[String],
    now: OffsetDateTime,
) -> Result<Decision, TlsError> {
    let Some(stored) = stored else {
        return new_ca(None, sans, now, "no certificate is stored yet".to_owned());
    };
    let ca = match Ca::from_pem(&stored.ca_bundle, stored.ca_key.expose_secret()) {
        Ok(ca) => ca,
        Err(e) => {
            let reason = format!("the stored CA is unusable: {e}");
            return new_ca(Some(&stored), sans, now, reason);
        }
    };
    if ca.validity.needs_renewal(now) {
        let reason = format!("the CA expires at {}", ca.validity.not_after);
        return new_ca(Some(&stored), sans, now, reason);
    }
    let (pruned, dropped) = prune_bundle(&stored.ca_bundle, now);
    let leaf_problem = match check_leaf(&ca, &stored, sans, now) {
        Ok(()) if dropped == 0 => return Ok(Decision::Keep(stored)),
        Ok(()) => None,
        Err(problem) => Some(problem),
    };
    let ca_bundle = if dropped == 0 {
        stored.ca_bundle.clone()
    } else {
        pruned
    };
    let (cert, key, reason) = match leaf_problem {
        Some(problem) => {
            let leaf = issue_leaf(&ca, sans, now)?;
            (leaf.cert_pem, leaf.key_pem, problem)
        }
        None => (
            stored.cert.clone(),
            stored.key.clone(),
            format!("{dropped} expired or unreadable certificate(s) in ca.crt"),
        ),
    };
    Ok(Decision::Replace {
        material: Material {
            ca_bundle,
            ca_key: stored.ca_key.clone(),
            cert,
            key,
        },
        reason,
    })
}

fn new_ca(
    stored: Option<&Material>,
    sans: &[String],
    now: OffsetDateTime,
    reason: String,
) -> Result<Decision, TlsError> {
    let ca = generate_ca(now)?;
    let leaf = issue_leaf(&ca, sans, now)?;
    let mut ca_bundle = ca.cert_pem.clone();
    if let Some(stored) = stored {
        ca_bundle.push_str(&prune_bundle(&stored.ca_bundle, now).0);
    }
    Ok(Decision::Replace {
        material: Material {
            ca_bundle,
            ca_key: ca.key_pem(),
            cert: leaf.cert_pem,
            key: leaf.key_pem,
        },
        reason,
    })
}

/// Why the stored serving certificate cannot be kept: it must parse, match its key, chain to
/// the active CA and be valid for every name at `now` — checked the way a TLS client checks it
/// — and not be due for renewal.
fn check_leaf(
    ca: &Ca,
    stored: &Material,
    sans: &[String],
    now: OffsetDateTime,
) -> Result<(), String> {
    let key = certified_key(
        &stored.cert,
        stored.key.expose_secret(),
        "tls.crt",
        "tls.key",
    )
    .map_err(|e| e.to_string())?;
    let validity = validity_of_pem(&stored.cert, "tls.crt").map_err(|e| e.to_string())?;
    if validity.needs_renewal(now) {
        return Err(format!(
            "the serving certificate expires at {}",
            validity.not_after
        ));
    }
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der.clone())
        .map_err(|e| format!("ca.crt is not a usable trust anchor: {e}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("cannot build a verifier for ca.crt: {e}"))?;
    let end_entity = key.end_entity_cert().map_err(|e| e.to_string())?;
    let intermediates = key.cert.get(1..).unwrap_or_default();
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or_default(),
    ));
    for san in sans {
        let name = ServerName::try_from(san.as_str())
            .map_err(|e| format!("{san} is not a valid DNS name or IP address: {e}"))?;
        verifier
            .verify_server_cert(end_entity, intermediates, &name, &[], at)
            .map_err(|e| format!("the serving certificate does not verify for {san}: {e}"))?;
    }
    Ok(())
}

/// The bundle without certificates that have expired or do not parse, in PEM, and how many
/// were dropped.
fn prune_bundle(bundle: &str, now: OffsetDateTime) -> (String, usize) {
    let mut kept = String::new();
    let mut dropped = 0;
    for der in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        let usable = der.as_ref().ok().filter(|der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, parsed)| !validity_of(&parsed).expired(now))
                .unwrap_or(false)
        });
        match usable {
            Some(der) => kept.push_str(&pem_of(der)),
            None => dropped += 1,
        }
    }
    (kept, dropped)
}

fn validity_of(parsed: &x509_parser::certificate::X509Certificate<'_>) -> Validity {
    Validity {
        not_before: parsed.validity().not_before.to_datetime(),
        not_after: parsed.validity().not_after.to_datetime(),
    }
}

fn first_certificate(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(invalid(what, e)),
        None => Err(invalid(what, "no PEM certificate found")),
    }
}

/// PEM with LF line endings and 64-column lines, like `openssl x509` writes.
fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn invalid(what: &str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::InvalidCertificate {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

/// The process's one TLS provider (aws-lc-rs, as everywhere in credvend). Built here rather
/// than taken from the process default so that tests and library users need not install it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
