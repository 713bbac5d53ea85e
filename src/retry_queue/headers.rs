//! Secret and header rules applied before an item is persisted.

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use uuid::Uuid;

/// The `Idempotency-Key` request header.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Headers that carry credentials and are never persisted unless opted in, besides
/// `authorization`, `proxy-authorization` and `cookie`.
///
/// `x-api-key` and `api-key` are the generic API key headers (Anthropic, Azure OpenAI),
/// `x-shopify-access-token` is the Shopify Admin API token, `private-token` and `job-token` are
/// GitLab tokens, `x-goog-api-key` is a Google API key, and `x-auth-token` and `x-access-token`
/// are common session and access token headers.
pub(crate) const SECRET_HEADERS: [&str; 8] = [
    "x-api-key",
    "api-key",
    "x-shopify-access-token",
    "private-token",
    "job-token",
    "x-goog-api-key",
    "x-auth-token",
    "x-access-token",
];

/// Returns whether a header must be dropped before persisting.
fn is_secret(name: &HeaderName, value: &HeaderValue) -> bool {
    value.is_sensitive()
        || name == AUTHORIZATION
        || name == PROXY_AUTHORIZATION
        || name == COOKIE
        || SECRET_HEADERS.contains(&name.as_str())
}

/// Drops every secret header that is not in `keep`, and returns how many values were dropped.
pub(crate) fn strip_secrets(headers: &mut HeaderMap, keep: &[HeaderName]) -> usize {
    let secret_names: Vec<HeaderName> = headers
        .iter()
        .filter(|(name, value)| is_secret(name, value) && !keep.contains(name))
        .map(|(name, _)| name.clone())
        .collect();
    let mut dropped = 0;
    for name in secret_names {
        if let http::header::Entry::Occupied(entry) = headers.entry(name) {
            dropped += entry.remove_entry_mult().1.count();
        }
    }
    dropped
}

/// Removes the user information (`user:password@`) from the authority of `uri`, and returns
/// whether there was any.
pub(crate) fn strip_userinfo(uri: &mut Uri) -> bool {
    let Some(host) = uri
        .authority()
        .and_then(|authority| authority.as_str().rsplit_once('@'))
        .map(|(_, host)| host.to_owned())
    else {
        return false;
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.authority = Authority::try_from(host.as_str()).ok();
    match Uri::from_parts(parts) {
        Ok(stripped) => *uri = stripped,
        // Unreachable for a URI that parsed with this authority. An empty URI keeps no secret.
        Err(_) => tracing::debug!("dropped a URI whose authority could not be rebuilt"),
    }
    true
}

/// Sets `Idempotency-Key` to the item id unless the request already has one.
pub(crate) fn ensure_idempotency_key(headers: &mut HeaderMap, id: Uuid) {
    if headers.contains_key(IDEMPOTENCY_KEY) {
        return;
    }
    let mut buffer = Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buffer);
    if let Ok(value) = HeaderValue::from_str(text) {
        headers.insert(IDEMPOTENCY_KEY, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_secrets_drops_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic t"));
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("b=2"));
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        headers.insert("api-key", HeaderValue::from_static("k"));
        let mut marked = HeaderValue::from_static("s");
        marked.set_sensitive(true);
        headers.insert("x-custom-token", marked);
        headers.insert("content-type", HeaderValue::from_static("text/plain"));

        assert_eq!(strip_secrets(&mut headers, &[]), 7);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("content-type"));
    }

    #[test]
    fn strip_secrets_keeps_opted_in() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        headers.insert(COOKIE, HeaderValue::from_static("a=1"));
        let keep = [HeaderName::from_static("x-api-key")];
        assert_eq!(strip_secrets(&mut headers, &keep), 1);
        assert_eq!(headers["x-api-key"], "k");
    }

    #[test]
    fn strip_userinfo_keeps_host_port_and_path() {
        let mut uri: Uri = "https://user:secret@api.example.com:8443/v1/items?page=2"
            .parse()
            .unwrap();
        assert!(strip_userinfo(&mut uri));
        assert_eq!(uri, "https://api.example.com:8443/v1/items?page=2");
    }

    #[test]
    fn strip_userinfo_leaves_plain_uri() {
        let mut uri: Uri = "http://127.0.0.1:9/v1".parse().unwrap();
        assert!(!strip_userinfo(&mut uri));
        assert_eq!(uri, "http://127.0.0.1:9/v1");
    }

    #[test]
    fn idempotency_key_kept_when_present() {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("mine"));
        ensure_idempotency_key(&mut headers, Uuid::nil());
        assert_eq!(headers[IDEMPOTENCY_KEY], "mine");
    }

    #[test]
    fn idempotency_key_set_to_id() {
        let mut headers = HeaderMap::new();
        let id = Uuid::new_v4();
        ensure_idempotency_key(&mut headers, id);
        assert_eq!(headers[IDEMPOTENCY_KEY], id.to_string().as_str());
    }
}
