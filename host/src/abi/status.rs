//! Result codes (CPPSDK `proxy_wasm_common.h` WasmResult) and the hostcall error plumbing.

/// WasmResult values Envoy returns from hostcalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    #[allow(dead_code)]
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    #[allow(dead_code)]
    InternalFailure = 10,
    Unimplemented = 12,
}

/// A hostcall stops either with a status for the guest or with a trap.
pub(crate) enum HcErr {
    /// Returned to the guest as the call's result.
    Status(Status),
    /// Aborts the guest call (restricted hostcall, allocator trap).
    Trap(wasmtime::Error),
}

impl From<Status> for HcErr {
    fn from(s: Status) -> HcErr {
        HcErr::Status(s)
    }
}

pub(crate) type HcResult<T> = Result<T, HcErr>;

/// Turns a hostcall body's outcome into what wasmtime returns to the guest.
pub(crate) fn finish(result: HcResult<Status>) -> wasmtime::Result<i32> {
    match result {
        Ok(s) | Err(HcErr::Status(s)) => Ok(s as i32),
        Err(HcErr::Trap(e)) => Err(e),
    }
}
