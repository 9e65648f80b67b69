//! The proxy: Envoy's server start-up and its HTTP data path, run from a parsed bootstrap.
//!
//! Start-up follows Envoy (source/server/server.cc, EWASM `createWasm`, CPPH `canary`): the
//! bootstrap is loaded and every unimplemented field printed once as a warning; each wasm module
//! is compiled once; a throw-away canary VM starts each plugin (a refusal is fatal, exit 1, with
//! Envoy's "Unable to create Wasm plugin" message after the module's own error line); listeners
//! are bound once on the main thread; then N workers each clone the listening sockets (the
//! kernel spreads connections) and start their own VM per plugin. The admin listener answers
//! `/ready` with LIVE once every worker runs. Ctrl-C, SIGTERM or `POST /quitquitquit` stop it.

mod admin;
pub mod body;
mod callout;
mod stream;
pub mod tls;
mod upstream;
mod worker;

use crate::abi::{HostShared, LogLevel, PluginConfig, Vm, WasmModule};
use crate::bootstrap::{
    self, Bootstrap, DataSource, FailurePolicy, HttpConnectionManager, HttpFilter,
};
use crate::stats::{MetricKind, Stats};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Command-line options of `portcullis-host`.
#[derive(Debug, Clone)]
pub struct Options {
    /// `-c` / `--config-path`: the bootstrap YAML.
    pub config: PathBuf,
    /// `--concurrency`: worker threads (Envoy's default is the number of cores; ours 2).
    pub concurrency: usize,
    /// `--log-level`: the `wasm` logger's level (Envoy's default: info).
    pub log_level: LogLevel,
}

/// Process-wide state every worker sees.
pub(crate) struct Process {
    pub shared: HostShared,
    pub stats: Counters,
    pub ready: AtomicBool,
    next_connection: AtomicU64,
}

impl Process {
    /// Connection ids are process-wide, as Envoy's.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Envoy's native counters by name (`cluster.<name>.upstream_rq_total`, …).
#[derive(Clone)]
pub(crate) struct Counters(Stats);

impl Counters {
    /// Adds to the counter `name`, creating it at first use.
    pub fn add(&self, name: &str, delta: u64) {
        let id = self.0.define(MetricKind::Counter, name);
        self.0.add_counter(id, delta);
    }

    /// Records a sample of the histogram `name`, creating it at first use.
    pub fn record(&self, name: &str, value: u64) {
        let id = self.0.define(MetricKind::Histogram, name);
        self.0.record(id, value);
    }

