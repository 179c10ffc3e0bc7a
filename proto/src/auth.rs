//! Bearer tokens on the wire: the client side adds `authorization: Bearer <token>` to every
//! request, the server side refuses requests without the token it expects.

use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Adds a bearer token (if any) to every outgoing request.
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

/// Says only whether a token is sent: the token itself stays out of logs and panics.
impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BearerToken")
            .field(&self.0.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl BearerToken {
    /// A token to send; `None` sends none. Fails on an empty token and on characters a header
    /// cannot carry.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token {
            None => Ok(BearerToken(None)),
            Some(token) if token.trim().is_empty() => Err("the token is empty".to_string()),
            Some(token) => MetadataValue::try_from(format!("Bearer {token}"))
                .map(|mut value| {
                    // Marked sensitive, so tonic and its tracing never print the header's value.
                    value.set_sensitive(true);
                    BearerToken(Some(value))
                })
                .map_err(|_| "the token must be printable ASCII".to_string()),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Checks that a coordinator URL and a CA certificate go together: with `--ca-cert` and an
/// `http://` URL the certificate would be unused and everything, the token included, would
/// travel in plaintext.
pub fn check_transport(url: &str, has_ca_cert: bool) -> Result<(), String> {
    let plaintext = url
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("http"));
    if plaintext && has_ca_cert {
        return Err(format!(
            "--ca-cert needs an https:// coordinator URL, not {url}: over http:// nothing is encrypted, the token included"
        ));
    }
    Ok(())
}

/// Lets through only requests carrying the expected bearer token, or one of the tokens bound
/// to a single caller (any request when none is expected). `who` names the callers in the
/// refusal: `worker` or `client`.
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Vec<u8>>,
    /// Tokens each bound to one caller: `(caller, "Bearer <token>")`.
    bound: Arc<Vec<(String, Vec<u8>)>>,
    who: &'static str,
}

/// Who a request's token belongs to, when it is a token bound to one caller: put in the
/// request's extensions by [`RequireToken`], so the service can hold the caller to its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenCaller(pub String);

impl std::fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireToken")
            .field("who", &self.who)
            .field("required", &(self.expected.is_some() || !self.bound.is_empty()))
            .field("bound", &self.bound.len())
            .finish()
    }
}

impl RequireToken {
    pub fn new(expected: Option<&str>, who: &'static str) -> Self {
        RequireToken {
            expected: expected.map(|t| format!("Bearer {t}").into_bytes()),
            bound: Arc::new(Vec::new()),
            who,
        }
    }

    /// Also lets through each `(caller, token)`'s token, marking the request as that caller's
    /// ([`ProvenCaller`]).
    pub fn with_bound_tokens<'a>(mut self, tokens: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.bound = Arc::new(
            tokens
                .into_iter()
                .map(|(caller, token)| (caller.to_string(), format!("Bearer {token}").into_bytes()))
                .collect(),
        );
        self
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.expected.is_none() && self.bound.is_empty() {
            return Ok(request);
        }
        let Some(given) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(format!(
                "a {} token is required (authorization: Bearer ...)",
                self.who
            )));
        };
        let given = given.as_bytes();
        // Every bound token is compared, so timing does not tell which caller came close.
        let proven = self
            .bound
            .iter()
            .filter(|(_, expected)| constant_time_eq(given, expected))
            .fold(None, |found, (caller, _)| found.or(Some(caller.clone())));
        let shared = self.expected.as_ref().is_some_and(|e| constant_time_eq(given, e));
        match proven {
            Some(caller) => {
                request.extensions_mut().insert(ProvenCaller(caller));
                Ok(request)
            }
            None if shared => Ok(request),
            None => Err(Status::unauthenticated(format!("wrong {} token", self.who))),
        }
    }
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expected_token_passes() {
        let mut require = RequireToken::new(Some("s3cret"), "worker");
        let mut send = BearerToken::new(Some("s3cret")).expect("token");
        assert!(require.call(send.call(Request::new(())).expect("send")).is_ok());
        let mut wrong = BearerToken::new(Some("guess")).expect("token");
        let refused = require
            .call(wrong.call(Request::new(())).expect("send"))
            .expect_err("wrong");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), "wrong worker token");
        let missing = require.call(Request::new(())).expect_err("missing");
        assert!(missing.message().contains("a worker token is required"));
        assert!(RequireToken::new(None, "client").call(Request::new(())).is_ok());
        assert!(BearerToken::new(Some("bad\ntoken")).is_err());
        assert_eq!(BearerToken::new(Some(" ")).unwrap_err(), "the token is empty");
    }

    #[test]
    fn a_bound_token_lets_its_caller_through_and_names_it() {
        let mut require =
            RequireToken::new(Some("shared"), "worker").with_bound_tokens([("w1", "t-one"), ("w2", "t-two")]);
        let through = |require: &mut RequireToken, token: &str| {
            require.call(
                BearerToken::new(Some(token))
                    .expect("token")
                    .call(Request::new(()))
                    .expect("send"),
            )
        };
        let two = through(&mut require, "t-two").expect("bound token");
        assert_eq!(two.extensions().get::<ProvenCaller>(), Some(&ProvenCaller("w2".into())));
        let shared = through(&mut require, "shared").expect("shared token");
        assert_eq!(
            shared.extensions().get::<ProvenCaller>(),
            None,
            "the shared token proves no name"
        );
        assert_eq!(
            through(&mut require, "t-three").expect_err("unknown").code(),
            tonic::Code::Unauthenticated
        );
        let mut bound_only = RequireToken::new(None, "worker").with_bound_tokens([("w1", "t-one")]);
        assert!(through(&mut bound_only, "t-one").is_ok());
        assert!(through(&mut bound_only, "shared").is_err());
        assert!(
            bound_only.call(Request::new(())).is_err(),
            "a token is required once any is bound"
        );
    }

    #[test]
    fn a_ca_certificate_goes_only_with_https() {
        assert!(check_transport("http://coordinator:50051", true).is_err());
        assert!(check_transport("HTTP://coordinator:50051", true).is_err());
        assert!(check_transport("https://coordinator:50051", true).is_ok());
        assert!(check_transport("http://coordinator:50051", false).is_ok());
    }

    #[test]
    fn debug_output_never_carries_a_token() {
        let send = BearerToken::new(Some("s3cret-token")).expect("token");
        let shown = format!("{send:?} {:?}", RequireToken::new(Some("s3cret-token"), "worker"));
        assert!(!shown.contains("s3cret-token"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("required: true"),
            "{shown}"
        );
        assert_eq!(
            format!("{:?}", BearerToken::new(None).expect("none")),
            "BearerToken(None)"
        );
    }
}
