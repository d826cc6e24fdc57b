//! Who may use the dashboard. With tokens configured, every page and API call
//! needs one: `Authorization: Bearer TOKEN`, or the `hb_token` cookie the login
//! form sets (HttpOnly, SameSite=Strict). A request that changes something and
//! relies on the cookie must also carry the header `X-HB-Request` (the pages'
//! scripts send it; a form or a page of another origin cannot), so that another
//! page on the same site cannot act under the operator's name. Pages may not be
//! framed. Without tokens the dashboard is read-only (and the configuration
//! allows it on loopback addresses only).

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;

use super::State as Shared;

const COOKIE_NAME: &str = "hb_token";

/// Token → name.
pub struct Tokens(BTreeMap<String, String>);

/// Who made a request: `None` when the dashboard has no tokens (read-only).
#[derive(Debug, Clone)]
pub struct Operator(pub Option<String>);

impl Tokens {
    pub fn new(tokens: BTreeMap<String, String>) -> Self {
        Self(tokens)
    }

    fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// The name whose token this is. Compares every configured token in full, so
    /// that timing tells nothing of a token's characters.
    fn name_of(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (token, name) in &self.0 {
            if constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The header a cookie-authenticated request that changes something must carry.
pub const REQUEST_HEADER: &str = "x-hb-request";

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Bearer,
    Cookie,
}

/// The token a request presents, from its `Authorization` header or cookie.
fn presented(headers: &HeaderMap) -> Option<(&str, Via)> {
    if let Some(bearer) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some((bearer.trim(), Via::Bearer));
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| (v, Via::Cookie))
}

/// Pages and API answers may not be framed or sniffed.
fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Middleware: lets a request through with its [`Operator`], or answers 401 (API)
/// or redirects to the login form (pages).
pub async fn require(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    if !state.tokens.required() {
        request.extensions_mut().insert(Operator(None));
        return harden(next.run(request).await);
    }
    let found = presented(request.headers())
        .and_then(|(t, via)| state.tokens.name_of(t).map(|name| (name.to_owned(), via)));
    match found {
        Some((_, Via::Cookie))
            if request.method() != Method::GET
                && request.method() != Method::HEAD
                && !request.headers().contains_key(REQUEST_HEADER) =>
        {
            (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({"error": "a change by cookie needs the X-HB-Request header"})),
            )
                .into_response()
        }
        Some((name, _)) => {
            request.extensions_mut().insert(Operator(Some(name)));
            harden(next.run(request).await)
        }
        None if request.uri().path().starts_with("/api/") => (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({"error": "a dashboard token is required"})),
        )
            .into_response(),
        None => (StatusCode::SEE_OTHER, [(LOCATION, "/login")]).into_response(),
    }
}

/// `GET /api/whoami`: the operator's name, and whether they may acknowledge.
pub async fn whoami(axum::Extension(op): axum::Extension<Operator>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"name": op.0, "can_acknowledge": op.0.is_some()}))
}

/// `GET /login`.
pub async fn login_page() -> Response {
    page(StatusCode::OK, "")
}

fn page(status: StatusCode, message: &str) -> Response {
    let html = super::assets::LOGIN_HTML.replace("{{message}}", message);
    harden((status, [(CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: a valid token sets the cookie and goes to the fleet page.
pub async fn login(State(state): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    if state.tokens.name_of(token).is_none() {
        return page(
            StatusCode::UNAUTHORIZED,
            "<p class=\"error\">That token is not valid.</p>",
        );
    }
    let secure = if state.secure_cookie { "; Secure" } else { "" };
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    (
        StatusCode::SEE_OTHER,
        [(SET_COOKIE, cookie), (LOCATION, "/".to_owned())],
    )
        .into_response()
}

/// `POST /logout`: forgets the cookie.
pub async fn logout() -> Response {
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [(SET_COOKIE, cookie), (LOCATION, "/login".to_owned())],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(BTreeMap::from([
            ("aaaaaaaaaaaaaaaaaaaa".to_owned(), "alice".to_owned()),
            ("bbbbbbbbbbbbbbbbbbbb".to_owned(), "bob".to_owned()),
        ]))
    }

    #[test]
    fn a_token_names_its_holder_and_anything_else_names_nobody() {
        let t = tokens();
        assert_eq!(t.name_of("bbbbbbbbbbbbbbbbbbbb"), Some("bob"));
        assert_eq!(t.name_of("bbbbbbbbbbbbbbbbbbb"), None);
        assert_eq!(t.name_of(""), None);
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "theme=dark; hb_token=abc; x=y".parse().unwrap());
        assert_eq!(presented(&h), Some(("abc", Via::Cookie)));
        h.insert(AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(presented(&h), Some(("xyz", Via::Bearer)));
        assert_eq!(presented(&HeaderMap::new()), None);
    }
}
