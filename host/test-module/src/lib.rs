//! A proxy-wasm 0.2.5 module for portcullis-host's ABI tests. One module, many behaviours: the
//! plugin configuration `{"mode": "<mode>"}` picks what the HTTP context does, so ABI calls the
//! real filter never makes can be tested against the host. Results are reported as log lines
//! starting with `result:` (the tests capture the host's log sink).
//!
//! Modes: `pause_request_body`, `local_reply_body`, `http_call`, `grpc_call`, `tick`,
//! `shared_cas`, `metrics`, `trap`, `properties`, `queue`, `reject` (on_configure → false),
//! `source_address` (copies `source.address` / `source.port` into request headers
//! `x-source-address` / `x-source-port`), `cas_counter` (each request increments the shared
//! counter `cas_counter` with CAS retries and reports it in `x-cas-counter`, the VM's number in
//! `x-vm` and the retries in `x-cas-mismatches`; `x-cas-read` only reads it), `route_cache`
//! (calls the `clear_route_cache` foreign function and an unknown one, edits nothing);
//! anything else passes every callback through. `{"cluster": "..."}` retargets the
//! callouts of `http_call` / `grpc_call` (defaults `auth_cluster` / `grpc_cluster`); request
//! headers `x-grpc-method` (gRPC method, default `Check`) and `x-echo-delay-ms` (copied into the
//! HTTP callout) let the end-to-end tests steer them. The WASI environment variable
//! `PORTCULLIS_TEST_INIT=restricted` makes `_initialize` call a restricted hostcall.
//!
//! Only built for wasm32: natively the crate is empty so `cargo clippy --workspace` stays quiet.

#[cfg(target_arch = "wasm32")]
mod module;
