//! Smaller bootstrap cases: mutual TLS, legacy HTTP/2 option, camelCase names, validation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_host::bootstrap::{self, DataSource, DiscoveryType, TlsVersion};

fn listener_with_tls(tls: &str) -> String {
    format!(
        r#"
static_resources:
  listeners:
    - address: {{ socket_address: {{ address: 0.0.0.0, port_value: 8443 }} }}
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
{tls}
          filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                statPrefix: x
                routeConfig: {{ virtualHosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: c }} }}] }}] }}
                httpFilters: [{{ name: envoy.filters.http.router }}]
  clusters:
    - {{ name: c, type: STRICT_DNS, load_assignment: {{ endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: c.local, port_value: 80 }} }} }} }}] }}] }} }}
"#
    )
}

#[test]
fn mutual_tls_and_versions() {
    let yaml = listener_with_tls(
        r#"              require_client_certificate: true
              common_tls_context:
                tls_params: { tls_minimum_protocol_version: TLSv1_0, tls_maximum_protocol_version: TLSv1_3, cipher_suites: [X] }
                tls_certificates: [{ certificate_chain: { inline_string: CERT }, private_key: { inline_string: KEY } }]
                validation_context: { trusted_ca: { filename: ca.pem }, match_typed_subject_alt_names: [] }"#,
    );
    let b = bootstrap::parse(&yaml, "/etc/envoy").unwrap();
    let tls = b.listeners[0].filter_chains[0].tls.as_ref().unwrap();
    assert!(tls.require_client_certificate);
    assert_eq!(
        tls.trusted_ca,
        Some(DataSource::File("/etc/envoy/ca.pem".into()))
    );
    assert_eq!(
        tls.certificates[0].certificate_chain,
        DataSource::Inline(b"CERT".to_vec())
    );
    assert_eq!(tls.params.min, TlsVersion::V1_0);
    assert_eq!(tls.params.max, TlsVersion::V1_3);
    let p = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context";
    assert_eq!(
        b.warnings,
        vec![
            format!(
                "{p}.tls_params.tls_minimum_protocol_version: rustls implements TLS 1.2 and 1.3 only (TLS 1.2 used)"
            ),
            format!("{p}.tls_params.cipher_suites: not implemented by portcullis-host (ignored)"),
            format!(
                "{p}.validation_context.match_typed_subject_alt_names: not implemented by portcullis-host (ignored)"
            ),
        ]
    );
}

#[test]
fn client_certificates_need_a_ca() {
    let yaml = listener_with_tls(
        r#"              require_client_certificate: true
              common_tls_context:
                tls_certificates: [{ certificate_chain: { filename: a }, private_key: { filename: b } }]"#,
    );
    let e = bootstrap::parse(&yaml, "/").unwrap_err().to_string();
    assert!(e.ends_with("typed_config.require_client_certificate: requires common_tls_context.validation_context.trusted_ca"), "{e}");
    let yaml = listener_with_tls("              common_tls_context: {}");
    let e = bootstrap::parse(&yaml, "/").unwrap_err().to_string();
    assert!(
        e.ends_with("a downstream TLS context needs at least one certificate"),
        "{e}"
    );
}

fn clusters(body: &str) -> String {
    format!("static_resources:\n  clusters:\n{body}")
}

