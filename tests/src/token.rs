//! A token issuer for a registry with `auth: token`, as Quay, Harbor and
//! registry.redhat.io run: the registry answers 401 with a `Bearer` challenge, the
//! client asks this issuer for a token for the scopes it needs (with its user and
//! password), and the registry checks the token's signature (ES256, with the
//! signing certificate in the `x5c` header, chained to the root it trusts) and the
//! actions it grants. The registry is the real `docker-registry`; only the issuer
//! lives here, so grants per user and namespace, and short lifetimes, are the
//! test's to choose.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// The `service` the registry names in its challenge (its `auth.token.service`).
pub const SERVICE: &str = "airlock-test-registry";
/// The `iss` of every token (the registry's `auth.token.issuer`).
pub const ISSUER: &str = "airlock-test-issuer";

/// What a user may do, under which repositories.
#[derive(Debug, Clone)]
pub struct Grant {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Repositories whose name starts with this (`team/`; empty: all).
    pub namespace: String,
    /// Actions granted there (`pull`, `push`, `delete`, `*`).
    pub actions: Vec<String>,
    /// An OAuth2 refresh token that stands for the user (an `identitytoken`),
    /// exchanged by `POST` with `grant_type=refresh_token`.
    pub identity_token: Option<String>,
}

impl Grant {
    /// `user` may do `actions` in repositories under `namespace`.
    pub fn new(user: &str, password: &str, namespace: &str, actions: &[&str]) -> Self {
        Grant {
            user: user.into(),
            password: password.into(),
            namespace: namespace.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            identity_token: None,
        }
    }

    /// The grant, also reachable with `token` as an identity token.
    pub fn with_identity_token(mut self, token: &str) -> Self {
        self.identity_token = Some(token.into());
        self
    }
}

/// How a registry with `auth: token` is set up.
#[derive(Debug, Clone, Default)]
pub struct TokenAuth {
    /// What each user may do.
    pub grants: Vec<Grant>,
    /// How long a token is good for (the registry's own leeway of 60 s
    /// included: the token really expires after this).
    pub lifetime: Duration,
    /// The first token for each set of scopes is issued already expired for the
    /// registry while the answer says it is good for `lifetime`, as a token that
    /// expires in the middle of a long publish: a client must take the registry's
    /// 401 as "ask again", not as a refusal. Later tokens for it are good.
    pub stale_first: bool,
}

impl TokenAuth {
    /// `grants`, tokens good for five minutes.
    pub fn new(grants: Vec<Grant>) -> Self {
        TokenAuth {
            grants,
            lifetime: Duration::from_secs(300),
            stale_first: false,
        }
    }
}

/// distribution accepts a token this long after its `exp` (clock skew).
const REGISTRY_LEEWAY: u64 = 60;

/// One token request as the issuer saw it.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The user, when credentials were sent and right.
    pub user: Option<String>,
    /// Asked by `POST` with an identity token (a refresh token), not by `GET`.
    pub refreshed: bool,
    /// The scopes asked for, as sent.
    pub scopes: Vec<String>,
}

struct Keys {
    signing: SigningKey,
    /// The signing certificate, DER, for the `x5c` header.
    leaf: Vec<u8>,
}

/// A running issuer on a free loopback port; stops when dropped.
pub struct TokenIssuer {
    /// Serving until dropped.
    _server: crate::http::Server,
    port: u16,
    root: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stale_first: Arc<std::sync::atomic::AtomicBool>,
}

