//! Portcullis: the policy of an API gateway, run by Envoy as a proxy-wasm HTTP filter.
//!
//! Everything here but the `wasm` module is plain Rust, tested natively. The configuration is
//! parsed and prepared once ([`config`]); each request is then decided from its headers by
//! [`decision::decide`], and the proxy-wasm glue only carries data in and out.

pub mod apikey;
pub mod audit;
pub mod burst;
pub mod cache;
pub mod client_ip;
pub mod config;
pub mod decision;
pub mod guard;
pub mod inspect;
pub mod introspect;
pub mod ipset;
pub mod json_limits;
pub mod jwks;
pub mod jwt;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
pub mod mint;
pub mod pairs;
pub mod path;
pub mod ratelimit;
pub mod reply;
pub mod request;
pub mod schema;
pub mod shared_cache;

#[cfg(all(target_arch = "wasm32", feature = "proxy-wasm-glue"))]
mod wasm;