    /// An upstream response code, as Envoy's `CodeStatsImpl::chargeBasicResponseStat` charges
    /// it to the cluster: `upstream_rq_completed`, `upstream_rq_<N>xx`, `upstream_rq_<code>`.
    pub fn upstream_code(&self, cluster: &str, code: u16) {
        self.add(&format!("cluster.{cluster}.upstream_rq_completed"), 1);
        if (100..600).contains(&code) {
            self.add(
                &format!("cluster.{cluster}.upstream_rq_{}xx", code / 100),
                1,
            );
        }
        self.add(&format!("cluster.{cluster}.upstream_rq_{code}"), 1);
    }
}

/// One listener as a worker serves it.
pub(crate) struct Listening {
    pub bound: SocketAddr,
    /// Envoy's stat name of the listener address (`127.0.0.1_10000`).
    pub stat_addr: String,
    pub hcm: HttpConnectionManager,
    /// Plugin indices of the wasm filters, in order.
    pub chain: Vec<usize>,
    pub buffer_limit: usize,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What a worker needs to build its [`Listening`]s.
#[derive(Clone)]
struct ListenerSpec {
    socket: Arc<std::net::TcpListener>,
    bound: SocketAddr,
    hcm: HttpConnectionManager,
    chain: Vec<usize>,
    buffer_limit: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The server's local address (Envoy `LocalInfo::address()`, from
/// `Network::Utility::getLocalAddress(IpVersion::v4)` in source/server/server.cc): what the
/// connection manager appends to `x-forwarded-for` instead of a loopback peer
/// (conn_manager_utility.cc `mutateRequestHeaders`). Envoy takes the first non-loopback IPv4
/// address of `getifaddrs()`; without libc the host asks the kernel which source address it
/// would use for a route out (a UDP `connect` sends nothing) — the same address on a
/// single-interface machine — and, like Envoy without one, falls back to 127.0.0.1.
pub(crate) fn local_address() -> std::net::IpAddr {
    static LOCAL: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();
    *LOCAL.get_or_init(|| {
        let routed = std::net::UdpSocket::bind(("0.0.0.0", 0))
            .and_then(|s| s.connect(("192.0.2.1", 9)).map(|()| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        routed.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    })
}

fn critical(config: &std::path::Path, msg: &str) {
    eprintln!(
        "[critical][main] error initializing configuration '{}': {msg}",
        config.display()
    );
}

fn plugin_config(p: &bootstrap::WasmPlugin) -> PluginConfig {
    let mut environment = p.vm_config.env_key_values.clone();
    for key in &p.vm_config.env_host_keys {
        if let Ok(v) = std::env::var(key) {
            environment.push((key.clone(), v));
        }
    }
    PluginConfig {
        name: p.name.clone(),
        root_id: p.root_id.clone(),
        vm_id: p.vm_config.vm_id.clone(),
        configuration: p.configuration.clone(),
        vm_configuration: p.vm_config.configuration.clone(),
        environment,
        fail_open: p.failure_policy == FailurePolicy::FailOpen,
    }
}

fn load_module(engine: &wasmtime::Engine, code: &DataSource) -> Result<WasmModule, String> {
    match code {
        DataSource::File(path) => WasmModule::load(engine, path).map_err(|e| e.to_string()),
        DataSource::Inline(bytes) => {
            WasmModule::from_bytes(engine, bytes).map_err(|e| e.to_string())
        }
    }
}

/// Runs the host until a signal; returns the process exit code.
pub fn run(opts: &Options) -> i32 {
    let boot = match bootstrap::load(&opts.config) {
        Ok(b) => b,
        Err(e) => {
            critical(&opts.config, &e.to_string());
            return 1;
        }
    };
    for w in &boot.warnings {
        eprintln!("[warning][config] {w}");
    }
    match start(opts, boot) {
        Ok(code) => code,
        Err(msg) => {
            critical(&opts.config, &msg);
            1
        }
    }
}

fn start(opts: &Options, boot: Bootstrap) -> Result<i32, String> {
    let stats = Stats::from_stats_config(boot.stats_tags.clone(), boot.use_all_default_tags)
        .map_err(|e| e.to_string())?;
    let shared = HostShared::new(stats.clone());
    shared.set_log_level(opts.log_level);
    shared.set_clusters(boot.clusters.iter().map(|c| c.name.clone()));

    // Plugins, modules (compiled once per code source) and canaries.
    let engine = wasmtime::Engine::default();
    let mut modules: HashMap<String, WasmModule> = HashMap::new();
    let mut plugins: Vec<(WasmModule, PluginConfig)> = Vec::new();
    let mut specs = Vec::new();
    for l in &boot.listeners {
        let Some(fc) = l.filter_chains.first() else {
            continue;
        };
        let mut chain = Vec::new();
        for f in &fc.http.http_filters {
            let HttpFilter::Wasm(p) = f else { continue };
            let key = format!("{:?}", p.vm_config.code);
            let module = match modules.get(&key) {
                Some(m) => m.clone(),
                None => {
                    let m = load_module(&engine, &p.vm_config.code)
                        .map_err(|e| format!("Unable to create Wasm plugin {}: {e}", p.name))?;
                    modules.insert(key, m.clone());
                    m
                }
            };
            let config = plugin_config(p);
            // The canary (CPPH `WasmHandleBase::canary`): started and dropped.
            Vm::start(&module, &config, shared.clone(), 0).map_err(|e| e.to_string())?;
            chain.push(plugins.len());
            plugins.push((module, config));
        }
        let addr = format!("{}:{}", l.address.address, l.address.port);
        let socket =
            std::net::TcpListener::bind(&addr).map_err(|e| format!("cannot bind '{addr}': {e}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("listener {addr}: {e}"))?;
        let bound = socket.local_addr().map_err(|e| e.to_string())?;
        let tls = match &fc.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(t).map_err(|e| format!("listener {addr}: {e:#}"))?,
            )),
            None => None,
        };
        eprintln!(
            "[info][main] listener {} on {bound}{}",
            if l.name.is_empty() { "-" } else { &l.name },
            if tls.is_some() { " (TLS)" } else { "" }
        );
        specs.push(ListenerSpec {
            socket: Arc::new(socket),
            bound,
            hcm: fc.http.clone(),
            chain,
            buffer_limit: l.per_connection_buffer_limit_bytes as usize,
            tls,
        });
    }
    // Cluster TLS settings are checked once here; each worker builds its own pools.
    upstream::Upstreams::new(&boot).map_err(|e| format!("{e:#}"))?;

    let process = Arc::new(Process {
        shared: shared.clone(),
        stats: Counters(stats.clone()),
        ready: AtomicBool::new(false),
        next_connection: AtomicU64::new(1),
    });
    let (quit_tx, quit_rx) = watch::channel(false);
    let boot = Arc::new(boot);
    let plugins = Arc::new(plugins);
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    let workers = opts.concurrency.max(1);
    eprintln!("[info][main] starting {workers} worker(s)");
    eprintln!("[info][main] local address: {}", local_address());
    for id in 0..workers {
        let process = Arc::clone(&process);
        let boot = Arc::clone(&boot);
        let plugins = Arc::clone(&plugins);
        let specs = specs.clone();
        let started = started_tx.clone();
        let quit = quit_rx.clone();
        let t = std::thread::Builder::new()
            .name(format!("wrk:worker_{id}"))
            .spawn(move || {
                if let Err(e) = worker_main(id, process, boot, plugins, specs, quit, &started) {
                    let _ = started.send(Err(e));
                }
            })
            .map_err(|e| e.to_string())?;
        threads.push(t);
    }
    drop(started_tx);
    for _ in 0..workers {
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a worker exited during start-up".to_owned()),
        }
    }
    process.ready.store(true, Ordering::SeqCst);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let admin = boot.admin.clone();
    rt.block_on(async {
        if let Some(a) = admin {
            let addr = format!("{}:{}", a.address, a.port);
            match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => {
                    eprintln!(
                        "[info][main] admin address: {}",
                        l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
                    );
                    tokio::spawn(admin::serve(
                        l,
                        Arc::clone(&process),
                        stats.clone(),
                        quit_tx.clone(),
                    ));
                }
                Err(e) => eprintln!("[critical][main] cannot bind admin address '{addr}': {e}"),
            }
        }
        eprintln!("[info][main] all workers started, ready");
        wait_for_stop(quit_rx.clone()).await;
    });
    eprintln!("[info][main] shutting down");
    let _ = quit_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    eprintln!("[info][main] exiting");
    Ok(0)
}

async fn wait_for_stop(mut quit: watch::Receiver<bool>) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = quit.changed() => {}
    }
}

