//! JWTs for the gateway's OAuth 2.0 token endpoint: client assertions signed by a client's
//! own did:key (RFC 7523 `private_key_jwt`), and the access tokens the node issues (signed
//! with the node's key).
//!
//! A **client assertion** is checked whole before anything is believed: `alg` is `EdDSA` or
//! `Ed25519` (RFC 9864; nothing else, never `none`), the signature verifies strictly
//! (ed25519-dalek `verify_strict`: no malleated signatures) under the key of the DID that is
//! both `iss` and `sub`, `kid` (if any) names that DID or its key, `aud` is this token
//! endpoint, `exp` is in the future and at most five minutes away, and `jti` was never seen
//! before (a bounded [`Replay`] cache remembers each until it expires).
//!
//! An **access token** is a JWT (`EdDSA`, made and checked with `jsonwebtoken`) whose `iss`
//! and `aud` are the issuing node's DID, `sub` the client's DID, `scope` the granted scopes,
//! `exp` at most an hour away, and `jti` an id the owner can revoke.

use std::collections::HashMap;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use sov_core::Did;

use crate::Keypair;

/// `client_assertion_type` of RFC 7523.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest an assertion may live (seconds from now to `exp`).
pub const MAX_ASSERTION_LIFETIME: u64 = 300;
/// Longest an access token may live (seconds).
pub const MAX_ACCESS_TTL: u64 = 3600;
/// Clock skew tolerated (seconds).
pub const LEEWAY: u64 = 30;
/// Longest token accepted (bytes).
pub const MAX_JWT: usize = 8 * 1024;

/// Why a JWT was refused. Every variant is the client's fault (`invalid_client` for an
/// assertion, 401 for an access token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts of JSON, or too long.
    #[error("not a well-formed JWT: {0}")]
    Malformed(String),
    /// An algorithm other than EdDSA / Ed25519.
    #[error("algorithm {0:?} is not accepted (EdDSA or Ed25519)")]
    Algorithm(String),
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Signature,
    /// `iss`, `sub` or `kid` do not name one did:key.
    #[error("{0}")]
    Issuer(String),
    /// Not for this audience.
    #[error("the token is for another audience")]
    Audience,
    /// Past `exp`, or `exp` too far away.
    #[error("{0}")]
    Expired(String),
    /// A `jti` seen before.
    #[error("this assertion was used before (its jti is spent)")]
    Replayed,
    /// The replay cache is full of live assertions: try again shortly.
    #[error("too many assertions in flight; try again in a minute")]
    Busy,
}

/// `aud`: one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, a: &str) -> bool {
        match self {
            Audience::One(x) => x == a,
            Audience::Many(v) => v.iter().any(|x| x == a),
        }
    }
}

/// The claims of a client assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The client's DID.
    pub iss: String,
    /// The client's DID again.
    pub sub: String,
    /// The token endpoint's URL.
    pub aud: Audience,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Single-use id.
    pub jti: String,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Spent assertion ids, each kept until its assertion expires. Bounded: when full of live
/// ids, new assertions are refused ([`JwtError::Busy`]) rather than forgetting one.
#[derive(Debug)]
pub struct Replay {
    seen: HashMap<(Did, String), u64>,
    max: usize,
}

impl Replay {
    /// A cache of at most `max` live ids.
    pub fn new(max: usize) -> Self {
        Self {
            seen: HashMap::new(),
            max,
        }
    }

    fn spend(&mut self, who: Did, jti: &str, exp: u64, now: u64) -> Result<(), JwtError> {
        let key = (who, jti.to_owned());
        if self.seen.get(&key).is_some_and(|&e| e + LEEWAY >= now) {
            return Err(JwtError::Replayed);
        }
        if self.seen.len() >= self.max {
            self.seen.retain(|_, e| *e + LEEWAY >= now);
            if self.seen.len() >= self.max {
                return Err(JwtError::Busy);
            }
        }
        self.seen.insert(key, exp);
        Ok(())
    }
}

fn part<T: serde::de::DeserializeOwned>(b64: &str, what: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JwtError::Malformed(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| JwtError::Malformed(format!("the {what} is not the expected JSON: {e}")))
}

