//! The on-disk encoding of a [`QueuedRequest`].
//!
//! A record is one format-version byte followed by the item in postcard, a compact binary serde
//! format: integers are varints, strings and bytes are length-prefixed, and field names are not
//! stored. That keeps records small (a request is mostly its body) and decoding cheap, and the
//! version byte lets a later release read old records or dead-letter them with a clear message
//! instead of misreading them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::request::QueuedRequest;

/// The format version written by this release.
const FORMAT_VERSION: u8 = 1;

/// The reason a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("record is empty")]
    Empty,
    #[error("record has format version {0}, but this release reads only version 1")]
    UnknownVersion(u8),
    #[error("record is not valid postcard: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("record contains an invalid {0}")]
    InvalidField(&'static str),
}

#[derive(Serialize, Deserialize)]
struct RecordV1<'a> {
    id: [u8; 16],
    method: &'a str,
    uri: String,
    #[serde(borrow)]
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a [u8],
    enqueued_at: (u64, u32),
    original_error: &'a str,
    attempts: u32,
    last_error: Option<&'a str>,
    not_before: Option<(u64, u32)>,
    partition: &'a str,
}

/// Encodes an item into a record.
pub(crate) fn encode(item: &QueuedRequest) -> Result<Vec<u8>, postcard::Error> {
    let record = RecordV1 {
        id: item.id.into_bytes(),
        method: item.method.as_str(),
        uri: item.uri.to_string(),
        headers: item
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect(),
        body: &item.body,
        enqueued_at: to_parts(item.enqueued_at),
        original_error: &item.original_error,
        attempts: item.attempts,
        last_error: item.last_error.as_deref(),
        not_before: item.not_before.map(to_parts),
        partition: &item.partition,
    };
    let mut out = Vec::with_capacity(64 + item.body.len() + item.uri.to_string().len());
    out.push(FORMAT_VERSION);
    postcard::to_extend(&record, out)
}

/// Decodes a record into an item.
pub(crate) fn decode(bytes: &[u8]) -> Result<QueuedRequest, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let record: RecordV1<'_> = postcard::from_bytes(rest)?;
    let method = Method::from_bytes(record.method.as_bytes())
        .map_err(|_| DecodeError::InvalidField("method"))?;
    let uri: Uri = record
        .uri
        .parse()
        .map_err(|_| DecodeError::InvalidField("uri"))?;
    // A `HeaderMap` holds at most 32,768 entries and panics in `with_capacity` and `append`
    // beyond that, so a damaged record with more headers must fail here instead.
    let mut headers = HeaderMap::try_with_capacity(record.headers.len())
        .map_err(|_| DecodeError::InvalidField("header count"))?;
    for (name, value) in record.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| DecodeError::InvalidField("header name"))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| DecodeError::InvalidField("header value"))?;
        headers
            .try_append(name, value)
            .map_err(|_| DecodeError::InvalidField("header count"))?;
    }
    Ok(QueuedRequest {
        id: Uuid::from_bytes(record.id),
        method,
        uri,
        headers,
        body: Bytes::copy_from_slice(record.body),
        enqueued_at: from_parts(record.enqueued_at)
            .ok_or(DecodeError::InvalidField("enqueued_at"))?,
        original_error: record.original_error.to_owned(),
        attempts: record.attempts,
        last_error: record.last_error.map(str::to_owned),
        not_before: match record.not_before {
            Some(parts) => Some(from_parts(parts).ok_or(DecodeError::InvalidField("not_before"))?),
            None => None,
        },
        partition: record.partition.to_owned(),
    })
}

/// Splits a time into seconds and nanoseconds since the Unix epoch. Times before the epoch become
/// the epoch.
fn to_parts(time: SystemTime) -> (u64, u32) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (since_epoch.as_secs(), since_epoch.subsec_nanos())
}

/// Joins seconds and nanoseconds since the Unix epoch, or returns `None` for a time that
/// `SystemTime` cannot represent.
fn from_parts((secs, nanos): (u64, u32)) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos.min(999_999_999)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QueuedRequest {
        let request = http::Request::post("https://api.example.com/v1/chat?x=1")
            .header("content-type", "application/json")
            .header("x-trace", "a")
            .header("x-trace", "b")
            .body(Bytes::from_static(b"{\"prompt\":\"hi\"}"))
            .unwrap();
        let mut item = QueuedRequest::new(request, "connection reset")
            .with_partition("p1")
            .with_not_before(Some(UNIX_EPOCH + Duration::new(1_800_000_000, 5)));
        item.attempts = 3;
        item.last_error = Some("HTTP 503".into());
        item
    }

    #[test]
    fn record_roundtrip_keeps_every_field() {
        let item = sample();
        let decoded = decode(&encode(&item).unwrap()).unwrap();
        assert_eq!(decoded.id, item.id);
        assert_eq!(decoded.method, item.method);
        assert_eq!(decoded.uri, item.uri);
        assert_eq!(decoded.headers, item.headers);
        assert_eq!(decoded.body, item.body);
        assert_eq!(decoded.enqueued_at, item.enqueued_at);
        assert_eq!(decoded.original_error, item.original_error);
        assert_eq!(decoded.attempts, 3);
        assert_eq!(decoded.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(decoded.not_before, item.not_before);
        assert_eq!(decoded.partition, "p1");
    }

    #[test]
    fn record_starts_with_version_byte() {
        assert_eq!(encode(&sample()).unwrap()[0], FORMAT_VERSION);
    }

    #[test]
    fn record_unknown_version_rejected() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[0] = 9;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::UnknownVersion(9))
        ));
    }

    #[test]
    fn record_time_out_of_range_rejected() {
        let item = sample();
        let record = RecordV1 {
            id: item.id.into_bytes(),
            method: "GET",
            uri: "http://127.0.0.1/".into(),
            headers: Vec::new(),
            body: b"",
            enqueued_at: (u64::MAX, 0),
            original_error: "",
            attempts: 0,
            last_error: None,
            not_before: None,
            partition: "",
        };
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend(postcard::to_allocvec(&record).unwrap());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::InvalidField("enqueued_at"))
        ));
    }

    #[test]
    fn record_truncated_rejected() {
        let bytes = encode(&sample()).unwrap();
        assert!(decode(&bytes[..bytes.len() / 2]).is_err());
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
    }

    proptest::proptest! {
        #[test]
        fn record_decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn record_decode_of_mutated_record_never_panics(index in 0usize..4096, value in proptest::prelude::any::<u8>()) {
            let mut bytes = encode(&sample()).unwrap();
            let position = index % bytes.len();
            bytes[position] = value;
            let _ = decode(&bytes);
        }
    }
}
