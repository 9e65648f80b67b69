//! The security review's findings (issue 14), each attacked in real Envoy 1.40 as a client
//! would, with the filter configured as the docs say. Each case failed on 4ccc866.
//!
//! 1. Client address spoofing: under the connection manager's default
//!    `use_remote_address: false`, Envoy takes the client address from `X-Forwarded-For`; the
//!    filter must not believe it (an allow list of 10.0.0.0/8 passed `X-Forwarded-For: 10.9.9.9`).
//! 2. Unverified credentials forwarded: a forged bearer token beside a valid API key, a token
//!    spelled `Bearer<TAB>…`, a `Basic` header beside a `Bearer` one (Envoy joins them).
//! 3. Identity headers with underscores (`x_portcullis_subject`), which CGI-style services
//!    read as the real ones.
//! 4. `Host` values that Envoy's virtual-host matching reads differently from the filter's
//!    route matching (`admin.example.com:80:80` reached an `admin.example.com:*` virtual host
//!    past a route protected for `admin.example.com`).
//! 5. Duplicate JSON keys hiding a payload from inspection.
//! 6. The burst guard keyed on whole IPv6 addresses (one /64 had 2^64 buckets).
//! 7. Symmetric (`oct`) keys in a fetched JWKS, which would let anyone who reads the public set
//!    sign tokens; one client's flood of made-up opaque tokens taking every introspection call
//!    of a worker; request trailers, which ended the request without the buffered body ever
//!    being checked (a body inspection bypass).
//!
//! One Envoy, one listener per concern, each with its filter VM (Envoy compiles the module
//! once for all of them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis::jwt::Algorithm;
use portcullis::mint::SigningKey;
use portcullis_e2e::bootstrap::{self, Protocol};
use portcullis_e2e::server::Answer;
use portcullis_e2e::{Envoy, Idp, Resp, TestServer, echo, request, unix_now};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const API_KEY: &str = "pk_live_security_suite_0123456789";
const HMAC_SECRET: [u8; 32] = [7; 32];

fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    request(addr, method, path, &headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, "GET", path, headers, b"")
}

/// The headers the upstream echo received (names lower case).
fn received(r: &Resp) -> serde_json::Map<String, Value> {
    let json = r
        .json()
        .unwrap_or_else(|| panic!("not an echo answer: {}", r.summary()));
    assert_eq!(json["name"], "upstream", "{}", r.summary());
    json["headers"].as_object().cloned().unwrap_or_default()
}

/// An HS256 key set served as a "remote" JWKS: the filter must never install it.
fn oct_jwks_server() -> TestServer {
    let k = portcullis::jwt::b64::encode(HMAC_SECRET);
    TestServer::start(move |_| {
        Answer::json(
            200,
            &json!({"keys": [{"kty": "oct", "kid": "shared", "alg": "HS256", "k": k}]}),
        )
    })
    .unwrap()
}

/// The listener `name` with the filter (`configuration`) in front of `upstream`, optionally
/// with the connection manager's default (spoofable) `use_remote_address: false`.
fn listener(name: &str, configuration: &Value, spoofable: bool) -> Value {
    let wasm = portcullis_e2e::artifacts::filter_wasm().unwrap_or_else(|e| panic!("{e}"));
    let mut l = bootstrap::listener(
        name,
        0,
        vec![bootstrap::wasm_filter(
            name,
            &wasm,
            &configuration.to_string(),
            bootstrap::FailurePolicy::FailClosed,
        )],
        vec![bootstrap::route("/", "upstream")],
    );
    let hcm = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
    if spoofable {
        hcm.as_object_mut().unwrap().remove("use_remote_address");
    }
    l
}

/// The edge configuration on a listener that accepts HTTP/1 request trailers
/// (`enable_trailers`; HTTP/2 always does).
fn trailers_listener(configuration: &Value) -> Value {
    let mut l = listener("trailers", configuration, false);
    l["filter_chains"][0]["filters"][0]["typed_config"]["http_protocol_options"] =
        json!({"enable_trailers": true});
    l
}

