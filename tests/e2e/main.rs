//! End-to-end tests: real processes on real pipes.
