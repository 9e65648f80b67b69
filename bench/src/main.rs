//! `make bench`: the cost of a full header-phase decision for an allowed request, per token type
//! (uncached and cached) and for an API key; the cost of request protection for a typical
//! request with and without a 1 KB JSON body; and an IP lookup among 10,000 networks. Each is
//! timed natively and compiled to wasm32-wasip1 under wasmtime (the same
//! `portcullis_bench_guest::Workload` both ways). Prints figures; never fails on time.
//!
//! Each figure is the median of several timed batches after a warm-up, in µs per request.

mod host_abi;
mod loopback;
mod processes;

use anyhow::{Context, Result, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portcullis::ipset::IpSet;
use portcullis::jwt::Algorithm;
use portcullis::mint::SigningKey;
use portcullis_bench_guest::Workload;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Memory, Module, Store, TypedFunc};

const ISSUER: &str = "https://id.bench.test";
const API_KEY: &str = "bench-api-key-0123456789";
/// Timed batches per figure (the median is printed).
const BATCHES: usize = 7;
/// Target duration of one timed batch.
const BATCH_TIME: Duration = Duration::from_millis(60);
/// Networks in the IP-lookup figure (the issue's 10,000), and addresses looked up in turn.
const IP_NETWORKS: usize = 10_000;
const IP_PROBES: usize = 1024;

/// A workload for `portcullis_bench_guest::Workload`, run natively and inside wasmtime.
pub(crate) struct Scenario {
    name: String,
    setup: Value,
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guest = root.join("target/wasm32-wasip1/release/portcullis_bench_guest.wasm");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let engine = Engine::default();
    let module = Module::from_file(&engine, &guest).map_err(anyhow::Error::from).with_context(|| {
        format!(
            "{} is missing: build it with `cargo build --release --target wasm32-wasip1 -p portcullis-bench-guest` (make bench does)",
            guest.display()
        )
    })?;

    let filter = host_abi::Filter::load(&root)?;

    println!(
        "Header-phase decision for an allowed request, µs per request (median of {BATCHES} batches);"
    );
    println!(
        "host ABI = portcullis.wasm in portcullis-host for a whole stream (headers, response, log)"
    );
    let auth = auth_scenarios(&root, now)?;
    print_table(&engine, &module, &filter, &auth)?;

    println!();
    println!(
        "Request protection for an allowed request (API key; 10 query parameters, 15 headers), µs per request"
    );
    print_table(
        &engine,
        &module,
        &filter,
        &protection_scenarios(&root, now)?,
    )?;

    println!();
    ip_lookup(&engine, &module)?;

    println!();
    println!("Whole requests over loopback through portcullis-host (2 workers, keep-alive)");
    loopback_figures(&root, &auth)?;
    Ok(())
}

/// Limits of the rate-limit service in the loopback figures: one counter per client address,
/// too high to refuse anything during the run.
const LOOPBACK_LIMITS: &str = "domain: bench
descriptors:
  - key: generic_key
    value: orders
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 1000000000}
";

