//! Loopback only: listeners on 127.0.0.1 with ports the kernel picks, and temporary folders
//! removed on drop.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// 127.0.0.1, the only address the suites use.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A listener on 127.0.0.1 with a port the kernel picked.
pub fn bind() -> io::Result<TcpListener> {
    TcpListener::bind((LOOPBACK, 0))
}

/// A port that was free a moment ago. Prefer port 0 where the program binds it itself (Envoy's
/// listeners do, see [`crate::envoy::Envoy::listener`]): between this call and the bind, another
/// process may take the port. Useful for an address nobody listens on.
pub fn free_port() -> io::Result<u16> {
    Ok(bind()?.local_addr()?.port())
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((LOOPBACK, port))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A folder under the system's temporary folder, unique to this process and call, removed
/// (with its content) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `portcullis-e2e-<pid>-<n>`.
    pub fn new() -> io::Result<TempDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("portcullis-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
