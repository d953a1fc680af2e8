//! Caller authentication: bearer tokens with scopes per calling service.
//!
//! A tower layer in front of every loyalty service reads `authorization: Bearer
//! <token>`, finds the caller, and checks the scope the called method needs
//! ([`required_scope`]). A method missing from that table is refused, so a new
//! RPC is closed until someone decides its scope. Health and reflection are open:
//! load balancers and `grpcurl` use them without a token.
//!
//! Tokens file: one caller per line, `<caller> <token> <scope>[,<scope>...]`;
//! `#` starts a comment. The scope `*` grants everything.
//!
//! On a TLS connection where the client sent a verified certificate
//! ([`crate::tls`]), the certificate names the caller instead, which gets the
//! scopes of its line by name; a token sent as well is not looked at (the
//! certificate wins).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use futures::future::{Either, Ready, ready};
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

/// A calling service and what it may do.
#[derive(Debug, Clone)]
struct Caller {
    name: String,
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

/// The known tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    callers: HashMap<String, Caller>,
}

impl Tokens {
    /// Reads a tokens file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the tokens file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("failed to parse the tokens file {}", path.display()))
    }

    /// Parses the tokens file format.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut callers = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, token, scopes] = fields[..] else {
                anyhow::bail!("line {}: expected `<caller> <token> <scope>[,<scope>...]`", n + 1);
            };
            let scopes = scopes.split(',').map(str::to_owned).collect();
            let caller = Caller {
                name: name.to_owned(),
                scopes,
            };
            if callers.insert(token.to_owned(), caller).is_some() {
                anyhow::bail!("line {}: the token of {name} is used twice", n + 1);
            }
        }
        Ok(Self { callers })
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
        let caller = self
            .callers
            .get(token.trim())
            .ok_or_else(|| Error::Unauthenticated {
                reason: "UNKNOWN_TOKEN",
                message: "the bearer token is not known".to_owned(),
            })?;
        crate::call::set_caller(&caller.name);
        caller.check(path)
    }

    /// The caller named `name`, and its scopes.
    fn scopes_of_caller(&self, name: &str) -> Option<&Caller> {
        self.callers.values().find(|caller| caller.name == name)
    }

    /// Checks a call on a connection whose verified client certificate names
    /// `name` (`None`: it names no caller) against the scope `path` needs.
    fn authorize_certificate(&self, path: &str, name: Option<&str>) -> Result<(), Error> {
        let name = name.ok_or_else(|| Error::Unauthenticated {
            reason: "UNKNOWN_CALLER",
            message: "the client certificate names no caller (no URI or DNS SAN)".to_owned(),
        })?;
        let caller = self
            .scopes_of_caller(name)
            .ok_or_else(|| Error::Unauthenticated {
                reason: "UNKNOWN_CALLER",
                message: format!("the client certificate names {name}, who is not a known caller"),
            })?;
        crate::call::set_caller(&caller.name);
        caller.check(path)
    }
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

    const FILE: &str = "
        # caller  token     scopes
        orders    t-orders  points:earn,points:reverse
        admin     t-admin   *   # everything
    ";

    fn header(token: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn a_token_grants_only_its_scopes() {
        let tokens = Tokens::parse(FILE).unwrap();
        let earn = "/loyalty.v1.Points/RecordConfirmedOrder";
        let bonus = "/loyalty.v1.Points/GrantBonus";
        assert!(tokens.authorize(earn, Some(&header("t-orders"))).is_ok());
        let denied = tokens.authorize(bonus, Some(&header("t-orders"))).unwrap_err();
        assert_eq!(denied.reason(), "MISSING_SCOPE");
        assert!(tokens.authorize(bonus, Some(&header("t-admin"))).is_ok());
    }

    #[test]
    fn a_missing_or_unknown_token_is_unauthenticated() {
        let tokens = Tokens::parse(FILE).unwrap();
        let path = "/loyalty.v1.Points/GetBalance";
        assert_eq!(
            tokens.authorize(path, None).unwrap_err().reason(),
            "MISSING_TOKEN"
        );
        assert_eq!(
            tokens
                .authorize(path, Some(&header("nope")))
                .unwrap_err()
                .reason(),
            "UNKNOWN_TOKEN"
        );
    }

    #[test]
    fn a_certificate_gets_the_scopes_of_the_caller_it_names() {
        let tokens = Tokens::parse(FILE).unwrap();
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
        let tokens = Tokens::parse(FILE).unwrap();
        let error = tokens
            .authorize("/loyalty.v1.Points/DropEverything", Some(&header("t-admin")))
            .unwrap_err();
        assert_eq!(error.reason(), "UNKNOWN_METHOD");
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let error = Tokens::parse("ok t1 *\nbroken-line\n").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
