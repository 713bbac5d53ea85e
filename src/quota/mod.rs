//! Quota tracking from rate-limit response headers.

pub(crate) mod headers;