/// Envoy's virtual hosts for the Host table: `admin.example.com` (and any port of it, as
/// operators write it) answer "admin-vhost", everything else "other-vhost".
fn host_table_listener(configuration: &Value) -> Value {
    let mut l = listener("hosts", configuration, false);
    let direct = |body: &str| {
        json!([{"match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": body}}}])
    };
    l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"] = json!([
        {"name": "admin", "domains": ["admin.example.com", "admin.example.com:*"],
         "routes": direct("admin-vhost")},
        {"name": "other", "domains": ["*"], "routes": direct("other-vhost")}
    ]);
    l
}

struct Suite {
    envoy: Envoy,
    idp: Idp,
    _upstream: TestServer,
    _oct: TestServer,
}

impl Suite {
    fn start() -> Suite {
        let idp = Idp::start().unwrap();
        let upstream = echo::echo("upstream").unwrap();
        let oct = oct_jwks_server();
        let issuer = idp.issuer();
        let remote = |cluster: &str, uri: String| {
            json!({"http_uri": {"uri": uri, "cluster": cluster, "timeout_ms": 1000},
                   "wait_ms": 1000})
        };
        let providers = json!({
            "idp": {"issuer": issuer, "audiences": ["orders"],
                    "remote_jwks": remote("idp", format!("{issuer}/jwks"))},
            "keys": {"type": "api_key", "keys": [{"consumer": "acme",
                     "sha256": portcullis::apikey::hash_hex(API_KEY)}]},
            "ck": {"issuer": issuer, "audiences": ["orders"],
                   "remote_jwks": remote("idp", format!("{issuer}/jwks")),
                   "from_params": ["access_token"], "from_cookies": ["session"]}
        });
        let spoof = json!({"routes": [
            {"name": "admin", "match": {"prefix": "/admin"}, "public": true,
             "ip_filter": {"allow": ["10.0.0.0/8"]}},
            {"name": "denied", "match": {"prefix": "/denied"}, "public": true,
             "ip_filter": {"deny": ["10.66.0.0/16"]}},
            {"name": "public", "match": {"prefix": "/"}, "public": true}
        ]});
        let edge = json!({
            "providers": providers,
            "routes": [
                {"name": "orders", "match": {"prefix": "/orders"}, "requires": ["idp", "keys"]},
                {"name": "docs", "match": {"prefix": "/docs"}, "requires": ["idp"],
                 "allow_missing": true},
                {"name": "ck", "match": {"prefix": "/ck"}, "requires": ["ck", "keys"],
                 "allow_missing": true},
                {"name": "keysonly", "match": {"prefix": "/keysonly"}, "requires": ["keys"]},
                {"name": "body", "match": {"prefix": "/search"}, "public": true,
                 "inspection": {"mode": "block", "level": "medium"}},
                {"name": "public", "match": {"prefix": "/"}, "public": true}
            ]
        });
        let hosts = json!({
            "providers": {"idp": providers["idp"].clone()},
            "routes": [
                {"name": "admin", "match": {"prefix": "/", "hosts": ["admin.example.com"]},
                 "requires": ["idp"]},
                {"name": "public", "match": {"prefix": "/"}, "public": true}
            ]
        });
        let v6 = json!({
            "client_ip": {"xff_num_trusted_hops": 1},
            "burst": {"requests_per_second": 0.01, "burst": 2},
            "routes": [{"name": "public", "match": {"prefix": "/"}, "public": true}]
        });
        let introspection = json!({
            "client_ip": {"xff_num_trusted_hops": 1},
            "providers": {"opaque": {"type": "introspection", "issuer": issuer,
                "introspection": {
                    "http_uri": {"uri": format!("{issuer}/introspect"), "cluster": "idp",
                                 "timeout_ms": 5000},
                    "client_id": Idp::CLIENT_ID, "client_secret": Idp::CLIENT_SECRET,
                    "failure_mode_deny": true}}},
            "routes": [{"name": "api", "match": {"prefix": "/"}, "requires": ["opaque"]}]
        });
        let oct_config = json!({
            "providers": {"shared": {"issuer": "http://oct.test",
                                     "remote_jwks": remote("oct", "http://oct.test/jwks".into())}},
            "routes": [{"name": "api", "match": {"prefix": "/"}, "requires": ["shared"]}]
        });
        let listeners = vec![
            listener("spoofable", &spoof, true),
            listener("edge_remote", &spoof, false),
            listener("edge", &edge, false),
            host_table_listener(&hosts),
            listener("v6", &v6, false),
            listener("oct", &oct_config, false),
            listener("introspection", &introspection, false),
            trailers_listener(&edge),
        ];
        let clusters = vec![
            bootstrap::cluster("upstream", upstream.addr(), Protocol::Http1),
            bootstrap::cluster("idp", idp.addr(), Protocol::Http1),
            bootstrap::cluster("oct", oct.addr(), Protocol::Http1),
        ];
        let envoy = Envoy::start(&bootstrap::bootstrap(listeners, clusters))
            .unwrap_or_else(|e| panic!("{e}"));
        Suite {
            envoy,
            idp,
            _upstream: upstream,
            _oct: oct,
        }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.envoy.listener(listener).unwrap()
    }

