//! Client authentication: an optional HS256 JWT in the `token` query parameter.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::client::{User, UserId};
use super::config::JwtSecret;

/// Why a token was refused (the client then gets HTTP 401 before the upgrade).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("a token was presented but no JWT secret is configured")]
    NotConfigured,
    #[error("a token is required")]
    Missing,
    #[error("JWT verification failed: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token has no usable `sub` claim")]
    NoSubject,
}

pub(crate) struct Verifier {
    key: Option<DecodingKey>,
    validation: Validation,
    require: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("configured", &self.key.is_some())
            .field("require", &self.require)
            .finish()
    }
}

impl Verifier {
    pub(crate) fn new(secret: Option<&JwtSecret>, require: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // As the reference (jose): `exp` and `nbf` are checked when present, none is required,
        // no clock leeway, no audience check.
        validation.required_spec_claims = HashSet::new();
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            key: secret.map(|s| DecodingKey::from_secret(&s.0)),
            validation,
            require,
        }
    }

    /// `Ok(None)`: anonymous. `Ok(Some(user))`: authenticated.
    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Option<User>, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.require {
                Err(AuthError::Missing)
            } else {
                Ok(None)
            };
        };
        let key = self.key.as_ref().ok_or(AuthError::NotConfigured)?;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &self.validation)?;
        let claims = data.claims;
        let id = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => UserId::new(s.as_str()),
            Some(Value::Number(n)) => UserId::new(n.to_string()),
            _ => return Err(AuthError::NoSubject),
        };
        Ok(Some(User::new(id, Value::Object(claims))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn token(secret: &[u8], claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn verifies() {
        let v = Verifier::new(Some(&JwtSecret::raw("s3cret")), false);
        assert!(v.verify(None).unwrap().is_none());
        assert!(v.verify(Some("")).unwrap().is_none());
        let user = v
            .verify(Some(&token(
                b"s3cret",
                serde_json::json!({"sub": "42", "role": "admin"}),
            )))
            .unwrap()
            .unwrap();
        assert_eq!(user.id().as_i64(), Some(42));
        assert_eq!(user.claim("role"), Some(&Value::from("admin")));
        assert!(v
            .verify(Some(&token(b"other", serde_json::json!({"sub": "1"}))))
            .is_err());
        assert!(v
            .verify(Some(&token(
                b"s3cret",
                serde_json::json!({"sub": "1", "exp": now() - 10})
            )))
            .is_err());
        assert!(v
            .verify(Some(&token(
                b"s3cret",
                serde_json::json!({"sub": "1", "nbf": now() + 600})
            )))
            .is_err());
        assert!(matches!(
            v.verify(Some(&token(b"s3cret", serde_json::json!({"name": "x"})))),
            Err(AuthError::NoSubject)
        ));
        assert!(v.verify(Some("garbage")).is_err());
        let required = Verifier::new(Some(&JwtSecret::raw("s3cret")), true);
        assert!(matches!(required.verify(None), Err(AuthError::Missing)));
        let unconfigured = Verifier::new(None, false);
        assert!(matches!(
            unconfigured.verify(Some(&token(b"s3cret", serde_json::json!({"sub": "1"})))),
            Err(AuthError::NotConfigured)
        ));
    }
}
