//! Caller authentication: bearer tokens with scopes per calling service.
//!
//! A tower layer in front of every loyalty service reads `authorization: Bearer
//! <token>`, finds the caller, and checks the scope the called method needs
//! ([`required_scope`]). A method missing from that table is refused, so a new
//! RPC is closed until someone decides its scope. Health and reflection are open:
//! load balancers and `grpcurl` use them without a token.
//!
//! Tokens file: one caller per line, `<caller> <credential> <scope>[,<scope>...]`;
//! `#` starts a comment. The scope `*` grants everything. The credential is the
//! SHA-256 of the caller's token, `sha256:<64 lowercase hex digits>`
//! ([`TokenHash`]), or `-` for a caller without a token. The file never holds a
//! token: `loyalty token` makes one and prints its line ([`new_token`]),
//! `loyalty token --hash` hashes an existing one. Caller names are unique, and so
//! are hashes. The file must be private to its owner (mode `600`).
//!
//! On a TLS connection where the client sent a verified certificate
//! ([`crate::tls`]), the certificate names the caller instead, which gets the
//! scopes of its line by name; a token sent as well is not looked at (the
//! certificate wins).

use std::collections::HashSet;
use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use base64::Engine as _;
use futures::future::{Either, Ready, ready};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tonic::Status;
use tower::{Layer, Service};

use crate::connections::ConnInfo;
use crate::error::Error;

/// The scope a method needs; `None` for a method no token may call.
pub fn required_scope(path: &str) -> Option<&'static str> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    Some(match (service, method) {
        ("loyalty.v1.Membership", "RegisterMember" | "UpdateBirthday") => "members:write",
        (
            "loyalty.v1.Membership",
            "GetMember" | "GetMembership" | "GetLevelAt" | "ListLevelHistory" | "CheckFastRefund",
        ) => "members:read",
        (
            "loyalty.v1.Membership",
            "EvaluateLevels" | "RunDailyRewards" | "SetRewardTemplates" | "ListRewardTemplates",
        ) => "membership:admin",
        ("loyalty.v1.Membership", "ClaimDailyCoupon") => "coupons:claim",
        ("loyalty.v1.Membership", "FlagMember" | "UnflagMember") => "members:admin",
        ("loyalty.v1.Events", "Watch") => "events:watch",
        ("loyalty.v1.Audit", "ListAudit") => "audit:read",
        ("loyalty.v1.Points", "RecordConfirmedOrder" | "RecordReview" | "RecordVisit" | "RecordPost") => {
            "points:earn"
        }
        ("loyalty.v1.Points", "ReverseOrder") => "points:reverse",
        ("loyalty.v1.Points", "GrantBonus") => "points:bonus",
        ("loyalty.v1.Points", "GetBalance" | "ListPointEntries") => "points:read",
        (
            "loyalty.v1.Coupons",
            "CreateCouponTemplate"
            | "GetCouponTemplate"
            | "ListCouponTemplates"
            | "UpdateCouponTemplate"
            | "SetCouponTemplatePaused"
            | "CreatePublicCode"
            | "GenerateSingleUseCodes"
            | "RunExpiryNotices",
        ) => "coupons:admin",
        ("loyalty.v1.Coupons", "ClaimCoupon") => "coupons:claim",
        ("loyalty.v1.Coupons", "IssueCoupon") => "coupons:issue",
        (
            "loyalty.v1.Coupons",
            "ValidateCoupons" | "BestCoupons" | "ReserveCoupons" | "GetCheckoutOrder" | "CompleteOrder"
            | "CancelOrder" | "RefundOrder",
        ) => "coupons:checkout",
        ("loyalty.v1.Coupons", "ListCoupons" | "GetCoupon") => "coupons:read",
        _ => return None,
    })
}

/// Methods open without a token: load balancers and `grpcurl` use them.
const PUBLIC_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

