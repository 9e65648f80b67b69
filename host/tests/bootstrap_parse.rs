//! A realistic Envoy bootstrap parses to the expected structs; unimplemented fields are each
//! warned once with their path; type errors name their path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use portcullis_host::bootstrap::{
    self, BootstrapError, CodecType, DataSource, DiscoveryType, FailurePolicy, HttpFilter,
    LbPolicy, RouteAction, SocketAddress, TlsVersion,
};
use portcullis_host::stats::TagSpecifier;

const REALISTIC: &str = r#"
node:
  id: portcullis
  cluster: gateway
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
stats_config:
  stats_tags:
    - tag_name: reporter
      regex: "(reporter=\\.=(.*?);\\.;)"
    - tag_name: response_code
      regex: "(response_code=\\.=(.*?);\\.;)"
static_resources:
  listeners:
    - name: https
      address:
        socket_address: { address: 0.0.0.0, port_value: 8443 }
      per_connection_buffer_limit_bytes: 32768
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              common_tls_context:
                tls_params:
                  tls_minimum_protocol_version: TLSv1_2
                alpn_protocols: ["h2", "http/1.1"]
                tls_certificates:
                  - certificate_chain: { filename: certs/server.crt }
                    private_key: { filename: /etc/certs/server.key }
          filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress_https
                codec_type: AUTO
                use_remote_address: true
                xff_num_trusted_hops: 1
                route_config:
                  name: local
                  virtual_hosts:
                    - name: api
                      domains: ["api.example.com", "*.api.example.com"]
                      routes:
                        - name: grpc
                          match:
                            prefix: /authz.
                            headers:
                              - name: content-type
                                string_match: { prefix: application/grpc }
                          route: { cluster: authz_grpc, timeout: 0.25s }
                        - match: { safe_regex: { google_re2: {}, regex: "/v[0-9]+/.*" } }
                          route: { cluster: backend_tls, prefix_rewrite: /, timeout: 0s }
                    - name: default
                      domains: ["*"]
                      routes:
                        - match: { path: /healthz }
                          direct_response: { status: 200, body: { inline_string: ok } }
                        - match: { prefix: / }
                          route: { cluster: backend_tls }
                http_filters:
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: portcullis
                        root_id: portcullis_root
                        fail_open: false
                        vm_config:
                          vm_id: portcullis_vm
                          runtime: envoy.wasm.runtime.v8
                          code:
                            local: { filename: ../target/portcullis.wasm }
                          environment_variables:
                            key_values: { B: "2", A: "1" }
                            host_env_keys: [HOME]
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: '{"mode":"enforce"}'
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
    - name: http
      address:
        socket_address: { address: 127.0.0.1, portValue: "8080" }
      filter_chains:
        - filters:
            - name: envoy.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress_http
                codec_type: HTTP1
                generate_request_id: false
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: { prefix: / }
                          route: { cluster: backend_tls }
                http_filters:
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        failure_policy: FAIL_OPEN
                        vm_config:
                          code: { local: { inline_bytes: AGFzbQEAAAA= } }
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.BytesValue
                          value: aGk=
                  - name: envoy.router
  clusters:
    - name: authz_grpc
      type: STRICT_DNS
      lb_policy: LEAST_REQUEST
      connect_timeout: 0.25s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}
      load_assignment:
        cluster_name: authz_grpc
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: authz.internal, port_value: 50051 }
              - endpoint:
                  address:
                    socket_address: { address: authz2.internal, port_value: 50051 }
    - name: backend_tls
      connect_timeout: { seconds: 2, nanos: 500000000 }
      type: STATIC
      load_assignment:
        cluster_name: backend_tls
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: 127.0.0.1, port_value: 9443 }
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: backend.example.com
          common_tls_context:
            validation_context:
              trusted_ca: { filename: certs/ca.crt }
            tls_certificates:
              - certificate_chain: { filename: certs/client.crt }
                private_key: { filename: certs/client.key }
"#;

fn base() -> PathBuf {
    PathBuf::from("/cfg")
}

