//! Criterion benchmarks of the retry queue.

fn main() {}