fn is_public(path: &str) -> bool {
    PUBLIC_METHODS.contains(&path)
}

/// Whether `path` is a method the server serves (public or scoped).
pub fn is_known_method(path: &str) -> bool {
    is_public(path) || required_scope(path).is_some()
}

/// The SHA-256 digest of a bearer token: what the tokens file stores.
///
/// Tokens are 256 random bits ([`new_token`]), so nobody can guess one from its
/// digest and a fast hash is enough; a slow password KDF (argon2, bcrypt) would
/// protect nothing more and cost its work on every call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The prefix naming the hash function in the file.
    const PREFIX: &'static str = "sha256:";

    /// The digest of `token` (surrounding whitespace ignored, as in the header).
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.trim().as_bytes()).into())
    }

    /// Reads `sha256:<64 lowercase hex digits>`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix(Self::PREFIX)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            // Two checked hex digits: always a byte.
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// Equality in a time that does not depend on where the digests differ.
    fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

/// A calling service and what it may do.
#[derive(Debug, Clone)]
struct Caller {
    name: String,
    /// `None` for a caller without a bearer token (one that will authenticate by
    /// its client certificate): no token matches it.
    token_hash: Option<TokenHash>,
    scopes: HashSet<String>,
}

impl Caller {
    fn may(&self, scope: &str) -> bool {
        self.scopes.contains("*") || self.scopes.contains(scope)
    }

    /// Whether this caller may call `path`.
    fn check(&self, path: &str) -> Result<(), Error> {
        match required_scope(path) {
            Some(scope) if self.may(scope) => Ok(()),
            Some(scope) => Err(Error::PermissionDenied {
                reason: "MISSING_SCOPE",
                message: format!("caller {} lacks the scope {scope}", self.name),
            }),
            None => Err(Error::PermissionDenied {
                reason: "UNKNOWN_METHOD",
                message: format!("no scope grants {path}"),
            }),
        }
    }
}

/// The known callers and the hashes of their tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    callers: Vec<Caller>,
}