#[test]
fn realistic_bootstrap_parses() {
    let b = bootstrap::parse(REALISTIC, base()).unwrap();
    assert_eq!(
        b.warnings,
        vec!["node: not implemented by portcullis-host (ignored)".to_string()]
    );
    assert_eq!(
        b.admin,
        Some(SocketAddress {
            address: "127.0.0.1".into(),
            port: 9901
        })
    );
    assert_eq!(
        b.stats_tags,
        vec![
            TagSpecifier {
                tag_name: "reporter".into(),
                regex: r"(reporter=\.=(.*?);\.;)".into()
            },
            TagSpecifier {
                tag_name: "response_code".into(),
                regex: r"(response_code=\.=(.*?);\.;)".into()
            },
        ]
    );
    // Envoy's default tag extractors apply unless the bootstrap turns them off.
    assert!(b.use_all_default_tags);
    let off = "stats_config: { use_all_default_tags: false }\nstatic_resources: {}\n";
    assert!(!bootstrap::parse(off, base()).unwrap().use_all_default_tags);

    assert_eq!(b.listeners.len(), 2);
    let https = &b.listeners[0];
    assert_eq!(https.name, "https");
    assert_eq!(https.address.port, 8443);
    assert_eq!(https.per_connection_buffer_limit_bytes, 32768);
    let chain = &https.filter_chains[0];
    let tls = chain.tls.as_ref().unwrap();
    assert_eq!(
        tls.certificates[0].certificate_chain,
        DataSource::File("/cfg/certs/server.crt".into())
    );
    assert_eq!(
        tls.certificates[0].private_key,
        DataSource::File("/etc/certs/server.key".into())
    );
    assert_eq!(tls.params.min, TlsVersion::V1_2);
    assert_eq!(tls.params.max, TlsVersion::Auto);
    assert_eq!(tls.alpn_protocols, vec!["h2", "http/1.1"]);
    assert!(!tls.require_client_certificate);

    let hcm = &chain.http;
    assert_eq!(hcm.stat_prefix, "ingress_https");
    assert_eq!(hcm.codec_type, CodecType::Auto);
    assert!(hcm.use_remote_address);
    assert_eq!(hcm.xff_num_trusted_hops, 1);
    assert!(hcm.generate_request_id);
    let rc = &hcm.route_config;
    assert_eq!(rc.name, "local");
    assert_eq!(
        rc.virtual_hosts[0].domains,
        vec!["api.example.com", "*.api.example.com"]
    );
    let grpc = &rc.virtual_hosts[0].routes[0];
    assert_eq!(grpc.name, "grpc");
    assert_eq!(
        grpc.action,
        RouteAction::Forward {
            cluster: "authz_grpc".into(),
            prefix_rewrite: None,
            timeout: Some(Duration::from_millis(250))
        }
    );
    assert_eq!(
        rc.virtual_hosts[0].routes[1].action,
        RouteAction::Forward {
            cluster: "backend_tls".into(),
            prefix_rewrite: Some("/".into()),
            timeout: None
        }
    );
    match &rc.virtual_hosts[1].routes[0].action {
        RouteAction::Direct(d) => {
            assert_eq!(d.status, 200);
            assert_eq!(d.body, Some(DataSource::Inline(b"ok".to_vec())));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rc.virtual_hosts[1].routes[1].action,
        RouteAction::Forward {
            cluster: "backend_tls".into(),
            prefix_rewrite: None,
            timeout: Some(Duration::from_secs(15))
        }
    );

    assert_eq!(hcm.http_filters.len(), 2);
    let HttpFilter::Wasm(p) = &hcm.http_filters[0] else {
        panic!("expected wasm");
    };
    assert_eq!(p.filter_name, "envoy.filters.http.wasm");
    assert_eq!(p.name, "portcullis");
    assert_eq!(p.root_id, "portcullis_root");
    assert_eq!(p.configuration, br#"{"mode":"enforce"}"#.to_vec());
    assert_eq!(p.failure_policy, FailurePolicy::FailClosed);
    assert_eq!(p.vm_config.vm_id, "portcullis_vm");
    assert_eq!(p.vm_config.runtime, "envoy.wasm.runtime.v8");
    assert_eq!(
        p.vm_config.code,
        DataSource::File("/cfg/../target/portcullis.wasm".into())
    );
    assert_eq!(
        p.vm_config.env_key_values,
        vec![("A".into(), "1".into()), ("B".into(), "2".into())]
    );
    assert_eq!(p.vm_config.env_host_keys, vec!["HOME"]);
    assert_eq!(hcm.http_filters[1], HttpFilter::Router);

    let http = &b.listeners[1];
    assert_eq!(http.address.port, 8080);
    assert_eq!(http.per_connection_buffer_limit_bytes, 1024 * 1024);
    assert!(http.filter_chains[0].tls.is_none());
    let hcm = &http.filter_chains[0].http;
    assert_eq!(hcm.codec_type, CodecType::Http1);
    assert!(!hcm.generate_request_id);
    let HttpFilter::Wasm(p) = &hcm.http_filters[0] else {
        panic!("expected wasm");
    };
    assert_eq!(p.failure_policy, FailurePolicy::FailOpen);
    assert_eq!(p.configuration, b"hi".to_vec());
    assert_eq!(
        p.vm_config.code,
        DataSource::Inline(b"\0asm\x01\0\0\0".to_vec())
    );
    assert_eq!(hcm.http_filters[1], HttpFilter::Router);

    assert_eq!(b.clusters.len(), 2);
    let g = b.cluster("authz_grpc").unwrap();
    assert_eq!(g.discovery, DiscoveryType::StrictDns);
    assert_eq!(g.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(g.connect_timeout, Duration::from_millis(250));
    assert!(g.http2);
    assert!(g.tls.is_none());
    assert_eq!(
        g.endpoints,
        vec![
            SocketAddress {
                address: "authz.internal".into(),
                port: 50051
            },
            SocketAddress {
                address: "authz2.internal".into(),
                port: 50051
            }
        ]
    );
    let t = b.cluster("backend_tls").unwrap();
    assert_eq!(t.discovery, DiscoveryType::Static);
    assert_eq!(t.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(t.connect_timeout, Duration::from_millis(2500));
    assert!(!t.http2);
    let tls = t.tls.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("backend.example.com"));
    assert_eq!(
        tls.trusted_ca,
        Some(DataSource::File("/cfg/certs/ca.crt".into()))
    );
    let cc = tls.client_certificate.as_ref().unwrap();
    assert_eq!(
        cc.certificate_chain,
        DataSource::File("/cfg/certs/client.crt".into())
    );
}

#[test]
fn every_unimplemented_field_is_warned_once_with_its_path() {
    let yaml = r#"
admin:
  access_log_path: /dev/null
  address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }
layered_runtime: {}
stats_config:
  use_all_default_tags: true
  stats_tags:
    - { tag_name: fixed, fixed_value: x }
static_resources:
  listeners:
    - address: { socket_address: { address: 0.0.0.0, port_value: 10000 } }
      listener_filters: [{ name: envoy.filters.listener.tls_inspector }]
      filter_chains:
        - filter_chain_match: { server_names: [a] }
          filters:
            - name: envoy.filters.network.ratelimit
              typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.ratelimit.v3.RateLimit }
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: x
                access_log: [{ name: envoy.access_loggers.stdout }]
                route_config:
                  virtual_hosts:
                    - name: v
                      domains: ["*"]
                      require_tls: ALL
                      routes:
                        - match: { prefix: /a, query_parameters: [{ name: q }] }
                          route: { cluster: c, retry_policy: { num_retries: 2 } }
                        - match: { prefix: /r }
                          redirect: { https_redirect: true, prefix_rewrite: /x }
                        - match: { path_separated_prefix: /p }
                          route: { cluster: c }
                        - match: { prefix: /w }
                          route: { weighted_clusters: { clusters: [] } }
                http_filters:
                  - name: envoy.filters.http.cors
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        failure_policy: FAIL_RELOAD
                        capability_restriction_config: {}
                        vm_config:
                          allow_precompiled: true
                          code: { local: { filename: f.wasm } }
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.Struct
                          value: { a: 1 }
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                      suppress_envoy_headers: true
  clusters:
    - name: c
      lb_policy: RING_HASH
      outlier_detection: {}
      http2_protocol_options: { max_concurrent_streams: 10 }
      load_assignment:
        endpoints:
          - locality: { zone: a }
            lb_endpoints:
              - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } }
                load_balancing_weight: 2
      typed_extension_protocol_options:
        envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions: { "@type": x }
      transport_socket:
        name: envoy.transport_sockets.alts
        typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts }
