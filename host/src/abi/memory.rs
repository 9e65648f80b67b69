//! Guest memory access for hostcalls: every pointer/length is checked (a bad one answers
//! InvalidMemoryAccess, CPPH `WasmBase::getMemory`/`setWord`), and returned bytes are allocated
//! with the guest's allocator, exactly `len` bytes, `(0, 0)` when empty (CPPH
//! `WasmBase::copyToPointerSize`).

use super::state::HostState;
use super::status::{HcErr, HcResult, Status};
use wasmtime::Caller;

fn range(ptr: i32, len: i32, size: usize) -> Result<std::ops::Range<usize>, HcErr> {
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len as u32 as usize)
        .ok_or(HcErr::Status(Status::InvalidMemoryAccess))?;
    if end > size {
        return Err(HcErr::Status(Status::InvalidMemoryAccess));
    }
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of the guest.
pub(crate) fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> HcResult<Vec<u8>> {
    let Some(memory) = caller.data().memory else {
        return Err(HcErr::Status(Status::InvalidMemoryAccess));
    };
    let data = memory.data(&*caller);
    let r = range(ptr, len, data.len())?;
    Ok(data[r].to_vec())
}

/// Reads text (names, keys); invalid UTF-8 is replaced, as no Envoy name contains it.
pub(crate) fn read_string(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> HcResult<String> {
    let bytes = read(caller, ptr, len)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Writes raw bytes at `ptr`.
pub(crate) fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> HcResult<()> {
    let Some(memory) = caller.data().memory else {
        return Err(HcErr::Status(Status::InvalidMemoryAccess));
    };
    let data = memory.data_mut(&mut *caller);
    let r = range(ptr, bytes.len() as i32, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32 out-parameter.
pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> HcResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian u64 out-parameter.
pub(crate) fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, value: u64) -> HcResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Allocates `data.len()` bytes in the guest, copies `data` there and writes (ptr, len) to the
/// out-parameters; empty data writes (0, 0) without allocating.
pub(crate) fn copy_out(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ptr_out: i32,
    len_out: i32,
) -> HcResult<()> {
    if data.is_empty() {
        write_u32(caller, ptr_out, 0)?;
        return write_u32(caller, len_out, 0);
    }
    let Some(alloc) = caller.data().alloc.clone() else {
        return Err(HcErr::Status(Status::InvalidMemoryAccess));
    };
    let len = i32::try_from(data.len()).map_err(|_| HcErr::Status(Status::InvalidMemoryAccess))?;
    let ptr = alloc.call(&mut *caller, len).map_err(HcErr::Trap)?;
    if ptr == 0 {
        return Err(HcErr::Status(Status::InvalidMemoryAccess));
    }
    write(caller, ptr, data)?;
    write_u32(caller, ptr_out, ptr as u32)?;
    write_u32(caller, len_out, len as u32)
}