impl Tokens {
    /// Reads a tokens file; refuses one that group or others may read or write:
    /// whoever can write it grants themselves every scope, and whoever can read
    /// it learns every caller, its scopes and the hashes to attack.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("failed to open the tokens file {}", path.display()))?;
        check_private(&file, path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("failed to read the tokens file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("failed to parse the tokens file {}", path.display()))
    }

    /// Parses the tokens file format (see the module documentation).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut callers: Vec<Caller> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, credential, scopes] = fields[..] else {
                anyhow::bail!("line {n}: expected `<caller> <sha256:hash or -> <scope>[,<scope>...]`");
            };
            let token_hash = match credential {
                "-" => None,
                hash if hash.starts_with(TokenHash::PREFIX) => {
                    Some(TokenHash::parse(hash).ok_or_else(|| {
                        anyhow::anyhow!(
                            "line {n}: the hash of {name} is not `sha256:` and 64 lowercase hex digits"
                        )
                    })?)
                }
                // The token itself is not repeated: the message goes to the log.
                _ => anyhow::bail!(
                    "line {n}: the credential of {name} is not a `sha256:` hash; the file stores \
                     token hashes, not tokens: replace it with the output of `loyalty token --hash` \
                     (which reads the token on stdin)"
                ),
            };
            if callers.iter().any(|c| c.name == name) {
                anyhow::bail!("line {n}: the caller {name} is named twice");
            }
            if let Some(hash) = token_hash
                && let Some(other) = callers.iter().find(|c| c.token_hash == Some(hash))
            {
                anyhow::bail!("line {n}: {name} has the token of {}", other.name);
            }
            callers.push(Caller {
                name: name.to_owned(),
                token_hash,
                scopes: scopes.split(',').map(str::to_owned).collect(),
            });
        }
        Ok(Self { callers })
    }

    /// The scopes of the caller named `name`, for callers that authenticate
    /// otherwise than by bearer token (a client certificate naming the caller).
    pub fn caller_named(&self, name: &str) -> Option<&HashSet<String>> {
        self.caller(name).map(|c| &c.scopes)
    }

    /// The caller holding `token`: its digest is compared with every stored one,
    /// each in constant time and without stopping at a match, so the time taken
    /// tells nothing about how close a guess came.
    fn caller_of(&self, token: &str) -> Option<&Caller> {
        let presented = TokenHash::of(token);
        self.callers.iter().fold(None, |found, caller| {
            let matches = caller.token_hash.is_some_and(|hash| hash.ct_eq(&presented));
            if matches { Some(caller) } else { found }
        })
    }

    /// Checks a request's authorization header against the scope `path` needs.
    fn authorize(&self, path: &str, header: Option<&http::HeaderValue>) -> Result<(), Error> {
        let token = header
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Error::Unauthenticated {
                reason: "MISSING_TOKEN",
                message: "send `authorization: Bearer <token>`".to_owned(),
            })?;
        let caller = self.caller_of(token).ok_or_else(|| Error::Unauthenticated {
            reason: "UNKNOWN_TOKEN",
            message: "the bearer token is not known".to_owned(),
        })?;
        crate::call::set_caller(&caller.name);
        caller.check(path)
    }

    /// The caller named `name`, and its scopes.
    fn caller(&self, name: &str) -> Option<&Caller> {
        self.callers.iter().find(|caller| caller.name == name)
    }

    /// Checks a call on a connection whose verified client certificate names
    /// `name` (`None`: it names no caller) against the scope `path` needs.
    fn authorize_certificate(&self, path: &str, name: Option<&str>) -> Result<(), Error> {
        let name = name.ok_or_else(|| Error::Unauthenticated {
            reason: "UNKNOWN_CALLER",
            message: "the client certificate names no caller (no URI or DNS SAN)".to_owned(),
        })?;
        let caller = self.caller(name).ok_or_else(|| Error::Unauthenticated {
            reason: "UNKNOWN_CALLER",
            message: format!("the client certificate names {name}, who is not a known caller"),
        })?;
        crate::call::set_caller(&caller.name);
        caller.check(path)
    }
}

