//! Quota tracking from rate-limit response headers.
