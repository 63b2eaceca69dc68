//! One integration test binary (links once). Each module is one behaviour, tested
//! through real sockets: a real origin written for the test, the real router or binary.

mod support;

mod cli;
mod coalescing;
mod forwarding;
mod keys;
mod stale;
mod storability;