/// Refuses a file that group or others may read or write.
#[cfg(unix)]
fn check_private(file: &std::fs::File, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file
        .metadata()
        .with_context(|| format!("failed to read the permissions of {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the tokens file {} is open to group or others (mode {:o}); make it private \
             with `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &std::fs::File, _path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// A token made by `loyalty token`, and the line of the tokens file granting it.
#[derive(Clone)]
pub struct NewToken {
    /// Given to the caller once; stored nowhere.
    pub token: String,
    /// `<caller> sha256:<hex> <scopes>`.
    pub line: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"<redacted>")
            .field("line", &self.line)
            .finish()
    }
}

/// A new token for `caller` with `scopes` (comma-separated): 32 bytes from the
/// operating system's random source, URL-safe base64 without padding.
pub fn new_token(caller: &str, scopes: &str) -> anyhow::Result<NewToken> {
    let mut bytes = [0; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let line = format!("{caller} {} {scopes}", TokenHash::of(&token));
    Tokens::parse(&line).context("the caller name and the scopes must be single words")?;
    Ok(NewToken { token, line })
}

/// The layer checking every call; without tokens it lets everything through.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    /// Checks calls against `tokens`; `None` turns authentication off.
    pub fn new(tokens: Option<Tokens>) -> Self {
        Self {
            tokens: tokens.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S, B, R> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            let path = request.uri().path();
            let client_cert = request
                .extensions()
                .get::<ConnInfo>()
                .and_then(|conn| conn.client_cert.as_ref());
            let authorized = match client_cert {
                _ if is_public(path) => Ok(()),
                Some(cert) => tokens.authorize_certificate(path, cert.caller.as_deref()),
                None => tokens.authorize(path, request.headers().get(http::header::AUTHORIZATION)),
            };
            if let Err(error) = authorized {
                // Logged (at INFO) by the conversion, like every refused call.
                return Either::Left(ready(Ok(Status::from(error).into_http())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokens file granting `t-orders` and `t-admin`, and a caller without a token.
    fn file() -> String {
        format!(
            "
            # caller  credential  scopes
            orders    {}  points:earn,points:reverse
            admin     {}  *   # everything
            billing   -   points:read
            ",
            TokenHash::of("t-orders"),
            TokenHash::of("t-admin"),
        )
    }

    fn header(token: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    /// A file in the temporary directory with `text` and `mode`.
    #[cfg(unix)]
    fn temp_file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("loyalty-{name}-{}.txt", std::process::id()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_token_hash_is_the_sha256_of_the_token_in_lowercase_hex() {
        let hash = TokenHash::of("abc");
        assert_eq!(
            hash.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenHash::parse(&hash.to_string()), Some(hash));
        assert_eq!(TokenHash::parse(&hash.to_string().to_uppercase()), None);
    }

    #[test]
    fn a_hashed_token_grants_only_its_scopes() {
        let tokens = Tokens::parse(&file()).unwrap();
        let earn = "/loyalty.v1.Points/RecordConfirmedOrder";
        let bonus = "/loyalty.v1.Points/GrantBonus";
        assert!(tokens.authorize(earn, Some(&header("t-orders"))).is_ok());
        let denied = tokens.authorize(bonus, Some(&header("t-orders"))).unwrap_err();
        assert_eq!(denied.reason(), "MISSING_SCOPE");
        assert!(tokens.authorize(bonus, Some(&header("t-admin"))).is_ok());
    }

    #[test]
    fn a_missing_or_unknown_token_is_unauthenticated() {
        let tokens = Tokens::parse(&file()).unwrap();
        let path = "/loyalty.v1.Points/GetBalance";
        assert_eq!(
            tokens.authorize(path, None).unwrap_err().reason(),
            "MISSING_TOKEN"
        );
        let hash = TokenHash::of("t-orders").to_string();
        for wrong in ["nope", "t-orders2", &hash] {
            assert_eq!(
                tokens.authorize(path, Some(&header(wrong))).unwrap_err().reason(),
                "UNKNOWN_TOKEN",
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_caller_without_a_token_matches_no_bearer_token() {
        let tokens = Tokens::parse(&file()).unwrap();
        let path = "/loyalty.v1.Points/GetBalance";
        for token in ["-", "billing", "", " "] {
            assert!(tokens.caller_of(token).is_none(), "{token:?}");
            assert!(tokens.authorize(path, Some(&header(token))).is_err(), "{token:?}");
        }
        let scopes = tokens.caller_named("billing").unwrap();
        assert!(scopes.contains("points:read"));
        assert!(tokens.caller_named("nobody").is_none());
    }

    #[test]
    fn a_clear_text_token_is_refused_with_its_line_and_the_way_to_hash_it() {
        let text = format!("ok {} *\nold t-secret-token points:read\n", TokenHash::of("t1"));
        let error = format!("{:#}", Tokens::parse(&text).unwrap_err());
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("loyalty token --hash"), "{error}");
        assert!(
            !error.contains("t-secret-token"),
            "the token is not repeated: {error}"
        );
    }

    #[test]
    fn a_malformed_hash_is_refused_with_its_line() {
        let good = TokenHash::of("t1").to_string();
        for bad in [
            "sha256:".to_owned(),
            good[..good.len() - 1].to_owned(),
            format!("{good}0"),
            good.to_uppercase().replace("SHA256", "sha256"),
            format!("sha256:{}", "g".repeat(64)),
        ] {
            let error = Tokens::parse(&format!("# callers\nx {bad} *\n")).unwrap_err();
            assert!(error.to_string().contains("line 2"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_certificate_gets_the_scopes_of_the_caller_it_names() {
        let tokens = Tokens::parse(&file()).unwrap();
        let earn = "/loyalty.v1.Points/RecordConfirmedOrder";
        let bonus = "/loyalty.v1.Points/GrantBonus";
        assert!(tokens.authorize_certificate(earn, Some("orders")).is_ok());
        let denied = tokens.authorize_certificate(bonus, Some("orders")).unwrap_err();
        assert_eq!(denied.reason(), "MISSING_SCOPE");
        for unknown in [Some("stranger"), None] {
            let error = tokens.authorize_certificate(earn, unknown).unwrap_err();
            assert_eq!(error.reason(), "UNKNOWN_CALLER");
        }
    }

    #[test]
    fn a_caller_name_or_a_hash_given_twice_is_refused() {
        let (one, two) = (TokenHash::of("t1"), TokenHash::of("t2"));
        let same_name = Tokens::parse(&format!("a {one} *\na {two} *\n")).unwrap_err();
        let same_name_no_token = Tokens::parse("a - *\na - *\n").unwrap_err();
        let same_hash = Tokens::parse(&format!("a {one} *\nb {one} *\n")).unwrap_err();
        assert!(same_name.to_string().contains("named twice"), "{same_name}");
        assert!(same_name_no_token.to_string().contains("named twice"));
        assert!(
            same_hash.to_string().contains("has the token of a"),
            "{same_hash}"
        );
        assert!(
            Tokens::parse("a - *\nb - *\n").is_ok(),
            "many callers may have no token"
        );
    }

    #[test]
    fn a_new_token_authenticates_against_its_printed_line() {
        let new = new_token("orders", "points:earn,points:read").unwrap();
        let other = new_token("orders", "points:earn").unwrap();

        let tokens = Tokens::parse(&new.line).unwrap();

        assert_eq!(new.token.len(), 43, "32 bytes in unpadded base64");
        assert_ne!(new.token, other.token);
        assert!(!new.line.contains(&new.token));
        assert!(!format!("{new:?}").contains(&new.token));
        let caller = tokens.caller_of(&new.token).unwrap();
        assert_eq!(caller.name, "orders");
        assert!(caller.may("points:read") && !caller.may("points:bonus"));
        assert!(tokens.caller_of(&other.token).is_none());
    }

    #[test]
    fn a_new_token_needs_one_word_callers_and_scopes() {
        assert!(new_token("two words", "*").is_err());
        assert!(new_token("orders", "points:earn, points:read").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_tokens_file_open_to_others_is_refused() {
        let text = file();
        let open = temp_file("tokens-open", &text, 0o644);
        let private = temp_file("tokens-private", &text, 0o600);

        let refused = Tokens::from_file(&open).unwrap_err().to_string();
        let read = Tokens::from_file(&private);

        assert!(
            refused.contains(&format!("chmod 600 {}", open.display())),
            "{refused}"
        );
        assert!(read.is_ok(), "{read:?}");
        std::fs::remove_file(open).ok();
        std::fs::remove_file(private).ok();
    }

    #[test]
    fn every_method_of_the_contract_has_a_scope() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "loyalty.v1")
            .flat_map(|f| &f.service)
            .flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("/loyalty.v1.{}/{}", s.name(), m.name()))
            })
            .collect();
        assert!(methods.len() > 30, "{methods:?}");
        for method in methods {
            assert!(is_known_method(&method), "{method} has no scope");
        }
    }

    #[test]
    fn an_unmapped_method_is_closed_even_to_a_wildcard() {
        let tokens = Tokens::parse(&file()).unwrap();
        let error = tokens
            .authorize("/loyalty.v1.Points/DropEverything", Some(&header("t-admin")))
            .unwrap_err();
        assert_eq!(error.reason(), "UNKNOWN_METHOD");
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let error = Tokens::parse("ok - *\nbroken-line\n").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
