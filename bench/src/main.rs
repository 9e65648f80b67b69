//! `make bench`: the cost of a full header-phase decision for an allowed request, per token type
//! (uncached and cached) and for an API key, natively and compiled to wasm32-wasip1 under
//! wasmtime. Prints figures; never fails on time.
//!
//! Each figure is the median of several timed batches after a warm-up, in µs per request.

use anyhow::{Context, Result, bail};
use portcullis::config::Config;
use portcullis::decision::Verdict;
use portcullis::jwt::Algorithm;
use portcullis::mint::SigningKey;
use portcullis::request::Request;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Memory, Module, Store, TypedFunc};

const ISSUER: &str = "https://id.bench.test";
const API_KEY: &str = "bench-api-key-0123456789";
/// Timed batches per figure (the median is printed).
const BATCHES: usize = 7;
/// Target duration of one timed batch.
const BATCH_TIME: Duration = Duration::from_millis(60);

struct Scenario {
    name: String,
    config: Value,
    headers: Vec<(String, String)>,
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guest = root.join("target/wasm32-wasip1/release/portcullis_bench_guest.wasm");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let scenarios = scenarios(&root, now)?;

    let engine = Engine::default();
    let module = Module::from_file(&engine, &guest).map_err(anyhow::Error::from).with_context(|| {
        format!(
            "{} is missing: build it with `cargo build --release --target wasm32-wasip1 -p portcullis-bench-guest` (make bench does)",
            guest.display()
        )
    })?;

    println!(
        "Header-phase decision for an allowed request, µs per request (median of {BATCHES} batches)"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>12}",
        "scenario", "native", "wasmtime", "wasm/native"
    );
    for s in &scenarios {
        let native = time_native(s, now)?;
        let wasm = time_wasm(&engine, &module, s, now)?;
        println!(
            "{:<22} {:>10.2} {:>10.2} {:>11.1}x",
            s.name,
            native,
            wasm,
            wasm / native
        );
    }
    Ok(())
}

/// One provider holding one key, one route requiring it, one allowed request.
fn scenarios(root: &Path, now: u64) -> Result<Vec<Scenario>> {
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
        for cached in [false, true] {
            out.push(Scenario {
                name: format!("{name} {}", if cached { "cached" } else { "uncached" }),
                config: jwt_config(&key, cached),
                headers: request(&[("authorization", &format!("Bearer {token}"))]),
            });
        }
    }
    out.push(Scenario {
        name: "API key".to_owned(),
        config: json!({
            "providers": {"keys": {"type": "api_key", "keys": [
                {"consumer": "acme", "sha256": portcullis::apikey::hash_hex(API_KEY), "scopes": ["orders:read"]}
            ]}},
            "routes": [{"match": {"prefix": "/orders"}, "requires": ["keys"], "scopes": ["orders:read"]}]
        }),
        headers: request(&[("x-api-key", API_KEY)]),
    });
    Ok(out)
}

fn jwt_config(key: &Value, cached: bool) -> Value {
    json!({
        "verified_token_cache": {"max_entries": if cached { 1024 } else { 0 }},
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
fn median_us(mut batch: impl FnMut(u32) -> Result<()>) -> Result<f64> {
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

fn time_native(s: &Scenario, now: u64) -> Result<f64> {
    let config = Config::from_json(s.config.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: bad config: {e:?}", s.name))?;
    let mut cache = config.token_cache();
    let req = Request::new(&s.headers);
    if decide(&config, &mut cache, &req, now).verdict != Verdict::Allow {
        bail!("{}: the request is not allowed natively", s.name);
    }
    median_us(|n| {
        for _ in 0..n {
            let d = decide(&config, &mut cache, std::hint::black_box(&req), now);
            std::hint::black_box(&d);
        }
        Ok(())
    })
}

struct Guest {
    store: Store<()>,
    instance: Instance,
    run: TypedFunc<u32, u32>,
}

fn time_wasm(engine: &Engine, module: &Module, s: &Scenario, now: u64) -> Result<f64> {
    let mut guest = instantiate(engine, module)?;
    let setup = json!({"config": s.config, "headers": s.headers, "now": now}).to_string();
    guest.setup(&setup)?;
    if guest.run.call(&mut guest.store, 1)? != 1 {
        bail!("{}: the request is not allowed inside wasm", s.name);
    }
    median_us(|n| {
        let allowed = guest.run.call(&mut guest.store, n)?;
        if allowed != n {
            bail!("{}: {allowed} of {n} allowed inside wasm", s.name);
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

/// The header decision for a request without a body from a fixed peer, at `now` seconds.
fn decide(
    config: &portcullis::config::Config,
    cache: &mut portcullis::cache::TokenCache,
    req: &Request<'_>,
    now: u64,
) -> portcullis::decision::Decision {
    let store = portcullis::burst::MemoryStore::default();
    let mut env = portcullis::decision::Env {
        cache,
        store: &store,
        now_ns: now.saturating_mul(1_000_000_000),
        peer: Some(std::net::IpAddr::from([203, 0, 113, 7])),
        end_of_stream: true,
    };
    portcullis::decision::decide(config, &mut env, req)
}