fn worker_main(
    id: usize,
    process: Arc<Process>,
    boot: Arc<Bootstrap>,
    plugins: Arc<Vec<(WasmModule, PluginConfig)>>,
    specs: Vec<ListenerSpec>,
    quit: watch::Receiver<bool>,
    started: &std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    // VMs start outside the runtime: wasmtime-wasi's sync preview-1 functions block on a
    // runtime of their own and must not run inside ours.
    let mut vms = Vec::new();
    for (module, config) in plugins.iter() {
        vms.push(Vm::start(module, config, process.shared.clone(), id).map_err(|e| e.to_string())?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let upstreams = upstream::Upstreams::new(&boot).map_err(|e| format!("{e:#}"))?;
        let w = worker::Worker::new(id, Arc::clone(&process), vms, upstreams);
        // What `on_configure` asked (ticks, callouts) takes effect once the worker runs.
        for p in 0..w.vms.len() {
            w.dispatch(p);
        }
        tokio::task::spawn_local(Rc::clone(&w).poll_queues());
        for spec in specs {
            let std_listener = spec.socket.try_clone().map_err(|e| e.to_string())?;
            let listener =
                tokio::net::TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
            let listening = Rc::new(Listening {
                bound: spec.bound,
                stat_addr: format!("{}_{}", spec.bound.ip(), spec.bound.port()),
                hcm: spec.hcm,
                chain: spec.chain,
                buffer_limit: spec.buffer_limit,
                tls: spec.tls,
            });
            tokio::task::spawn_local(Rc::clone(&w).accept_loop(listening, listener, quit.clone()));
        }
        let _ = started.send(Ok(()));
        let mut quit = quit;
        while !*quit.borrow() {
            if quit.changed().await.is_err() {
                break;
            }
        }
        Ok::<(), String>(())
    })
}
