//! A real Envoy process: started on a bootstrap written to a temporary folder, with
//! `--concurrency 2` (two workers: Envoy then runs three wasm VMs, one per worker and one on
//! the main thread), a `--base-id` of its own (several Envoys may run at once), `--log-level
//! info`; its log (stderr) captured line by line; ready when the admin endpoint's `/ready`
//! answers 200; killed on drop.
//!
//! Set `PORTCULLIS_E2E_ECHO=1` to see Envoy's log on the test's stderr as it comes.

use crate::client::{self, Resp};
use crate::net::TempDir;
use serde_json::Value;
use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long Envoy may take to start (it compiles the filter module first).
pub const START_DEADLINE: Duration = Duration::from_secs(90);

/// How Envoy is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The binary (default: [`crate::artifacts::envoy_binary`]).
    pub binary: Option<PathBuf>,
    /// `--concurrency` (worker threads).
    pub concurrency: usize,
    /// `--log-level`.
    pub log_level: String,
    /// How long to wait for `/ready`.
    pub start_deadline: Duration,
    /// More arguments.
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            binary: None,
            concurrency: 2,
            log_level: "info".to_owned(),
            start_deadline: START_DEADLINE,
            extra_args: Vec::new(),
        }
    }
}

/// Why Envoy did not start.
#[derive(Debug)]
pub enum StartError {
    /// No Envoy binary (see [`crate::artifacts`]).
    Missing(crate::artifacts::Missing),
    /// The bootstrap could not be written, or the process not started.
    Io(String, io::Error),
    /// Envoy exited before it was ready (a configuration it refused, say); its log.
    Exited(ExitStatus, Vec<String>),
    /// Not ready within the deadline; its log.
    NotReady(Duration, Vec<String>),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Missing(m) => write!(f, "{m}"),
            StartError::Io(what, e) => write!(f, "{what}: {e}"),
            StartError::Exited(status, log) => {
                write!(
                    f,
                    "Envoy exited ({status}) before it was ready:\n{}",
                    log.join("\n")
                )
            }
            StartError::NotReady(after, log) => {
                write!(f, "Envoy not ready after {after:?}:\n{}", log.join("\n"))
            }
        }
    }
}

impl std::error::Error for StartError {}

static STARTED: AtomicU32 = AtomicU32::new(0);

/// A `--base-id` no other Envoy started by this or another test process uses: the process id
/// and a counter.
fn base_id() -> u32 {
    let n = STARTED.fetch_add(1, Ordering::Relaxed) % 100;
    (std::process::id() % 1_000_000) * 100 + n
}

/// Shared lines of Envoy's log.
type Log = Arc<Mutex<Vec<String>>>;

fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    log: Log,
    admin: SocketAddr,
    base_id: u32,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` with the default [`Options`] and waits until it is ready.
    pub fn start(bootstrap: &Value) -> Result<Envoy, StartError> {
        Envoy::start_with(bootstrap, &Options::default())
    }

    /// Starts Envoy on `bootstrap` and waits (at most `options.start_deadline`) until its admin
    /// endpoint's `/ready` answers 200; fails with its log if it exits first.
    pub fn start_with(bootstrap: &Value, options: &Options) -> Result<Envoy, StartError> {
        let binary = match &options.binary {
            Some(b) => b.clone(),
            None => crate::artifacts::envoy_binary().map_err(StartError::Missing)?,
        };
        let dir = TempDir::new().map_err(|e| StartError::Io("temp dir".to_owned(), e))?;
        let config = dir.path().join("envoy.json");
        let admin_file = dir.path().join("admin-address");
        let text = serde_json::to_string_pretty(bootstrap).unwrap_or_default();
        std::fs::write(&config, text)
            .map_err(|e| StartError::Io(format!("write {}", config.display()), e))?;
        let base_id = base_id();
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &options.concurrency.to_string()])
            .args(["--base-id", &base_id.to_string()])
            .args(["--log-level", &options.log_level])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StartError::Io(format!("start {}", binary.display()), e))?;
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            let echo = std::env::var_os("PORTCULLIS_E2E_ECHO").is_some();
            let _ = std::thread::Builder::new()
                .name(format!("envoy-{base_id}-log"))
                .spawn(move || {
                    // Ends when Envoy's stderr closes (it exited or was killed).
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if echo {
                            eprintln!("envoy[{base_id}]: {line}");
                        }
                        sink.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(line);
                    }
                });
        }
        let started = Instant::now();
        // Polls every 50 ms until ready, exited or the deadline.
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Lets the log reader take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Err(StartError::Exited(status, lines(&log)));
            }
            let admin = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            if let Some(admin) = admin
                && client::get(admin, "/ready").is_ok_and(|r| r.status == 200)
            {
                return Ok(Envoy {
                    child,
                    log,
                    admin,
                    base_id,
                    _dir: dir,
                });
            }
            if started.elapsed() > options.start_deadline {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                return Err(StartError::NotReady(options.start_deadline, lines(&log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin endpoint.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Its `--base-id`.
    pub fn base_id(&self) -> u32 {
        self.base_id
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every line Envoy logged so far.
    pub fn log(&self) -> Vec<String> {
        lines(&self.log)
    }

    /// The lines logged so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits (at most `timeout`) until `count` lines satisfy `pred`; returns those found.
    pub fn wait_for_log(
        &self,
        pred: impl Fn(&str) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = self.log().into_iter().filter(|l| pred(l)).collect();
            if found.len() >= count || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the admin endpoint.
    pub fn admin(&self, path: &str) -> io::Result<Resp> {
        client::get(self.admin, path)
    }

    /// Where the listener `name` listens (bound by Envoy, port 0 included), from the admin
    /// endpoint's `/listeners`.
    pub fn listener(&self, name: &str) -> io::Result<SocketAddr> {
        let r = self.admin("/listeners?format=json")?;
        let doc: Value = serde_json::from_slice(&r.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let found = doc["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .and_then(|l| {
                let a = &l["local_address"]["socket_address"];
                let ip = a["address"].as_str()?.parse::<std::net::IpAddr>().ok()?;
                let port = u16::try_from(a["port_value"].as_u64()?).ok()?;
                Some(SocketAddr::new(ip, port))
            });
        found.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no listener {name} in {}", r.text()),
            )
        })
    }

    /// A counter's or gauge's value from `/stats` (`None` if absent).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = self.admin(&format!("/stats?filter=^{name}$")).ok()?.text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