impl TokenIssuer {
    /// Starts an issuer as `auth` says; the root certificate the registry must
    /// trust is written into `dir`.
    pub fn start(dir: &Path, auth: TokenAuth) -> Result<Self> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "airlock test token CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        leaf.distinguished_name
            .push(DnType::CommonName, "airlock test token signer");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &issuer)?;
        std::fs::create_dir_all(dir)?;
        let root = dir.join("token-root.crt");
        std::fs::write(&root, issuer.pem())?;
        let keys = Keys {
            signing: SigningKey::from_pkcs8_der(&key.serialize_der())
                .map_err(|e| anyhow!("token signing key: {e}"))?,
            leaf: cert.der().to_vec(),
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stale_first = Arc::new(std::sync::atomic::AtomicBool::new(auth.stale_first));
        let (seen, staling) = (requests.clone(), stale_first.clone());
        let asked = Mutex::new(std::collections::HashSet::new());
        let server = crate::http::Server::start(move |req| {
            let body = if req.method == "POST" {
                String::from_utf8_lossy(&req.body).into_owned()
            } else {
                String::new()
            };
            let stale = staling.load(std::sync::atomic::Ordering::SeqCst)
                && asked
                    .lock()
                    .expect("not poisoned")
                    .insert(format!("{} {body}", req.target));
            answer(req, &body, &auth, stale, &keys, &seen)
        })?;
        let port = server.port();
        Ok(TokenIssuer {
            _server: server,
            port,
            root,
            requests,
            stale_first,
        })
    }

    /// The `realm` the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The root certificate (PEM) the registry trusts tokens by.
    pub fn root_cert(&self) -> &Path {
        &self.root
    }

    /// From now on, only good tokens ([`TokenAuth::stale_first`] off): for
    /// checking with clients that do not ask again, as skopeo.
    pub fn issue_good_tokens(&self) {
        self.stale_first
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().expect("not poisoned").clone()
    }

    /// Whether `user` asked for a token that lets it do `action` in `repository`.
    pub fn asked(&self, user: &str, repository: &str, action: &str) -> bool {
        let wanted = format!("repository:{repository}:");
        self.requests().iter().any(|t| {
            t.user.as_deref() == Some(user)
                && t.scopes.iter().any(|s| {
                    s.strip_prefix(&wanted)
                        .is_some_and(|actions| actions.split(',').any(|a| a == action))
                })
        })
    }
}

/// A token for the scopes asked: by `GET` with the scopes in the query and the
/// user's password as basic auth (the token protocol), or by `POST` of a form
/// with `grant_type=refresh_token` and an identity token (the OAuth2 flow).
fn answer(
    req: &crate::http::Request,
    body: &str,
    auth: &TokenAuth,
    stale: bool,
    keys: &Keys,
    seen: &Mutex<Vec<TokenRequest>>,
) -> crate::http::Reply {
    let (grants, lifetime) = (&auth.grants, auth.lifetime);
    let refreshed = req.method == "POST";
    let query = if refreshed {
        body
    } else {
        req.target.split_once('?').map_or("", |(_, q)| q)
    };
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let form = |x: &str| crate::percent_decode(&x.replace('+', " "));
            (form(k), form(v))
        })
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let credentials = req
        .header("Authorization")
        .and_then(|h| h.strip_prefix("Basic ").map(str::to_string))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let refused = |status: u16, body: &str| {
        seen.lock().expect("not poisoned").push(TokenRequest {
            user: None,
            refreshed,
            scopes: scopes.clone(),
        });
        json(status, body.into())
    };
    let identified = grants.iter().find(|g| {
        g.identity_token.is_some() && g.identity_token.as_deref() == param("refresh_token")
    });
    let user = match credentials.as_deref().map(|c| c.split_once(':')) {
        None if refreshed => match identified {
            Some(g) if param("grant_type") == Some("refresh_token") => Some(g.user.clone()),
            _ => return refused(400, r#"{"error":"invalid_grant"}"#),
        },
        None => None,
        Some(Some((u, p))) if grants.iter().any(|g| g.user == u && g.password == p) => {
            Some(u.to_string())
        }
        Some(_) => return refused(401, r#"{"details":"wrong user name or password"}"#),
    };
    seen.lock().expect("not poisoned").push(TokenRequest {
        user: user.clone(),
        refreshed,
        scopes: scopes.clone(),
    });
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let allowed: Vec<&str> = actions
                .split(',')
                .filter(|a| {
                    grants.iter().any(|g| {
                        Some(&g.user) == user.as_ref()
                            && kind == "repository"
                            && name.starts_with(&g.namespace)
                            && g.actions.iter().any(|x| x == a || x == "*")
                    })
                })
                .collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": allowed}))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&keys.leaf)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user.clone().unwrap_or_default(),
        "aud": SERVICE,
        "exp": if stale {
            now - 2 * REGISTRY_LEEWAY
        } else {
            (now + lifetime.as_secs().max(1)).saturating_sub(REGISTRY_LEEWAY)
        },
        "nbf": now - 3 * REGISTRY_LEEWAY,
        "iat": now,
        "jti": format!("{:016x}", rand::random::<u64>()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature: Signature = keys.signing.sign(input.as_bytes());
    let token = format!("{input}.{}", b64(&signature.to_bytes()));
    // The token protocol answers `token` (and often `access_token` too); an
    // OAuth2 token endpoint, as Azure's, `access_token` alone.
    let body = if refreshed {
        serde_json::json!({"access_token": token, "expires_in": lifetime.as_secs().max(1)})
    } else {
        serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": lifetime.as_secs().max(1),
        })
    };
    json(200, body.to_string())
}

fn json(status: u16, body: String) -> crate::http::Reply {
    crate::http::Reply::new(status, Some("application/json"), body.into_bytes())
}