/// The echo service direct, through the host without a filter, through the host with the
/// filter for an API key and for a cached RS256 token, and with the API key plus the filter's
/// call to the rate-limit service (memory store, then Redis): what the callout adds.
fn loopback_figures(root: &Path, auth: &[Scenario]) -> Result<()> {
    let rs256 = auth
        .iter()
        .find(|s| s.name == "RS256 cached")
        .context("no RS256 scenario")?;
    let config = &rs256.setup["decide"]["config"];
    let header = |name: &str| -> Result<String> {
        rs256.setup["decide"]["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|p| p[0] == name))
            .and_then(|p| p[1].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no {name} header in the RS256 scenario"))
    };
    let authorization = header("authorization")?;
    let filter_config = json!({
        "providers": {
            "idp": config["providers"]["idp"],
            "keys": api_key_provider()["keys"]
        },
        "burst": {"requests_per_second": 1_000_000, "burst": 1_000_000},
        "inspection": {"mode": "block", "level": "medium"},
        "routes": [{"name": "orders", "match": {"prefix": "/api/orders"},
                    "requires": ["idp", "keys"], "scopes": ["orders:read"]}]
    });
    let redis = processes::Redis::start()?;
    let rls_memory = processes::RateLimitService::start(root, "rls-memory", LOOPBACK_LIMITS, None)?;
    let rls_redis =
        processes::RateLimitService::start(root, "rls-redis", LOOPBACK_LIMITS, Some(&redis))?;
    let limited = |cluster: &str| {
        let mut config = filter_config.clone();
        config["rate_limit_service"] =
            json!({"cluster": cluster, "domain": "bench", "timeout_ms": 1000});
        config["routes"][0]["rate_limits"] = json!([{"actions": [
            {"generic_key": {"descriptor_value": "orders"}}, {"remote_address": {}}
        ]}]);
        Some(config)
    };
    // Opaque tokens checked by an introspection endpoint: on every request (answers not
    // reused), and reused.
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let answer = json!({"active": true, "sub": "bench", "scope": "orders:read",
                        "exp": now_s + 3600, "client_id": "bench"});
    let introspection = processes::introspection_endpoint(&answer.to_string())?;
    let opaque = |ttl: u64| {
        let mut config = filter_config.clone();
        config["providers"]["opaque"] = json!({
            "type": "introspection",
            "introspection": {"http_uri": {"uri": "http://idp/introspect", "cluster": "introspection"},
                              "client_id": "bench", "client_secret": "bench-secret",
                              "cache_ttl_seconds": ttl}
        });
        config["routes"][0]["requires"] = json!(["opaque"]);
        Some(config)
    };
    let stack = loopback::start(
        root,
        &[
            loopback::Listener {
                name: "plain",
                filter: None,
            },
            loopback::Listener {
                name: "filtered",
                filter: Some(filter_config.clone()),
            },
            loopback::Listener {
                name: "rls_memory",
                filter: limited("rls_memory"),
            },
            loopback::Listener {
                name: "rls_redis",
                filter: limited("rls_redis"),
            },
            loopback::Listener {
                name: "introspect_every",
                filter: opaque(0),
            },
            loopback::Listener {
                name: "introspect_cached",
                filter: opaque(300),
            },
        ],
        &[
            ("rls_memory", rls_memory.grpc),
            ("rls_redis", rls_redis.grpc),
        ],
        &[("introspection", introspection)],
    )?;
    let [plain, filtered, memory, redis_limited, every, reused] = stack.listeners[..] else {
        bail!("the host has {} listeners, not 6", stack.listeners.len());
    };
    let common = vec![
        ("user-agent".to_owned(), "portcullis-bench".to_owned()),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    let with = |name: &str, value: &str| {
        let mut h = common.clone();
        h.push((name.to_owned(), value.to_owned()));
        h
    };
    // Eight connections load the machine; one shows the latency a request sees on its own.
    let target = |name: &str, addr, headers| loopback::Target {
        name: name.to_owned(),
        addr,
        headers,
        connections: 8,
    };
    let alone = |t: loopback::Target| loopback::Target {
        connections: 1,
        ..t
    };
    loopback::run(&[
        target("echo service direct", stack.echo, common.clone()),
        target("host, no filter", plain, common.clone()),
        target(
            "host + filter, API key",
            filtered,
            with("x-api-key", API_KEY),
        ),
        target(
            "host + filter, RS256 token (cached)",
            filtered,
            with("authorization", &authorization),
        ),
        target(
            "API key + rate-limit call (memory)",
            memory,
            with("x-api-key", API_KEY),
        ),
        target(
            "API key + rate-limit call (Redis)",
            redis_limited,
            with("x-api-key", API_KEY),
        ),
        alone(target(
            "host + filter, API key",
            filtered,
            with("x-api-key", API_KEY),
        )),
        alone(target(
            "API key + rate-limit call (memory)",
            memory,
            with("x-api-key", API_KEY),
        )),
        alone(target(
            "API key + rate-limit call (Redis)",
            redis_limited,
            with("x-api-key", API_KEY),
        )),
        alone(target(
            "opaque token, introspected every request",
            every,
            with("authorization", "Bearer opaque-bench-token"),
        )),
        alone(target(
            "opaque token, answer reused",
            reused,
            with("authorization", "Bearer opaque-bench-token"),
        )),
    ])
}

/// Times every scenario natively, in wasmtime and (without a body) through the host's ABI, and
/// prints one row each.
fn print_table(
    engine: &Engine,
    module: &Module,
    filter: &host_abi::Filter,
    scenarios: &[Scenario],
) -> Result<()> {
    println!(
        "{:<38} {:>9} {:>9} {:>11} {:>9} {:>9}",
        "scenario", "native", "wasmtime", "wasm/native", "host ABI", "ABI/native"
    );
    for s in scenarios {
        let native = time_native(s)?;
        let wasm = time_wasm(engine, module, s)?;
        let row = format!(
            "{:<38} {:>9.2} {:>9.2} {:>10.1}x",
            s.name,
            native,
            wasm,
            wasm / native
        );
        if s.setup["decide"]["body"].is_null() {
            let abi = filter.time(s)?;
            println!("{row} {abi:>9.2} {:>8.1}x", abi / native);
        } else {
            println!("{row} {:>9} {:>9}", "–", "–");
        }
    }
    Ok(())
}

/// One provider holding one key, one route requiring it, one allowed request.
fn auth_scenarios(root: &Path, now: u64) -> Result<Vec<Scenario>> {
    let keys_dir = root.join("filter/tests/keys");
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(keys_dir.join("jwks.json"))?)?;
    let jwk = |kid: &str| -> Result<Value> {
        jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
            .cloned()
            .with_context(|| format!("no key {kid} in jwks.json"))
    };
    let claims = json!({
        "iss": ISSUER, "aud": "bench", "sub": "user-42", "iat": now, "exp": now + 3600,
        "scope": "orders:read orders:write", "tenant": "acme"
    });
    let cases: [(&str, &str, Algorithm, Option<&str>); 7] = [
        ("RS256", "rsa1", Algorithm::RS256, Some("rsa1.private.pem")),
        ("PS256", "rsa1", Algorithm::PS256, Some("rsa1.private.pem")),
        (
            "ES256",
            "ec256",
            Algorithm::ES256,
            Some("ec256.private.pem"),
        ),
        (
            "ES384",
            "ec384",
            Algorithm::ES384,
            Some("ec384.private.pem"),
        ),
        (
            "ES512",
            "ec521",
            Algorithm::ES512,
            Some("ec521.private.pem"),
        ),
        ("EdDSA", "ed1", Algorithm::EdDSA, Some("ed1.private.pem")),
        ("HS256", "hs1", Algorithm::HS256, None),
    ];
    let mut out = Vec::new();
    for (name, kid, alg, pem) in cases {
        let mut key = jwk(kid)?;
        key["alg"] = json!(alg.name());
        let signer = match pem {
            Some(file) => {
                let pem = std::fs::read_to_string(keys_dir.join(file))?;
                SigningKey::from_pkcs8_pem(&pem, alg)?
            }
            None => {
                let secret = portcullis::jwt::b64::decode(key["k"].as_str().unwrap_or(""))
                    .map_err(|_| anyhow::anyhow!("hs1 is not base64url"))?;
                SigningKey::hmac(&secret, alg)?
            }
        }
        .with_kid(kid);
        let token = signer.sign(&claims)?;
        for cache in [Cache::Off, Cache::Shared, Cache::Worker] {
            out.push(Scenario {
                name: format!("{name} {}", cache.label()),
                setup: decide_setup(
                    jwt_config(&key, cache),
                    request(&[("authorization", &format!("Bearer {token}"))]),
                    now,
                    None,
                ),
            });
        }
    }
    out.push(Scenario {
        name: "API key".to_owned(),
        setup: decide_setup(
            json!({
                "providers": api_key_provider(),
                "routes": [{"match": {"prefix": "/orders"}, "requires": ["keys"], "scopes": ["orders:read"]}]
            }),
            request(&[("x-api-key", API_KEY)]),
            now,
            None,
        ),
    });
    Ok(out)
}

fn api_key_provider() -> Value {
    json!({"keys": {"type": "api_key", "keys": [
        {"consumer": "acme", "sha256": portcullis::apikey::hash_hex(API_KEY), "scopes": ["orders:read"]}
    ]}})
}

fn decide_setup(
    config: Value,
    headers: Vec<(String, String)>,
    now: u64,
    body: Option<&str>,
) -> Value {
    json!({"decide": {"config": config, "headers": headers, "now": now, "body": body}})
}

/// The issue's typical request: every protection on (global deny list of 10,000 networks,
/// burst guard, limits, allowed methods and content types, attack signatures on path, query,
/// headers and body, a JSON Schema for POST bodies), 10 query parameters and 15 headers, with
/// and without a 1 KB JSON body.
fn protection_scenarios(root: &Path, now: u64) -> Result<Vec<Scenario>> {
    let data = root.join("bench/data");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("order.schema.json"))?)?;
    let order = std::fs::read_to_string(data.join("order.json"))?;
    let order = order.trim_end();
    let (deny, _) = ip_lists(IP_NETWORKS, 0);
    let config = |inspection: bool| {
        let mut c = json!({
            "schemas": {"order": schema},
            "ip_filter": {"deny": deny},
            "burst": {"requests_per_second": 1_000_000, "burst": 1_000_000},
            "providers": api_key_provider(),
            "routes": [{
                "name": "orders",
                "match": {"prefix": "/api/orders"},
                "requires": ["keys"],
                "scopes": ["orders:read"],
                "allowed_methods": ["GET", "POST"],
                "content_types": ["application/json"],
                "body_schemas": [{"methods": ["POST"], "schema": "order"}]
            }]
        });
        if inspection {
            c["inspection"] = json!({"mode": "block", "level": "medium"});
        }
        c
    };
    let query = "?status=open&sort=-created_at&page=3&per_page=50&currency=EUR&customer=cus_4fG8hJ2kL9mN\
        &since=2026-11-01T00:00:00Z&until=2026-11-30T23:59:59Z&q=blue%20ceramic%20mug&fields=id,total,items";
    let headers = |method: &str, body: Option<&str>| {
        let mut h: Vec<(String, String)> = [
            (":authority", "api.example.com"),
            (":path", &*format!("/api/orders{query}")),
            (":method", method),
            (":scheme", "https"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"),
            ("accept", "application/json"),
            ("accept-encoding", "gzip, deflate, br"),
            ("accept-language", "en-GB,en;q=0.9,es;q=0.8"),
            ("referer", "https://shop.example.com/account/orders?tab=open"),
            ("cookie", "session_hint=b7f1c2; theme=dark; consent=analytics%3Dno"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "5f1d0c3e-8a7b-4c1e-9d2f-0a1b2c3d4e5f"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("x-client-version", "ios/4.18.2"),
            ("cache-control", "no-cache"),
            ("x-api-key", API_KEY),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(b) = body {
            h.push((
                "content-type".to_owned(),
                "application/json; charset=utf-8".to_owned(),
            ));
            h.push(("content-length".to_owned(), b.len().to_string()));
        }
        h
    };
    Ok(vec![
        Scenario {
            name: "GET, headers only".to_owned(),
            setup: decide_setup(config(true), headers("GET", None), now, None),
        },
        Scenario {
            name: "GET, headers only, no inspection".to_owned(),
            setup: decide_setup(config(false), headers("GET", None), now, None),
        },
        Scenario {
            name: format!("POST, {} B JSON body", order.len()),
            setup: decide_setup(config(true), headers("POST", Some(order)), now, Some(order)),
        },
        Scenario {
            name: format!("POST, {} B JSON body, no inspection", order.len()),
            setup: decide_setup(
                config(false),
                headers("POST", Some(order)),
                now,
                Some(order),
            ),
        },
    ])
}

/// `n` networks (four IPv4 for every IPv6, prefixes /16–/32 and /24–/64; none holds the
/// bench's client 203.0.113.7) and `probes` addresses (a quarter inside a listed network, the
/// rest anywhere), from a fixed seed.
fn ip_lists(n: usize, probes: usize) -> (Vec<String>, Vec<String>) {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let client = IpAddr::from([203, 0, 113, 7]);
    let mut nets: Vec<IpNet> = Vec::with_capacity(n);
    while nets.len() < n {
        let net = if nets.len() % 5 == 4 {
            let addr = Ipv6Addr::from((u128::from(next()) << 64) | u128::from(next()));
            IpNet::V6(Ipv6Net::new_assert(addr, 24 + (next() % 41) as u8).trunc())
        } else {
            let addr = Ipv4Addr::from(next() as u32);
            IpNet::V4(Ipv4Net::new_assert(addr, 16 + (next() % 17) as u8).trunc())
        };
        if !net.contains(&client) {
            nets.push(net);
        }
    }
    let mut addrs = Vec::with_capacity(probes);
    for i in 0..probes {
        let ip: IpAddr = match i % 4 {
            0 => match nets[(next() as usize) % nets.len().max(1)] {
                IpNet::V4(v4) => IpAddr::V4(v4.hosts().next().unwrap_or(v4.network())),
                IpNet::V6(v6) => IpAddr::V6(v6.network()),
            },
            1 => IpAddr::V6(Ipv6Addr::from(
                (u128::from(next()) << 64) | u128::from(next()),
            )),
            _ => IpAddr::V4(Ipv4Addr::from(next() as u32)),
        };
        addrs.push(ip.to_string());
    }
    (nets.iter().map(ToString::to_string).collect(), addrs)
}

/// IP lookup in a set of 10,000 networks: the set's build time, a lookup natively and in
/// wasmtime, and a linear scan of the same networks for comparison.
fn ip_lookup(engine: &Engine, module: &Module) -> Result<()> {
    let (networks, probes) = ip_lists(IP_NETWORKS, IP_PROBES);
    let nets: Vec<IpNet> = networks
        .iter()
        .map(|n| n.parse())
        .collect::<Result<_, _>>()?;
    let addrs: Vec<IpAddr> = probes.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let set = IpSet::new(&nets);
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    let scenario = Scenario {
        name: "ip lookup".to_owned(),
        setup: json!({"ip_lookup": {"networks": networks, "probes": probes}}),
    };
    let probes_n = u32::try_from(IP_PROBES)?;
    let hits = Workload::setup(&scenario.setup)
        .map_err(|code| anyhow::anyhow!("ip lookup setup failed with {code}"))?
        .run(probes_n);
    let linear_hits = addrs
        .iter()
        .filter(|ip| nets.iter().any(|n| n.contains(*ip)))
        .count();
    if usize::try_from(hits)? != linear_hits {
        bail!("the IP set finds {hits} of {IP_PROBES} probes, a linear scan {linear_hits}");
    }
    let native = time_workload(&scenario, false)? * 1e3;
    let wasm = time_wasm_workload(engine, module, &scenario, false)? * 1e3;
    let mut i = 0usize;
    let linear = median_us(|n| {
        for _ in 0..n {
            let ip = addrs[i % addrs.len()];
            i += 1;
            std::hint::black_box(nets.iter().any(|net| net.contains(&ip)));
        }
        Ok(())
    })? * 1e3;
    println!(
        "IP lookup, {IP_NETWORKS} networks ({} ranges after merging, built in {build_ms:.2} ms natively), ns per lookup",
        set.ranges()
    );
    println!(
        "{:<38} {:>10} {:>10} {:>12}",
        "lookup", "native", "wasmtime", "wasm/native"
    );
    println!(
        "{:<38} {:>10.1} {:>10.1} {:>11.1}x",
        format!("IpSet ({hits} of {IP_PROBES} probes listed)"),
        native,
        wasm,
        wasm / native
    );
    println!("{:<38} {:>10.1}", "linear scan of the networks", linear);
    Ok(())
}

/// Where a verified token is found again.
#[derive(Clone, Copy)]
enum Cache {
    /// Nowhere: every request verifies the signature.
    Off,
    /// Only in the cache shared by the workers: what a worker pays for a token another
    /// worker verified (its own cache is off here, so every request reads the shared one).
    Shared,
    /// In the worker's own cache.
    Worker,
}

impl Cache {
    fn label(self) -> &'static str {
        match self {
            Cache::Off => "uncached",
            Cache::Shared => "cross-worker hit",
            Cache::Worker => "cached",
        }
    }
}

fn jwt_config(key: &Value, cache: Cache) -> Value {
    let (entries, slots) = match cache {
        Cache::Off => (0, 0),
        Cache::Shared => (0, 4096),
        Cache::Worker => (1024, 0),
    };
    json!({
        "verified_token_cache": {"max_entries": entries, "shared_slots": slots},
        "providers": {"idp": {
            "issuer": ISSUER, "audiences": ["bench"], "local_jwks": {"keys": [key]},
            "claim_to_headers": [{"header_name": "x-tenant", "claim_name": "tenant"}]
        }},
        "routes": [
            {"name": "health", "match": {"path": "/healthz"}, "public": true},
            {"name": "orders", "match": {"prefix": "/orders", "methods": ["GET"]},
             "requires": ["idp"], "scopes": ["orders:read"]}
        ]
    })
}

/// A typical request as Envoy presents it: pseudo-headers, a few ordinary headers, the credential.
fn request(credential: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = [
        (":authority", "api.example.com"),
        (":path", "/orders/1234?expand=items"),
        (":method", "GET"),
        (":scheme", "https"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "5f1d0c3e-8a7b-4c1e-9d2f-0a1b2c3d4e5f"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    h.extend(
        credential
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    h
}

/// Runs `batch(n)` (which performs n requests) and returns the median µs per request.
pub(crate) fn median_us(mut batch: impl FnMut(u32) -> Result<()>) -> Result<f64> {
    // Calibrate: grow n until a batch takes a measurable time.
    let mut n: u32 = 1;
    loop {
        let t = Instant::now();
        batch(n)?;
        let e = t.elapsed();
        if e >= BATCH_TIME / 4 || n >= 1 << 20 {
            let per = e.as_secs_f64() / f64::from(n);
            n = ((BATCH_TIME.as_secs_f64() / per) as u32).clamp(1, 1 << 22);
            break;
        }
        n *= 4;
    }
    let mut samples = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let t = Instant::now();
        batch(n)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[BATCHES / 2])
}

/// Runs a decision scenario natively: µs per request; every request must be allowed.
fn time_native(s: &Scenario) -> Result<f64> {
    time_workload(s, true)
}

/// µs per run of the workload natively; with `must_allow`, every run must count.
fn time_workload(s: &Scenario, must_allow: bool) -> Result<f64> {
    let mut work = Workload::setup(&s.setup)
        .map_err(|code| anyhow::anyhow!("{}: setup failed with code {code}", s.name))?;
    if let (true, Some(reason)) = (must_allow, work.refusal()) {
        bail!("{}: the request is refused natively ({reason})", s.name);
    }
    median_us(|n| {
        let counted = work.run(n);
        if must_allow && counted != n {
            bail!("{}: {counted} of {n} allowed natively", s.name);
        }
        Ok(())
    })
}

struct Guest {
    store: Store<()>,
    instance: Instance,
    run: TypedFunc<u32, u32>,
}

/// Runs a decision scenario inside wasmtime: µs per request; every request must be allowed.
fn time_wasm(engine: &Engine, module: &Module, s: &Scenario) -> Result<f64> {
    time_wasm_workload(engine, module, s, true)
}

/// µs per run of the workload inside wasmtime; with `must_allow`, every run must count.
fn time_wasm_workload(
    engine: &Engine,
    module: &Module,
    s: &Scenario,
    must_allow: bool,
) -> Result<f64> {
    let mut guest = instantiate(engine, module)?;
    guest.setup(&s.setup.to_string())?;
    median_us(|n| {
        let counted = guest.run.call(&mut guest.store, n)?;
        if must_allow && counted != n {
            bail!("{}: {counted} of {n} allowed inside wasm", s.name);
        }
        Ok(())
    })
}

impl Guest {
    fn setup(&mut self, doc: &str) -> Result<()> {
        let instance = self.instance;
        let alloc: TypedFunc<u32, u32> = instance.get_typed_func(&mut self.store, "bench_alloc")?;
        let setup: TypedFunc<(u32, u32), i32> =
            instance.get_typed_func(&mut self.store, "bench_setup")?;
        let len = u32::try_from(doc.len())?;
        let ptr = alloc.call(&mut self.store, len)?;
        let memory = memory(&instance, &mut self.store)?;
        memory.write(&mut self.store, ptr as usize, doc.as_bytes())?;
        match setup.call(&mut self.store, (ptr, len))? {
            0 => Ok(()),
            code => bail!("bench_setup failed with {code}"),
        }
    }
}

fn memory(instance: &Instance, store: &mut Store<()>) -> Result<Memory> {
    match instance.get_export(&mut *store, "memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => bail!("the guest exports no memory"),
    }
}

/// Instantiates the guest with the few WASI preview-1 functions a Rust cdylib imports.
fn instantiate(engine: &Engine, module: &Module) -> Result<Guest> {
    let mut linker: Linker<()> = Linker::new(engine);
    let wasi = "wasi_snapshot_preview1";
    linker.func_wrap(
        wasi,
        "environ_sizes_get",
        |mut c: Caller<'_, ()>, count: u32, size: u32| write_u32s(&mut c, &[(count, 0), (size, 0)]),
    )?;
    linker.func_wrap(wasi, "environ_get", |_: Caller<'_, ()>, _: u32, _: u32| {
        0i32
    })?;
    linker.func_wrap(
        wasi,
        "args_sizes_get",
        |mut c: Caller<'_, ()>, count: u32, size: u32| write_u32s(&mut c, &[(count, 0), (size, 0)]),
    )?;
    linker.func_wrap(wasi, "args_get", |_: Caller<'_, ()>, _: u32, _: u32| 0i32)?;
    // parking_lot (inside the JSON Schema validator) yields when a lock is contended; the guest
    // is single-threaded, so yielding has nothing to do.
    linker.func_wrap(wasi, "sched_yield", |_: Caller<'_, ()>| 0i32)?;
    linker.func_wrap(
        wasi,
        "proc_exit",
        |_: Caller<'_, ()>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "guest called proc_exit({code})"
            )))
        },
    )?;
    linker.func_wrap(
        wasi,
        "fd_write",
        |mut c: Caller<'_, ()>, _fd: i32, iovs: u32, n: u32, written: u32| -> i32 {
            // Count the bytes and drop them: the guest only writes on a panic, which the
            // figures would show anyway.
            let Some(Extern::Memory(m)) = c.get_export("memory") else {
                return 8;
            };
            let mut total = 0u32;
            for i in 0..n {
                let mut buf = [0u8; 8];
                if m.read(&c, (iovs + i * 8) as usize, &mut buf).is_err() {
                    return 21;
                }
                total += u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            }
            write_u32s(&mut c, &[(written, total)])
        },
    )?;
    linker.func_wrap(
        wasi,
        "clock_time_get",
        |mut c: Caller<'_, ()>, _id: i32, _precision: i64, out: u32| -> i32 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let Some(Extern::Memory(m)) = c.get_export("memory") else {
                return 8;
            };
            match m.write(&mut c, out as usize, &nanos.to_le_bytes()) {
                Ok(()) => 0,
                Err(_) => 21,
            }
        },
    )?;
    linker.func_wrap(
        wasi,
        "random_get",
        |mut c: Caller<'_, ()>, buf: u32, len: u32| -> i32 {
            // Deterministic bytes are enough to seed the guest's HashMap in a benchmark.
            let bytes: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(151).wrapping_add(7))
                .collect();
            let Some(Extern::Memory(m)) = c.get_export("memory") else {
                return 8;
            };
            match m.write(&mut c, buf as usize, &bytes) {
                Ok(()) => 0,
                Err(_) => 21,
            }
        },
    )?;
    let mut store = Store::new(engine, ());
    let instance = linker
        .instantiate(&mut store, module)
        .map_err(anyhow::Error::from)
        .context(
            "instantiating the bench guest (does it import a WASI function the bench host lacks?)",
        )?;
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
        init.call(&mut store, ())?;
    }
    let run = instance.get_typed_func(&mut store, "bench_run")?;
    Ok(Guest {
        store,
        instance,
        run,
    })
}

fn write_u32s(c: &mut Caller<'_, ()>, values: &[(u32, u32)]) -> i32 {
    let Some(Extern::Memory(m)) = c.get_export("memory") else {
        return 8;
    };
    for (addr, v) in values {
        if m.write(&mut *c, *addr as usize, &v.to_le_bytes()).is_err() {
            return 21;
        }
    }
    0
}