/// Check a client assertion for the token endpoint `audience` at time `now`; returns the
/// client's DID. The assertion's `jti` is spent in `replay`.
pub fn verify_assertion(
    token: &str,
    audience: &str,
    now: u64,
    replay: &mut Replay,
) -> Result<Did, JwtError> {
    if token.len() > MAX_JWT {
        return Err(JwtError::Malformed(format!("longer than {MAX_JWT} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("a JWT has three parts".into()));
    };
    let header: JoseHeader = part(h, "header")?;
    if header.alg != "EdDSA" && header.alg != "Ed25519" {
        return Err(JwtError::Algorithm(header.alg.chars().take(16).collect()));
    }
    let claims: AssertionClaims = part(c, "claims")?;
    if claims.iss != claims.sub {
        return Err(JwtError::Issuer(
            "iss and sub must both be the client's DID".into(),
        ));
    }
    let did: Did = claims
        .iss
        .parse()
        .map_err(|_| JwtError::Issuer("iss is not a did:key".into()))?;
    if let Some(kid) = &header.kid
        && kid != &claims.iss
        && kid.split_once('#').is_none_or(|(d, _)| d != claims.iss)
    {
        return Err(JwtError::Issuer("kid names another key than iss".into()));
    }
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| JwtError::Malformed("the signature is not 64 base64url bytes".into()))?;
    let input = &token[..h.len() + 1 + c.len()];
    did.verifying_key()
        .verify_strict(input.as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| JwtError::Signature)?;
    if !claims.aud.contains(audience) {
        return Err(JwtError::Audience);
    }
    if claims.exp + LEEWAY < now {
        return Err(JwtError::Expired("the assertion has expired".into()));
    }
    if claims.exp > now + MAX_ASSERTION_LIFETIME + LEEWAY {
        return Err(JwtError::Expired(format!(
            "an assertion lives at most {MAX_ASSERTION_LIFETIME} s"
        )));
    }
    if claims.nbf.is_some_and(|n| n > now + LEEWAY) || claims.iat.is_some_and(|i| i > now + LEEWAY)
    {
        return Err(JwtError::Expired("the assertion is not valid yet".into()));
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(JwtError::Malformed("jti: 1 to 256 characters".into()));
    }
    replay.spend(did, &claims.jti, claims.exp, now)?;
    Ok(did)
}

/// Make a client assertion (what a client does; tests and `sov` as a client use it).
pub fn make_assertion(client: &Keypair, audience: &str, now: u64, jti: &str) -> String {
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": client.did().to_string()});
    let claims = AssertionClaims {
        iss: client.did().to_string(),
        sub: client.did().to_string(),
        aud: Audience::One(audience.to_owned()),
        exp: now + 60,
        iat: Some(now),
        nbf: None,
        jti: jti.to_owned(),
    };
    sign_compact(client, &header, &claims)
}

/// `base64url(header).base64url(claims).base64url(Ed25519 signature)`.
pub fn sign_compact(key: &Keypair, header: &serde_json::Value, claims: &impl Serialize) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims are plain JSON"));
    let input = format!("{h}.{c}");
    let sig = ed25519_dalek::Signer::sign(key.signing_key(), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// The claims of an access token the node issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The issuing node's DID.
    pub iss: String,
    /// The client's DID.
    pub sub: String,
    /// Who honours it: the issuing node's DID (or a group's id).
    pub aud: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Its id (revocable).
    pub jti: String,
}

impl AccessClaims {
    /// The scopes, one by one.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_whitespace()
    }
}

/// PKCS#8 v1 DER of an Ed25519 seed (RFC 8410): a fixed 16-byte prefix and the seed.
fn pkcs8(seed: &[u8; 32]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut der = zeroize::Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ]);
    der.extend_from_slice(seed);
    der
}

/// Sign an access token with the node's key.
pub fn issue_access(node: &Keypair, claims: &AccessClaims) -> Result<String, JwtError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(node.did().to_string());
    let key = jsonwebtoken::EncodingKey::from_ed_der(&pkcs8(&node.seed()));
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| JwtError::Malformed(e.to_string()))
}

