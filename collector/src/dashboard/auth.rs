//! Who may use the dashboard. With tokens configured, every page and API call
//! needs one: `Authorization: Bearer TOKEN`, or the `hb_token` cookie the login
//! form sets (HttpOnly, SameSite=Strict, so other sites cannot use it). Without
//! tokens the dashboard is read-only (and the configuration allows it on
//! loopback addresses only).

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, StatusCode};
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

/// The token a request presents, from its `Authorization` header or cookie.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(bearer) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v)
}

/// Middleware: lets a request through with its [`Operator`], or answers 401 (API)
/// or redirects to the login form (pages).
pub async fn require(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    if !state.tokens.required() {
        request.extensions_mut().insert(Operator(None));
        return next.run(request).await;
    }
    let name = presented(request.headers()).and_then(|t| state.tokens.name_of(t));
    match name {
        Some(name) => {
            request
                .extensions_mut()
                .insert(Operator(Some(name.to_owned())));
            next.run(request).await
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
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
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
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict");
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
        assert_eq!(presented(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(presented(&h), Some("xyz"));
        assert_eq!(presented(&HeaderMap::new()), None);
    }
}
