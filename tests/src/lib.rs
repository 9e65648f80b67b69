//! Support for the end-to-end suites of Portcullis in **real Envoy** (the suites are in
//! `tests/tests/`).
//!
//! Everything a suite needs to put the filter in front of real traffic on loopback:
//!
//! - [`artifacts`]: which Envoy binary runs (`ENVOY`, else the pinned one `make envoy-setup`
//!   installs) and which filter module it loads (`PORTCULLIS_WASM`, else the release build);
//! - [`envoy`]: an Envoy process on a bootstrap, its log captured line by line, ready when its
//!   admin endpoint says so, killed on drop;
//! - [`bootstrap`]: the pieces of an Envoy bootstrap (the wasm filter, listeners, clusters);
//! - [`client`]: a raw HTTP/1.1 client, one connection per request;
//! - [`server`], [`fault`], [`echo`], [`idp`]: HTTP/1.1 upstreams on loopback — a small server
//!   whose answers can be broken on purpose (reset mid-body, reset before headers, garbage, a
//!   huge body, too slow, 500), an echo service, and a test identity provider (ES256 keys,
//!   JWKS, OpenID discovery, token introspection) built on it;
//! - [`rls_fault`]: a fake rate-limit service over HTTP/2 (gRPC) whose answers can be broken;
//! - [`rls`]: the real rate-limit service, `portcullis-ratelimit`, started in this process;
//! - [`net`]: loopback ports and temporary folders.
//!
//! Rules every piece keeps: only 127.0.0.1, ports the kernel picks (Envoy's too: listeners
//! bind port 0 and are looked up through the admin endpoint), every wait bounded by a
//! deadline, every loop bounded, everything started stopped on drop. Functions return errors
//! rather than panic; the suites decide what is a failure.

pub mod artifacts;
pub mod bootstrap;
pub mod client;
pub mod echo;
pub mod envoy;
pub mod fault;
pub mod idp;
pub mod net;
pub mod rls;
pub mod rls_fault;
pub mod server;

pub use client::{Resp, get, get_with_bearer, request, request_within};
pub use envoy::Envoy;
pub use fault::Fault;
pub use idp::Idp;
pub use rls::RateLimitService;
pub use rls_fault::{FakeRls, RlsAnswer};
pub use server::TestServer;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
