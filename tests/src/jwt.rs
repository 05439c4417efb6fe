//! End-user tokens for the tests: signing keys made in the test (RSA, ECDSA P-256, Ed25519,
//! all with aws-lc-rs), their JWKs, tokens minted with any header (including the forged ones:
//! `alg: none`, HMAC keyed with a public key), and a JWKS server over HTTPS whose answer,
//! availability and speed the test controls and whose requests it counts.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A signing key with its `kid`.
pub struct TestKey {
    /// The key id in its JWK and in the tokens it signs.
    pub kid: String,
    signer: Signer,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey").field("kid", &self.kid).finish()
    }
}

impl TestKey {
    /// A 2048-bit RSA key (RS256, RS384, RS512, PS256).
    pub fn rsa(kid: &str) -> Result<Self> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| anyhow!("RSA key generation failed"))?;
        Ok(Self {
            kid: kid.to_owned(),
            signer: Signer::Rsa(kp),
        })
    }

    /// An ECDSA P-256 key (ES256).
    pub fn es256(kid: &str) -> Result<Self> {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
            .map_err(|_| anyhow!("EC key generation failed"))?;
        let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref())
            .map_err(|_| anyhow!("EC key parse failed"))?;
        Ok(Self {
            kid: kid.to_owned(),
            signer: Signer::Es256(kp),
        })
    }

    /// An Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> Result<Self> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow!("Ed25519 key generation failed"))?;
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow!("Ed25519 key parse failed"))?;
        Ok(Self {
            kid: kid.to_owned(),
            signer: Signer::Ed25519(kp),
        })
    }

    /// The algorithm this key signs with by default.
    pub fn default_alg(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Es256(_) => "ES256",
            Signer::Ed25519(_) => "EdDSA",
        }
    }

    /// The public key as a JWK (with `kid`, `use: sig`).
    pub fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Rsa(kp) => {
                let public = kp.public_key();
                let comps: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = public.into();
                json!({"kty": "RSA", "kid": self.kid, "use": "sig",
                       "n": B64.encode(strip_zeros(&comps.n)), "e": B64.encode(strip_zeros(&comps.e))})
            }
            Signer::Es256(kp) => {
                let point = kp.public_key().as_ref();
                let (x, y) = point.get(1..).unwrap_or_default().split_at(32);
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                       "x": B64.encode(x), "y": B64.encode(y)})
            }
            Signer::Ed25519(kp) => json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                                          "use": "sig", "x": B64.encode(kp.public_key().as_ref())}),
        }
    }

    /// The public key's bytes as an HMAC secret would be taken from it by a confused
    /// verifier: the JWK's JSON text.
    pub fn public_bytes(&self) -> Vec<u8> {
        self.jwk().to_string().into_bytes()
    }

    /// A token with this key's default algorithm and `kid`.
    pub fn token(&self, claims: &Value) -> Result<String> {
        self.token_alg(self.default_alg(), claims)
    }

    /// A token signed with `alg` (RS256/RS384/RS512/PS256 for RSA keys).
    pub fn token_alg(&self, alg: &str, claims: &Value) -> Result<String> {
        self.token_with_header(&json!({"alg": alg, "kid": self.kid, "typ": "JWT"}), claims)
    }

    /// A token with exactly `header`, signed with this key as `header.alg` says.
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> Result<String> {
        let alg = header["alg"].as_str().unwrap_or("");
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match (&self.signer, alg) {
            (Signer::Rsa(kp), _) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    other => return Err(anyhow!("RSA key cannot sign {other}")),
                };
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(padding, &rng, input.as_bytes(), &mut sig)
                    .map_err(|_| anyhow!("RSA signing failed"))?;
                sig
            }
            (Signer::Es256(kp), "ES256") => kp
                .sign(&rng, input.as_bytes())
                .map_err(|_| anyhow!("EC signing failed"))?
                .as_ref()
                .to_vec(),
            (Signer::Ed25519(kp), "EdDSA") => kp.sign(input.as_bytes()).as_ref().to_vec(),
            (_, other) => return Err(anyhow!("this key cannot sign {other}")),
        };
        Ok(format!("{input}.{}", B64.encode(sig)))
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// An unsigned token, `alg: none`.
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(claims.to_string())
    )
}

/// An HS256 token keyed with `secret` (the HMAC confusion attack uses a public key).
pub fn hmac_token(secret: &[u8], kid: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "HS256", "kid": kid, "typ": "JWT"}).to_string()),
        B64.encode(claims.to_string())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

/// `token` with one character of its signature changed (still valid base64url).
pub fn tamper(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len().saturating_sub(10);
    if let Some(b) = bytes.get_mut(i) {
        *b = if *b == b'A' { b'B' } else { b'A' };
    }
    String::from_utf8(bytes).unwrap_or_default()
}

/// A JWK set of `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Now, Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// How the [`JwksServer`] answers.
#[derive(Debug, Clone)]
pub enum JwksMode {
    /// 200 with the current JWK set.
    Up,
    /// 503.
    Down,
    /// The JWK set after this delay.
    Slow(Duration),
}

#[derive(Debug)]
struct JwksState {
    body: Mutex<String>,
    mode: Mutex<JwksMode>,
    requests: AtomicU64,
}

/// A JWKS endpoint over HTTPS, with a certificate from its own root ([`JwksServer::ca_pem`]).
#[derive(Debug)]
pub struct JwksServer {
    /// `https://127.0.0.1:PORT/jwks.json`.
    pub url: String,
    /// The root to trust for it, PEM.
    pub ca_pem: String,
    state: Arc<JwksState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    /// Serves `body` at `/jwks.json`.
    pub async fn start(body: &str) -> Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?
            .signed_by(&key, &issuer)?;
        let config = rustls::ServerConfig::builder_with_provider(picket_common::crypto::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}/jwks.json", listener.local_addr()?);
        let state = Arc::new(JwksState {
            body: Mutex::new(body.to_owned()),
            mode: Mutex::new(JwksMode::Up),
            requests: AtomicU64::new(0),
        });
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |request: Request<Incoming>| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, Infallible>(answer(&state, &request).await) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        Ok(Self {
            url,
            ca_pem: ca_cert.pem(),
            state,
            task,
        })
    }

    /// Replaces the JWK set served.
    pub fn set_body(&self, body: &str) {
        if let Ok(mut b) = self.state.body.lock() {
            *b = body.to_owned();
        }
    }

    /// Changes how requests are answered.
    pub fn set_mode(&self, mode: JwksMode) {
        if let Ok(mut m) = self.state.mode.lock() {
            *m = mode;
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

async fn answer(state: &JwksState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mode = state
        .mode
        .lock()
        .map(|m| m.clone())
        .unwrap_or(JwksMode::Down);
    let mut resp = Response::new(Full::new(Bytes::new()));
    if request.uri().path() != "/jwks.json" {
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    }
    match mode {
        JwksMode::Down => {
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return resp;
        }
        JwksMode::Slow(d) => tokio::time::sleep(d).await,
        JwksMode::Up => {}
    }
    let body = state.body.lock().map(|b| b.clone()).unwrap_or_default();
    *resp.body_mut() = Full::new(Bytes::from(body));
    resp
}