/// Who an access token says issued it and for whom (`iss`, `aud`), read without checking
/// anything: only to pick the key and the rules [`verify_access`] then checks it with.
pub fn peek_access(token: &str) -> Result<(String, String), JwtError> {
    #[derive(Deserialize)]
    struct Peek {
        iss: String,
        aud: String,
    }
    if token.len() > MAX_JWT {
        return Err(JwtError::Malformed(format!("longer than {MAX_JWT} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(_), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts".into()));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| JwtError::Malformed("the claims are not base64url".into()))?;
    let p: Peek = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("the claims lack iss or aud".into()))?;
    Ok((p.iss, p.aud))
}

/// Check an access token issued by `issuer` for audience `audience` at `now`.
pub fn verify_access(
    token: &str,
    issuer: &Did,
    audience: &str,
    now: u64,
) -> Result<AccessClaims, JwtError> {
    if token.len() > MAX_JWT {
        return Err(JwtError::Malformed(format!("longer than {MAX_JWT} bytes")));
    }
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_issuer(&[issuer.to_string()]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = LEEWAY;
    v.validate_exp = false;
    let key = jsonwebtoken::DecodingKey::from_ed_der(issuer.public_bytes());
    let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => JwtError::Signature,
            K::InvalidAlgorithm => JwtError::Algorithm("not EdDSA".into()),
            K::InvalidIssuer => JwtError::Issuer("issued by another node".into()),
            K::InvalidAudience => JwtError::Audience,
            _ => JwtError::Malformed(e.to_string()),
        }
    })?;
    let c = data.claims;
    if c.exp + LEEWAY < now {
        return Err(JwtError::Expired("the access token has expired".into()));
    }
    if c.exp > c.iat + MAX_ACCESS_TTL || c.iat > now + LEEWAY {
        return Err(JwtError::Expired(
            "an access token lives at most an hour".into(),
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const AUD: &str = "http://127.0.0.1:7878/oauth/token";
    const NOW: u64 = 1_800_000_000;

    fn client() -> Keypair {
        Keypair::from_seed(&[9; 32])
    }

    fn claims(k: &Keypair) -> AssertionClaims {
        AssertionClaims {
            iss: k.did().to_string(),
            sub: k.did().to_string(),
            aud: Audience::One(AUD.into()),
            exp: NOW + 60,
            iat: Some(NOW),
            nbf: None,
            jti: "one".into(),
        }
    }

    fn header(alg: &str) -> serde_json::Value {
        serde_json::json!({"alg": alg, "typ": "JWT"})
    }

    #[test]
    fn a_good_assertion_names_its_client_once() {
        let k = client();
        let mut r = Replay::new(16);
        for alg in ["EdDSA", "Ed25519"] {
            let mut c = claims(&k);
            c.jti = alg.into();
            let t = sign_compact(&k, &header(alg), &c);
            assert_eq!(verify_assertion(&t, AUD, NOW, &mut r).unwrap(), k.did());
            assert_eq!(
                verify_assertion(&t, AUD, NOW, &mut r),
                Err(JwtError::Replayed)
            );
        }
        let t = make_assertion(&k, AUD, NOW, "made");
        assert_eq!(verify_assertion(&t, AUD, NOW, &mut r).unwrap(), k.did());
    }

    #[test]
    fn bad_assertions_are_refused_with_the_reason() {
        let k = client();
        let other = Keypair::from_seed(&[8; 32]);
        let mut r = Replay::new(16);
        let good = sign_compact(&k, &header("EdDSA"), &claims(&k));
        // Forged: signed by another key for this DID.
        let forged = sign_compact(&other, &header("EdDSA"), &claims(&k));
        assert_eq!(
            verify_assertion(&forged, AUD, NOW, &mut r),
            Err(JwtError::Signature)
        );
        // Tampered claims under the original signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(&k);
        c.exp += 10;
        let tampered_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        parts[1] = &tampered_claims;
        assert_eq!(
            verify_assertion(&parts.join("."), AUD, NOW, &mut r),
            Err(JwtError::Signature)
        );
        // Expired, too long-lived, not yet valid.
        assert!(matches!(
            verify_assertion(&good, AUD, NOW + 200, &mut r),
            Err(JwtError::Expired(_))
        ));
        let mut c = claims(&k);
        c.exp = NOW + 3600;
        let long = sign_compact(&k, &header("EdDSA"), &c);
        assert!(matches!(
            verify_assertion(&long, AUD, NOW, &mut r),
            Err(JwtError::Expired(_))
        ));
        // Another audience.
        assert_eq!(
            verify_assertion(&good, "http://elsewhere/oauth/token", NOW, &mut r),
            Err(JwtError::Audience)
        );
        // iss ≠ sub.
        let mut c = claims(&k);
        c.sub = other.did().to_string();
        let split = sign_compact(&k, &header("EdDSA"), &c);
        assert!(matches!(
            verify_assertion(&split, AUD, NOW, &mut r),
            Err(JwtError::Issuer(_))
        ));
        // Other algorithms, none included.
        for alg in ["none", "HS256", "RS256", "ES256"] {
            let t = sign_compact(&k, &header(alg), &claims(&k));
            assert!(
                matches!(
                    verify_assertion(&t, AUD, NOW, &mut r),
                    Err(JwtError::Algorithm(_))
                ),
                "{alg}"
            );
        }
        // A kid for another key.
        let t = sign_compact(
            &k,
            &serde_json::json!({"alg": "EdDSA", "kid": other.did().to_string()}),
            &claims(&k),
        );
        assert!(matches!(
            verify_assertion(&t, AUD, NOW, &mut r),
            Err(JwtError::Issuer(_))
        ));
        // Garbage.
        for t in ["", "a.b", "a.b.c", "a.b.c.d", &"x".repeat(MAX_JWT + 1)] {
            assert!(
                matches!(
                    verify_assertion(t, AUD, NOW, &mut r),
                    Err(JwtError::Malformed(_))
                ),
                "{t:.20}"
            );
        }
        // None of the refusals spent the good one's jti.
        assert_eq!(verify_assertion(&good, AUD, NOW, &mut r).unwrap(), k.did());
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_expired_ids() {
        let k = client();
        let mut r = Replay::new(2);
        for jti in ["a", "b"] {
            let t = make_assertion(&k, AUD, NOW, jti);
            verify_assertion(&t, AUD, NOW, &mut r).unwrap();
        }
        let t = make_assertion(&k, AUD, NOW, "c");
        assert_eq!(verify_assertion(&t, AUD, NOW, &mut r), Err(JwtError::Busy));
        let t = make_assertion(&k, AUD, NOW + 120, "c");
        assert_eq!(
            verify_assertion(&t, AUD, NOW + 120, &mut r).unwrap(),
            k.did()
        );
    }

    #[test]
    fn access_tokens_verify_for_their_issuer_only() {
        let node = Keypair::from_seed(&[1; 32]);
        let other = Keypair::from_seed(&[2; 32]);
        let c = AccessClaims {
            iss: node.did().to_string(),
            sub: client().did().to_string(),
            aud: node.did().to_string(),
            scope: "infer predict".into(),
            exp: NOW + 600,
            iat: NOW,
            jti: "t1".into(),
        };
        let t = issue_access(&node, &c).unwrap();
        let back = verify_access(&t, &node.did(), &node.did().to_string(), NOW).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.scopes().collect::<Vec<_>>(), ["infer", "predict"]);
        assert!(verify_access(&t, &other.did(), &node.did().to_string(), NOW).is_err());
        assert!(matches!(
            verify_access(&t, &node.did(), &node.did().to_string(), NOW + 700),
            Err(JwtError::Expired(_))
        ));
        // Another node's token claiming this node as issuer.
        let forged = issue_access(&other, &c).unwrap();
        assert_eq!(
            verify_access(&forged, &node.did(), &node.did().to_string(), NOW),
            Err(JwtError::Signature)
        );
        // A tampered scope.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut wider = c.clone();
        wider.scope = "admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).unwrap());
        assert_eq!(
            verify_access(&parts.join("."), &node.did(), &node.did().to_string(), NOW),
            Err(JwtError::Signature)
        );
        // Too long-lived.
        let mut long = c.clone();
        long.exp = NOW + 2 * MAX_ACCESS_TTL;
        let t = issue_access(&node, &long).unwrap();
        assert!(verify_access(&t, &node.did(), &node.did().to_string(), NOW).is_err());
    }
}