"#;
    let b = bootstrap::parse(yaml, "/").unwrap();
    let ni = |p: &str| format!("{p}: not implemented by portcullis-host (ignored)");
    let l = "static_resources.listeners[0]";
    let fc = format!("{l}.filter_chains[0]");
    let hcm = format!("{fc}.filters[1].typed_config");
    let vh = format!("{hcm}.route_config.virtual_hosts[0]");
    let wasm = format!("{hcm}.http_filters[1].typed_config.config");
    let c = "static_resources.clusters[0]";
    let expected = vec![
        // Listener (fields in document order, nested objects when they finish).
        format!("{fc}.filters[0]: network filter \"envoy.filters.network.ratelimit\" (envoy.extensions.filters.network.ratelimit.v3.RateLimit) is not implemented by portcullis-host (filter skipped)"),
        ni(&format!("{vh}.routes[0].match.query_parameters")),
        ni(&format!("{vh}.routes[0].route.retry_policy")),
        ni(&format!("{vh}.routes[1].redirect.prefix_rewrite")),
        format!("{vh}.routes[2].match.path_separated_prefix: path specifier not implemented by portcullis-host (route skipped)"),
        format!("{vh}.routes[3].route.weighted_clusters: cluster specifier not implemented by portcullis-host (route skipped)"),
        ni(&format!("{vh}.require_tls")),
        format!("{hcm}.http_filters[0]: HTTP filter \"envoy.filters.http.cors\" (envoy.extensions.filters.http.cors.v3.Cors) is not implemented by portcullis-host (filter skipped)"),
        ni(&format!("{wasm}.vm_config.allow_precompiled")),
        format!("{wasm}.configuration: configuration of type google.protobuf.Struct is not implemented by portcullis-host (only google.protobuf.StringValue and BytesValue; empty configuration used)"),
        format!("{wasm}.failure_policy: FAIL_RELOAD is not implemented by portcullis-host (FAIL_CLOSED used)"),
        ni(&format!("{wasm}.capability_restriction_config")),
        ni(&format!("{hcm}.http_filters[2].typed_config.suppress_envoy_headers")),
        ni(&format!("{hcm}.access_log")),
        ni(&format!("{fc}.filter_chain_match")),
        ni(&format!("{l}.listener_filters")),
        // Cluster.
        format!("{c}.lb_policy: RING_HASH is not implemented by portcullis-host (ROUND_ROBIN used)"),
        ni(&format!("{c}.load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight")),
        ni(&format!("{c}.load_assignment.endpoints[0].locality")),
        ni(&format!("{c}.http2_protocol_options.max_concurrent_streams")),
        ni(&format!("{c}.typed_extension_protocol_options.envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions")),
        format!("{c}.transport_socket: transport socket \"envoy.transport_sockets.alts\" (envoy.extensions.transport_sockets.alts.v3.Alts) is not implemented by portcullis-host (plaintext used)"),
        ni(&format!("{c}.outlier_detection")),
        // Top level.
        ni("admin.access_log_path"),
        "stats_config.stats_tags[0].fixed_value: fixed_value tags are not implemented by portcullis-host (tag ignored)".to_string(),
        ni("layered_runtime"),
    ];
    let mut got = b.warnings.clone();
    let mut want = expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "\nactual order:\n{}", b.warnings.join("\n"));
    // Each warning appears once.
    let mut dedup = got.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), got.len());
    // Skipped routes and filters are gone, the rest (a route and a redirect) is kept.
    let vhost = &b.listeners[0].filter_chains[0]
        .http
        .route_config
        .virtual_hosts[0];
    assert_eq!(vhost.routes.len(), 2);
    assert_eq!(b.listeners[0].filter_chains[0].http.http_filters.len(), 2);
    assert!(b.stats_tags.is_empty());
    assert!(b.use_all_default_tags);
    assert_eq!(b.clusters[0].lb_policy, LbPolicy::RoundRobin);
    assert!(b.clusters[0].http2);
    assert!(b.clusters[0].tls.is_none());
}

