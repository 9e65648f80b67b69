//! WASI preview 1 from wasmtime-wasi, adjusted where Envoy's cpp-host differs in a way a proxy-wasm
//! module can see (CPPH `exports.cc`): stdout/stderr writes become log lines, the environment is
//! only `PluginConfig::environment`, no args, no preopens.

use super::hostcalls::log_record;
use super::state::HostState;
use super::types::{LogLevel, PluginConfig};
use wasmtime::{Caller, Linker};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;

/// The WASI context of one VM: environment from the plugin, nothing inherited.
pub(crate) fn context(plugin: &PluginConfig) -> WasiP1Ctx {
    let mut builder = WasiCtxBuilder::new();
    builder.envs(&plugin.environment);
    builder.build_p1()
}

/// wasmtime-wasi's preview 1 functions, then Envoy's `fd_write` on top.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |s: &mut HostState| &mut s.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, written_out: i32| -> i32 {
            fd_write(&mut c, fd, iovs, n, written_out)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// CPPH `wasi_unstable_fd_write`: fd 1 → one info line, fd 2 → one error line, iovecs
/// concatenated, one trailing newline removed, empty writes not logged; other fds → BADF.
fn fd_write(c: &mut Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, written_out: i32) -> i32 {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return ERRNO_BADF,
    };
    let Some(memory) = c.data().memory else {
        return ERRNO_FAULT;
    };
    let mut bytes = Vec::new();
    {
        let data = memory.data(&*c);
        for i in 0..(n as u32 as usize) {
            let at = (iovs as u32 as usize).saturating_add(i.saturating_mul(8));
            let Some(iov) = data.get(at..at.saturating_add(8)) else {
                return ERRNO_FAULT;
            };
            let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]) as usize;
            let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
            let Some(chunk) = data.get(ptr..ptr.saturating_add(len)) else {
                return ERRNO_FAULT;
            };
            bytes.extend_from_slice(chunk);
        }
    }
    let total = bytes.len() as u32;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if !bytes.is_empty() {
        let msg = String::from_utf8_lossy(&bytes).into_owned();
        log_record(c.data_mut(), level, msg);
    }
    let Some(out) = memory
        .data_mut(&mut *c)
        .get_mut(written_out as u32 as usize..(written_out as u32 as usize).saturating_add(4))
    else {
        return ERRNO_FAULT;
    };
    out.copy_from_slice(&total.to_le_bytes());
    ERRNO_SUCCESS
}