    fn token(&self) -> String {
        self.idp
            .mint(
                &json!({"iss": self.idp.issuer(), "sub": "alice", "aud": "orders",
                          "exp": unix_now() + 600}),
            )
            .unwrap()
    }

    /// The audit lines of the VM `vm` that mention `needle`.
    fn audit(&self, vm: &str, needle: &str) -> Vec<String> {
        self.envoy
            .log()
            .into_iter()
            .filter(|l| l.contains(&format!(" {vm}:")) && l.contains(needle))
            .collect()
    }
}

/// A finding's name and its check.
type Finding = (&'static str, fn(&Suite));

#[test]
fn review_findings_hold_in_real_envoy() {
    let suite = Suite::start();
    let findings: [Finding; 9] = [
        (
            "1 client address",
            client_address_cannot_be_chosen_by_the_client,
        ),
        (
            "2 unverified credentials",
            unverified_credentials_never_reach_the_service,
        ),
        (
            "3 underscores",
            identity_headers_spelled_with_underscores_never_reach_the_service,
        ),
        (
            "4 host parsing",
            hosts_envoy_routes_to_a_protected_virtual_host_are_never_let_through,
        ),
        ("5 duplicate JSON keys", duplicate_json_keys_are_refused),
        (
            "6 IPv6 burst buckets",
            one_ipv6_network_shares_one_burst_bucket,
        ),
        (
            "7 oct keys",
            symmetric_keys_of_a_fetched_set_are_never_installed,
        ),
        ("7 trailers", trailers_never_carry_a_body_past_its_checks),
        (
            "7 introspection flood",
            one_client_cannot_take_every_introspection_call,
        ),
    ];
    // Every finding is checked, and all that fail are reported together.
    let failed: Vec<&str> = findings
        .iter()
        .filter(|(_, check)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&suite))).is_err()
        })
        .map(|(name, _)| *name)
        .collect();
    let panics = suite.envoy.log_lines_with("panicked at");
    assert!(panics.is_empty(), "{panics:?}");
    assert!(failed.is_empty(), "findings that do not hold: {failed:?}");
}

/// Finding 1.
fn client_address_cannot_be_chosen_by_the_client(suite: &Suite) {
    let spoofable = suite.addr("spoofable");
    let forged = [("x-forwarded-for", "10.9.9.9")];
    let r = get(spoofable, "/admin", &forged);
    assert_eq!(
        r.status,
        403,
        "spoofed XFF passed the allow list: {}",
        r.summary()
    );
    assert_eq!(r.error_code().as_deref(), Some("ip_denied"));
    // A deny list cannot be dodged by hiding behind an address Envoy took from the header.
    let r = get(spoofable, "/denied", &[("x-forwarded-for", "192.0.2.1")]);
    assert_eq!(r.status, 403, "{}", r.summary());
    // The audit line never records the forged address.
    let forged_audit = suite.audit("spoofable", "10.9.9.9");
    assert!(forged_audit.is_empty(), "{forged_audit:?}");
    let warned = suite.envoy.wait_for_log(
        |l| l.contains("source.address came from X-Forwarded-For"),
        1,
        std::time::Duration::from_secs(5),
    );
    assert!(!warned.is_empty(), "no warning about use_remote_address");
    // With use_remote_address: true the peer (127.0.0.1) is the client, whatever the header.
    let edge = suite.addr("edge_remote");
    let r = get(edge, "/admin", &forged);
    assert_eq!(r.status, 403, "{}", r.summary());
    let r = get(edge, "/denied", &[("x-forwarded-for", "10.66.1.1")]);
    assert_eq!(r.status, 200, "{}", r.summary());
    let audit = suite.envoy.wait_for_log(
        |l| l.contains(" edge_remote:") && l.contains("\"path\":\"/admin\""),
        1,
        std::time::Duration::from_secs(5),
    );
    assert!(
        audit
            .iter()
            .all(|l| l.contains("\"client_ip\":\"127.0.0.1\"")),
        "{audit:?}"
    );
}

