//! portcullis-ratelimit: a rate-limit service for Envoy's `envoy.service.ratelimit.v3` protocol.
//!
//! It reads envoyproxy/ratelimit's YAML configuration ([`config`]), decides with a clock-aligned
//! fixed window or GCRA ([`algorithm`]) in memory or in Redis ([`store`]), answers gRPC
//! `ShouldRateLimit` ([`service`]) and serves `/metrics` and `/healthz` over HTTP ([`http`]).
//! [`server`] wires it together; `main.rs` is the command line.

pub mod algorithm;
pub mod clock;
pub mod config;
pub mod http;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod watch;

/// Envoy's generated RLS v3 types and gRPC stubs, re-exported so that clients (tests, the bench,
/// other crates) use the exact same types as the server.
pub mod proto {
    pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor,
    };
    pub use envoy_types::pb::envoy::service::ratelimit::v3::{
        RateLimitRequest, RateLimitResponse, rate_limit_response,
        rate_limit_service_client::RateLimitServiceClient,
        rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
    };
    pub use envoy_types::pb::google::protobuf::{Duration, UInt64Value};
}