#[test]
fn legacy_http2_and_logical_dns() {
    let yaml = clusters(
        r#"    - name: g
      type: LOGICAL_DNS
      http2_protocol_options: {}
      loadAssignment: { endpoints: [{ lbEndpoints: [{ endpoint: { address: { socketAddress: { address: grpc.local, portValue: 443 } } } }] }] }
"#,
    );
    let b = bootstrap::parse(&yaml, "/").unwrap();
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    let c = &b.clusters[0];
    assert!(c.http2);
    assert_eq!(c.discovery, DiscoveryType::LogicalDns);
    assert_eq!(c.connect_timeout, std::time::Duration::from_secs(5));

    let ep = "{ endpoint: { address: { socket_address: { address: a.local, port_value: 1 } } } }";
    let two = clusters(&format!(
        "    - {{ name: g, type: LOGICAL_DNS, load_assignment: {{ endpoints: [{{ lb_endpoints: [{ep}, {ep}] }}] }} }}\n"
    ));
    assert_eq!(
        bootstrap::parse(&two, "/").unwrap_err().to_string(),
        "static_resources.clusters[0].load_assignment: a LOGICAL_DNS cluster must have exactly one endpoint"
    );
    let dup = clusters(&format!(
        "    - {{ name: g, type: STRICT_DNS, load_assignment: {{ endpoints: [{{ lb_endpoints: [{ep}] }}] }} }}\n    - {{ name: g, type: STRICT_DNS, load_assignment: {{ endpoints: [{{ lb_endpoints: [{ep}] }}] }} }}\n"
    ));
    assert_eq!(
        bootstrap::parse(&dup, "/").unwrap_err().to_string(),
        "static_resources.clusters[1].name: duplicate cluster name \"g\""
    );
    let none = clusters("    - { name: g }\n");
    assert_eq!(
        bootstrap::parse(&none, "/").unwrap_err().to_string(),
        "static_resources.clusters[0].load_assignment: at least one endpoint is required"
    );
}

#[test]
fn route_config_validation() {
    let with_vhosts = |vh: &str| {
        format!(
            r#"
static_resources:
  listeners:
    - address: {{ socket_address: {{ address: 0.0.0.0, port_value: 1 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: x
                http_filters: [{{ name: envoy.filters.http.router }}]
                route_config: {{ virtual_hosts: {vh} }}
  clusters:
    - {{ name: c, type: STRICT_DNS, load_assignment: {{ endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: c.local, port_value: 80 }} }} }} }}] }}] }} }}
"#
        )
    };
    let p = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts";
    let e = bootstrap::parse(
        &with_vhosts(r#"[{ name: a, domains: ["*"] }, { name: b, domains: ["X", "*"] }]"#),
        "/",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "{p}[1].domains: duplicate domain \"*\" (domains must be unique across virtual hosts)"
        )
    );
    let e = bootstrap::parse(
        &with_vhosts(r#"[{ name: a, domains: ["*"], routes: [{ match: { prefix: / }, direct_response: { status: 99 } }] }]"#),
        "/",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!("{p}[0].routes[0].direct_response.status: must be between 200 and 599")
    );
    let e = bootstrap::parse(
        &with_vhosts(r#"[{ name: a, domains: ["*"], routes: [{ match: { headers: [] }, route: { cluster: c } }] }]"#),
        "/",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!("{p}[0].routes[0].match: one of prefix, path, safe_regex is required")
    );
    let e = bootstrap::parse(
        &with_vhosts(r#"[{ name: a, domains: ["*"], routes: [{ match: { safe_regex: { regex: "(" } }, route: { cluster: c } }] }]"#),
        "/",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "{p}[0].routes[0].match.safe_regex.regex: invalid regex"
        )),
        "{e}"
    );
    let e = bootstrap::parse(
        &with_vhosts(r#"[{ name: a, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: nope } }] }]"#),
        "/",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "{p}[0].routes[0].route.cluster: unknown cluster \"nope\" (route_config.validate_clusters is on by default)"
        )
    );
    let off = with_vhosts(r#"[{ name: a, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: nope } }] }]"#)
        .replace("route_config: {", "route_config: { validate_clusters: false,");
    assert!(bootstrap::parse(&off, "/").is_ok());
}

#[test]
fn empty_bootstrap_is_fine() {
    let b = bootstrap::parse("{}", "/").unwrap();
    assert!(b.listeners.is_empty() && b.clusters.is_empty() && b.admin.is_none());
    assert!(b.warnings.is_empty());
}