/// Finding 2.
fn unverified_credentials_never_reach_the_service(suite: &Suite) {
    let edge = suite.addr("edge");
    let forged = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJyb290In0.Zm9yZ2Vk";
    // (a) A valid API key beside a forged bearer token: the key passes; neither credential
    // reaches the service.
    let bearer = format!("Bearer {forged}");
    let r = get(
        edge,
        "/orders",
        &[("x-api-key", API_KEY), ("authorization", &bearer)],
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let h = received(&r);
    assert!(
        !h.contains_key("authorization"),
        "forged token forwarded: {h:?}"
    );
    assert!(!h.contains_key("x-api-key"), "{h:?}");
    assert_eq!(
        h.get("x-portcullis-consumer").and_then(Value::as_str),
        Some("acme")
    );
    // (b) On an allow_missing route, a bearer token however spelled is verified (401 when
    // forged), and what is not a credential the filter read never reaches the service.
    for spelled in [format!("Bearer\t{forged}"), format!("bearer   {forged}")] {
        let r = get(edge, "/docs/a", &[("authorization", &spelled)]);
        assert_eq!(r.status, 401, "{spelled:?}: {}", r.summary());
        assert_eq!(r.error_code().as_deref(), Some("invalid_token"));
    }
    let r = get(
        edge,
        "/docs/a",
        &[("authorization", &format!("Bearer\t{}", suite.token()))],
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        received(&r)
            .get("x-portcullis-subject")
            .and_then(Value::as_str),
        Some("alice")
    );
    // Two Authorization headers, Basic and Bearer: Envoy joins them into one value, which is
    // ambiguous.
    let r = send(
        edge,
        "GET",
        "/docs/a",
        &[
            ("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            ("authorization", &bearer),
        ],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.summary());
    assert_eq!(r.error_code().as_deref(), Some("invalid_request"));
    // An API-key route does not forward a bearer token (or proxy credential) beside the key.
    let r = get(
        edge,
        "/keysonly",
        &[
            ("x-api-key", API_KEY),
            ("authorization", &bearer),
            ("proxy-authorization", &bearer),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let h = received(&r);
    assert!(
        !h.contains_key("authorization") && !h.contains_key("proxy-authorization"),
        "{h:?}"
    );
    // Parameters and cookies spelled so that another parser reads them as the credential,
    // which the filter would neither check nor strip, are ambiguous.
    for (path, cookie) in [
        (format!("/ck/1?a=1;access_token={forged}"), ""),
        (format!("/ck/1?access.token={forged}"), ""),
        (format!("/ck/1?access_token[]={forged}"), ""),
        ("/ck/1".to_owned(), "sess%69on=forged"),
        ("/ck/1".to_owned(), "a=1, session=forged"),
    ] {
        let headers: Vec<(&str, &str)> = if cookie.is_empty() {
            vec![("x-api-key", API_KEY)]
        } else {
            vec![("x-api-key", API_KEY), ("cookie", cookie)]
        };
        let r = get(edge, &path, &headers);
        assert_eq!(r.status, 400, "{path} {cookie}: {}", r.summary());
    }
    // A credential the filter does not read passes as anonymous, without the credential.
    let r = get(
        edge,
        "/docs/a",
        &[("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")],
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(!received(&r).contains_key("authorization"));
}

/// Finding 3.
fn identity_headers_spelled_with_underscores_never_reach_the_service(suite: &Suite) {
    let edge = suite.addr("edge");
    let forged = [
        ("x_portcullis_subject", "admin"),
        ("x_portcullis_consumer", "acme"),
        ("x_api_key", "pk_other"),
    ];
    let r = get(edge, "/public", &forged);
    assert_eq!(r.status, 200, "{}", r.summary());
    let h = received(&r);
    for (name, _) in &forged[..2] {
        assert!(!h.contains_key(*name), "{name} reached the service: {h:?}");
    }
    let auth = format!("Bearer {}", suite.token());
    let mut with_token = forged.to_vec();
    with_token.push(("authorization", &auth));
    let r = get(edge, "/orders", &with_token);
    assert_eq!(r.status, 200, "{}", r.summary());
    let h = received(&r);
    for (name, _) in &forged {
        assert!(!h.contains_key(*name), "{name} reached the service: {h:?}");
    }
    assert_eq!(
        h.get("x-portcullis-subject").and_then(Value::as_str),
        Some("alice")
    );
}

/// Finding 4: the filter's host matching against Envoy's virtual-host selection, on the same
/// table of `Host` values: whatever Envoy routes to the admin virtual host, the filter has
/// applied the admin route to (here: no token → 401), or refused outright.
fn hosts_envoy_routes_to_a_protected_virtual_host_are_never_let_through(suite: &Suite) {
    let hosts = suite.addr("hosts");
    let table = [
        "admin.example.com",
        "admin.example.com:80",
        "admin.example.com:80:80",
        "admin.example.com:",
        "admin.example.com:abc",
        "admin.example.com:080",
        "ADMIN.example.com",
        "ADMIN.EXAMPLE.COM:8443",
        "admin.example.com.",
        "user@admin.example.com",
        "[::1]:80",
        "other.example.com",
        "other.example.com:80",
    ];
    for host in table {
        let r = get(hosts, "/", &[("host", host)]);
        assert_ne!(
            r.text(),
            "admin-vhost",
            "Host {host:?} reached the admin virtual host without a token: {}",
            r.summary()
        );
        assert!(
            r.status == 200 || r.status == 400 || r.status == 401,
            "{host}: {}",
            r.summary()
        );
    }
    for bad in [
        "admin.example.com:80:80",
        "admin.example.com:abc",
        "admin.example.com:",
    ] {
        let r = get(hosts, "/", &[("host", bad)]);
        assert_eq!(r.status, 400, "{bad}: {}", r.summary());
        assert_eq!(r.error_code().as_deref(), Some("invalid_host"));
    }
    // With a token, the admin route lets the request reach the admin virtual host.
    let auth = format!("Bearer {}", suite.token());
    let r = get(
        hosts,
        "/",
        &[("host", "admin.example.com:80"), ("authorization", &auth)],
    );
    assert_eq!((r.status, r.text().as_str()), (200, "admin-vhost"));
}

/// Finding 5.
fn duplicate_json_keys_are_refused(suite: &Suite) {
    let edge = suite.addr("edge");
    let json = [("content-type", "application/json")];
    let hidden = br#"{"q":"1' UNION SELECT password FROM users--","q":"ok"}"#;
    let r = send(edge, "POST", "/search", &json, hidden);
    assert_eq!(r.status, 400, "{}", r.summary());
    assert_eq!(r.error_code().as_deref(), Some("invalid_body"));
    let escaped = br#"{"q":"1' UNION SELECT password FROM users--","\u0071":"ok"}"#;
    assert_eq!(send(edge, "POST", "/search", &json, escaped).status, 400);
    let once = br#"{"q":"1' UNION SELECT password FROM users--"}"#;
    assert_eq!(send(edge, "POST", "/search", &json, once).status, 403);
    let fine = br#"{"q":"ok","filters":[{"q":"again"}]}"#;
    assert_eq!(send(edge, "POST", "/search", &json, fine).status, 200);
}

/// Finding 6: the client is the XFF entry left of the one Envoy appends (one trusted hop).
fn one_ipv6_network_shares_one_burst_bucket(suite: &Suite) {
    let v6 = suite.addr("v6");
    let from = |ip: &str| get(v6, "/", &[("x-forwarded-for", ip)]).status;
    assert_eq!(from("2001:db8:1:2::1"), 200);
    assert_eq!(from("2001:db8:1:2::2"), 200);
    // The same /64, any interface id: the bucket (burst 2) is empty.
    assert_eq!(from("2001:db8:1:2:dead:beef:1:1"), 429);
    assert_eq!(from("2001:db8:1:2:ffff:ffff:ffff:ffff"), 429);
    // Another /64 is another client.
    assert_eq!(from("2001:db8:1:3::1"), 200);
}

/// Finding 7.
fn symmetric_keys_of_a_fetched_set_are_never_installed(suite: &Suite) {
    let oct = suite.addr("oct");
    let key = SigningKey::hmac(&HMAC_SECRET, Algorithm::HS256)
        .unwrap()
        .with_kid("shared");
    let token = key
        .sign(&json!({"iss": "http://oct.test", "sub": "mallory", "exp": unix_now() + 600}))
        .unwrap();
    let r = get(oct, "/", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(
        r.status,
        401,
        "a token signed with a published HMAC key passed: {}",
        r.summary()
    );
    let refused = suite.envoy.wait_for_log(
        |l| l.contains("only symmetric (oct) keys"),
        1,
        std::time::Duration::from_secs(5),
    );
    assert!(
        !refused.is_empty(),
        "the oct set was not refused with its reason"
    );
}

/// A chunked POST with one body chunk and the trailers `trailers`; the answer.
fn post_with_trailers(addr: SocketAddr, path: &str, body: &[u8], trailers: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req.extend_from_slice(format!("\r\n0\r\n{trailers}\r\n").as_bytes());
    s.write_all(&req).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    portcullis_e2e::client::parse_response(&raw).unwrap()
}

/// Finding 7: with trailers, no body callback ends the request; the body must be checked
/// anyway.
fn trailers_never_carry_a_body_past_its_checks(suite: &Suite) {
    let trailers = suite.addr("trailers");
    let attack = br#"{"q":"1' UNION SELECT password FROM users--"}"#;
    let r = post_with_trailers(trailers, "/search", attack, "x-checksum: abc\r\n");
    assert_eq!(
        r.status,
        403,
        "a body with trailers passed inspection: {}",
        r.summary()
    );
    // An attack in a trailer is inspected as a header would be.
    let r = post_with_trailers(
        trailers,
        "/search",
        br#"{"q":"ok"}"#,
        "x-note: <script>alert(1)</script>\r\n",
    );
    assert_eq!(r.status, 403, "{}", r.summary());
    // A harmless body with trailers still passes, and a duplicate key is still refused.
    let r = post_with_trailers(trailers, "/search", br#"{"q":"ok"}"#, "x-checksum: abc\r\n");
    assert_eq!(r.status, 200, "{}", r.summary());
    let r = post_with_trailers(trailers, "/search", br#"{"q":"a","q":"b"}"#, "x-c: 1\r\n");
    assert_eq!(r.status, 400, "{}", r.summary());
}

/// Finding 7: a flood of made-up opaque tokens from one client (one trusted hop: the client
/// is the XFF entry left of Envoy's) gets the failure mode beyond its share of calls, while
/// another client's token is still checked.
fn one_client_cannot_take_every_introspection_call(suite: &Suite) {
    let addr = suite.addr("introspection");
    suite.idp.add_opaque(
        "opaque-valid-token",
        json!({"active": true, "sub": "bob", "iss": suite.idp.issuer(), "exp": unix_now() + 600}),
    );
    let slow = Duration::from_millis(1500);
    suite
        .idp
        .set_fault("/introspect", Some(portcullis_e2e::Fault::Slow(slow)));
    let before = suite.idp.hits("/introspect");
    let started = Instant::now();
    let (flood, other) = std::thread::scope(|s| {
        let flood: Vec<_> = (0..40)
            .map(|i| {
                s.spawn(move || {
                    let auth = format!("Bearer made-up-{i}-{}", unix_now());
                    let t = Instant::now();
                    let r = get(
                        addr,
                        "/",
                        &[("authorization", &auth), ("x-forwarded-for", "203.0.113.7")],
                    );
                    (r.status, t.elapsed())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let other = s.spawn(move || {
            get(
                addr,
                "/",
                &[
                    ("authorization", "Bearer opaque-valid-token"),
                    ("x-forwarded-for", "198.51.100.9"),
                ],
            )
        });
        let flood: Vec<(u16, Duration)> = flood.into_iter().map(|h| h.join().unwrap()).collect();
        (flood, other.join().unwrap())
    });
    suite.idp.set_fault("/introspect", None);
    let calls = suite.idp.hits("/introspect") - before;
    let refused_at_once = flood
        .iter()
        .filter(|(status, took)| *status == 503 && *took < slow)
        .count();
    assert_eq!(
        other.status,
        200,
        "another client's token: {}",
        other.summary()
    );
    assert!(
        refused_at_once >= 40 - 2 * 16,
        "one client held more than 16 calls per worker: {refused_at_once} refused at once, \
         {calls} calls, {flood:?} in {:?}",
        started.elapsed()
    );
    assert!(calls <= 2 * 16 + 1, "{calls} introspection calls");
}
