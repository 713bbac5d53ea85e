//! Tests of the quota half through the public API: tracker rules, warnings, enforcement and a
//! real hyper-util client against a loopback server.

mod capture;
mod client;
mod enforce;
mod tracker;
mod warnings;