fn err(yaml: &str) -> String {
    match bootstrap::parse(yaml, "/") {
        Err(e @ BootstrapError::Invalid { .. }) => e.to_string(),
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(b) => panic!("expected an error, got {b:?}"),
    }
}

const LISTENER_HEAD: &str = r#"
static_resources:
  listeners:
    - name: l
      address: { socket_address: { address: 0.0.0.0, port_value: PORT } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: x
                route_config: { virtual_hosts: [{ name: v, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: c, timeout: TIMEOUT } }] }] }
                http_filters: FILTERS
  clusters:
    - { name: c, type: STRICT_DNS, load_assignment: { endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: c.local, port_value: 80 } } } }] }] } }
"#;

fn listener(port: &str, timeout: &str, filters: &str) -> String {
    LISTENER_HEAD
        .replace("PORT", port)
        .replace("TIMEOUT", timeout)
        .replace("FILTERS", filters)
}

const ROUTER: &str = r#"[{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]"#;

#[test]
fn type_errors_name_their_path() {
    assert_eq!(
        err(&listener("\"eighty\"", "1s", ROUTER)),
        "static_resources.listeners[0].address.socket_address.port_value: expected an integer"
    );
    assert_eq!(
        err(&listener("70000", "1s", ROUTER)),
        "static_resources.listeners[0].address.socket_address.port_value: must be at most 65535"
    );
    let hcm = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
    assert_eq!(
        err(&listener("80", "soon", ROUTER)),
        format!(
            "{hcm}.route_config.virtual_hosts[0].routes[0].route.timeout: expected a duration such as \"0.25s\""
        )
    );
    assert_eq!(
        err(&listener("80", "1s", "[]")),
        format!("{hcm}.http_filters: the last HTTP filter must be envoy.filters.http.router")
    );
    assert_eq!(
        err(&listener(
            "80",
            "1s",
            r#"[{ name: envoy.filters.http.router }, { name: w, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: { vm_config: { code: { local: { filename: a.wasm } } } } } }]"#
        )),
        format!("{hcm}.http_filters: envoy.filters.http.router must be the last HTTP filter")
    );
    assert_eq!(
        err(&listener(
            "80",
            "1s",
            r#"[{ name: envoy.filters.http.wasm, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router2 } }, { name: envoy.router }]"#
        )),
        format!(
            "{hcm}.http_filters[0].typed_config.@type: expected type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, got envoy.extensions.filters.http.router.v3.Router2"
        )
    );
    assert_eq!(
        err(&listener(
            "80",
            "1s",
            r#"[{ name: w, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: { fail_open: "yes", vm_config: { code: { local: { filename: a.wasm } } } } } }, { name: envoy.router }]"#
        )),
        format!("{hcm}.http_filters[0].typed_config.config.fail_open: expected a boolean")
    );
    assert_eq!(
        err(&listener(
            "80",
            "1s",
            r#"[{ name: w, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: { vm_config: { code: { remote: {} } } } } }, { name: envoy.router }]"#
        )),
        format!(
            "{hcm}.http_filters[0].typed_config.config.vm_config.code.local: required (remote code is not implemented by portcullis-host)"
        )
    );

    let cluster = |body: &str| format!("static_resources:\n  clusters:\n    - {body}\n");
    let ep = "load_assignment: { endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } } }] }] }";
    assert_eq!(
        err(&cluster(&format!("{{ name: c, type: EDS, {ep} }}"))),
        "static_resources.clusters[0].type: EDS is not implemented by portcullis-host (STATIC, STRICT_DNS, LOGICAL_DNS)"
    );
    assert_eq!(
        err(&cluster(&format!("{{ name: c, type: BOGUS, {ep} }}"))),
        "static_resources.clusters[0].type: unknown value \"BOGUS\" (expected one of STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST)"
    );
    assert_eq!(
        err(&cluster(&format!(
            "{{ name: c, connect_timeout: 5, {ep} }}"
        ))),
        "static_resources.clusters[0].connect_timeout: expected a duration such as \"0.25s\""
    );
    assert_eq!(
        err(&cluster(
            "{ name: c, load_assignment: { endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: backend, port_value: 80 } } } }] }] } }"
        )),
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: a STATIC cluster needs an IP address (use STRICT_DNS for host names)"
    );
    assert_eq!(
        err(&cluster(&format!(
            "{{ name: c, transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext }} }}, {ep} }}"
        ))),
        "static_resources.clusters[0].transport_socket.typed_config.@type: expected type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, got envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    );
    assert_eq!(
        err("stats_config: { stats_tags: [{ tag_name: t, regex: \"(\" }] }"),
        "stats_config.stats_tags[0].regex: invalid regex: regex parse error:\n    (\n    ^\nerror: unclosed group"
    );
    assert_eq!(
        err("static_resources: { listeners: {} }"),
        "static_resources.listeners: expected a list"
    );
}

#[test]
fn yaml_and_io_errors() {
    assert!(matches!(
        bootstrap::parse("a: [", "/"),
        Err(BootstrapError::Yaml(_))
    ));
    assert!(matches!(
        bootstrap::load("/nonexistent/envoy.yaml"),
        Err(BootstrapError::Io { .. })
    ));
}

#[test]
fn load_resolves_relative_files_against_the_yaml_directory() {
    let dir = std::env::temp_dir().join(format!("portcullis-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("envoy.yaml");
    std::fs::write(&file, REALISTIC).unwrap();
    let b = bootstrap::load(&file).unwrap();
    let HttpFilter::Wasm(p) = &b.listeners[0].filter_chains[0].http.http_filters[0] else {
        panic!("expected wasm");
    };
    assert_eq!(
        p.vm_config.code,
        DataSource::File(dir.join("../target/portcullis.wasm"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
