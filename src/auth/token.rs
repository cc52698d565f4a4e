//! Docker token protocol, registry side: verifying a JWT bearer token
//! (RS256/ES256 family) against the configured public key, issuer,
//! audience (our service name), expiry and not-before, and reading its
//! `access` claim.

use super::access::{Access, Action};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Clock difference tolerated between the issuer and us.
const LEEWAY_SECS: u64 = 30;

pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token key: {0}")]
    Key(String),
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub subject: String,
    pub access: Vec<ResourceActions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    access: Vec<ResourceActions>,
}

impl TokenVerifier {
    /// `pem` is a "PUBLIC KEY" (SPKI) block of an RSA or EC P-256/P-384 key,
    /// or a "CERTIFICATE" whose key is used (the first, when a bundle).
    pub fn new(pem: &[u8], issuer: &str, service: &str) -> Result<TokenVerifier, TokenError> {
        let converted;
        let pem = if pem.windows(11).any(|w| w == b"CERTIFICATE") {
            converted = certificate_key_pem(pem)?;
            converted.as_bytes()
        } else {
            pem
        };
        let (key, algorithms) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (
                k,
                vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            )
        } else {
            let k = DecodingKey::from_ec_pem(pem)
                .map_err(|e| TokenError::Key(format!("not an RSA or EC public key in PEM: {e}")))?;
            (k, vec![Algorithm::ES256, Algorithm::ES384])
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[service]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Ok(TokenVerifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<TokenGrant, TokenError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok(TokenGrant {
            subject: data.claims.sub,
            access: data.claims.access,
        })
    }
}

/// The public key of the first certificate in `pem`, as "PUBLIC KEY" PEM.
fn certificate_key_pem(pem: &[u8]) -> Result<String, TokenError> {
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .map_err(|e| TokenError::Key(format!("certificate PEM: {e}")))?;
    let parsed = webpki::EndEntityCert::try_from(&cert)
        .map_err(|e| TokenError::Key(format!("certificate: {e}")))?;
    let spki = parsed.subject_public_key_info();
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    Ok(out)
}

impl TokenGrant {
    pub fn allows(&self, access: &Access) -> bool {
        let has = |kind: &str, name: &str, action: &str| {
            self.access.iter().any(|r| {
                r.kind == kind
                    && r.name == name
                    && r.actions.iter().any(|a| a == action || a == "*")
            })
        };
        match access {
            Access::Login => true,
            Access::Catalog => has("registry", "catalog", "*"),
            Access::Repository { name, action } => has("repository", name, action.as_str()),
        }
    }

    /// Whether the token names this repository's action (for mounts).
    pub fn allows_repo(&self, name: &str, action: Action) -> bool {
        self.allows(&Access::repo(name, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(json: &str) -> TokenGrant {
        TokenGrant {
            subject: "s".into(),
            access: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn access_claim_is_read_literally() {
        let g = grant(
            r#"[{"type":"repository","name":"a/b","actions":["pull","push"]},
                {"type":"repository","name":"c","actions":["*"]},
                {"type":"registry","name":"catalog","actions":["*"]}]"#,
        );
        assert!(g.allows(&Access::repo("a/b", Action::Pull)));
        assert!(g.allows(&Access::repo("a/b", Action::Push)));
        assert!(!g.allows(&Access::repo("a/b", Action::Delete)));
        assert!(!g.allows(&Access::repo("a/bc", Action::Pull)));
        assert!(g.allows(&Access::repo("c", Action::Delete)));
        assert!(g.allows(&Access::Catalog));
        assert!(g.allows(&Access::Login));
        assert!(!grant("[]").allows(&Access::Catalog));
    }

    #[test]
    fn refuses_a_key_that_is_not_pem() {
        assert!(TokenVerifier::new(b"nonsense", "i", "s").is_err());
    }
}
