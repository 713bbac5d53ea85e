//! Header rules applied before an item is persisted.

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

/// The `Idempotency-Key` request header.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Headers that carry credentials and are never persisted unless opted in.
const SECRET_HEADERS: [&str; 2] = ["x-api-key", "api-key"];

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
