//! Benchmarks of the quota layer.
fn main() {}
