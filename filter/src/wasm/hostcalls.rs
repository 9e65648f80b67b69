//! Every call the filter makes into the host (proxy-wasm ABI 0.2.1), none of which can panic.
//!
//! The proxy-wasm Rust SDK's wrappers panic on any status they do not expect (and declare the
//! status as an enum, so a value outside it is not even well defined). A panic kills the worker's
//! VM, and Envoy then answers 503 to every request on that worker: a host answer must never be
//! able to do that. So the filter declares the imports itself, takes every status as a number,
//! and turns each one into a value or a [`HostError`]. Statuses the ABI defines as ordinary
//! answers (a header that is absent, shared data that does not exist, a CAS mismatch) are values;
//! anything else is the failure of that one call, logged once per call and status (never with
//! the data), and the caller decides what the failure means for its request.

use crate::pairs;
use std::cell::RefCell;
use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out_data: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
        out_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_close_stream(stream: u32) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        out_token: *mut u32,
    ) -> u32;
    fn proxy_grpc_call(
        service: *const u8,
        service_size: usize,
        service_name: *const u8,
        service_name_size: usize,
        method: *const u8,
        method_size: usize,
        metadata: *const u8,
        metadata_size: usize,
        message: *const u8,
        message_size: usize,
        timeout_ms: u32,
        out_token: *mut u32,
    ) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name: *const u8,
        name_size: usize,
        out_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// ABI statuses the filter tells apart.
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

/// A call the host refused with a status it should not have given; the call's name and the
/// status, never the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    pub call: &'static str,
    pub status: u32,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} returned status {}", self.call, self.status)
    }
}

thread_local! {
    /// The (call, status) pairs this VM already logged.
    static LOGGED: RefCell<HashSet<(&'static str, u32)>> = RefCell::new(HashSet::new());
}

/// A failed call: logged the first time this VM sees that call fail with that status.
fn failed(call: &'static str, status: u32) -> HostError {
    let first = LOGGED.with(|seen| {
        seen.try_borrow_mut()
            .map(|mut seen| seen.insert((call, status)))
            .unwrap_or(false)
    });
    if first {
        log(
            Level::Warn,
            &format!(
                "portcullis: host call {call} failed with status {status} (logged once per call and status)"
            ),
        );
    }
    HostError { call, status }
}

/// `Ok(())` for status Ok, the logged failure otherwise.
fn check(call: &'static str, status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(failed(call, status))
    }
}

/// Bytes the host allocated in this VM (through [`allocate`]) and handed over.
///
/// # Safety
/// `data` is null or was returned by `allocate(size)` and not used since.
unsafe fn take_bytes(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: per the contract, `allocate(size)` made this allocation of exactly `size` bytes,
    // which the host filled; ownership passes to the Vec.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// The answer of a call that returns bytes: the bytes (Ok), `None` (NotFound), or the call's
/// failure.
///
/// # Safety
/// As for [`take_bytes`]: on Ok, `data` is null or was returned by `allocate(size)`.
unsafe fn bytes_or_absent(
    call: &'static str,
    status: u32,
    data: *mut u8,
    size: usize,
) -> Result<Option<Vec<u8>>, HostError> {
    match status {
        // SAFETY: on Ok the host allocated `size` bytes with `allocate`.
        OK => Ok(Some(unsafe { take_bytes(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(failed(call, other)),
    }
}

/// The allocator the host calls (`proxy_on_memory_allocate`) to hand bytes to the filter:
/// exactly `size` bytes, so that [`take_bytes`] can take them back.
pub fn allocate(size: usize) -> *mut u8 {
    let block: Box<[MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(block).cast::<u8>()
}

/// Log levels of the ABI.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Writes to Envoy's log. A refusal loses the line: there is nowhere else to say so.
pub fn log(level: Level, message: &str) {
    // SAFETY: the message is valid for its length during the call.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// The host's wall clock in nanoseconds since the Unix epoch; 0 if it refuses.
pub fn now_ns() -> u64 {
    let mut now = 0u64;
    // SAFETY: `now` is a valid, writable u64.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut now) };
    match check("proxy_get_current_time_nanoseconds", status) {
        Ok(()) => now,
        Err(_) => 0,
    }
}

/// Asks for `on_tick` every `period_ms`.
pub fn set_tick_period(period_ms: u32) -> Result<(), HostError> {
    // SAFETY: a plain value.
    let status = unsafe { proxy_set_tick_period_milliseconds(period_ms) };
    check("proxy_set_tick_period_milliseconds", status)
}

/// Makes `context_id` the target of the following calls in this callback.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: a plain value.
    let status = unsafe { proxy_set_effective_context(context_id) };
    check("proxy_set_effective_context", status)
}

/// Buffers the filter reads.
#[derive(Debug, Clone, Copy)]
pub enum Buffer {
    RequestBody = 0,
    HttpCallResponseBody = 4,
    GrpcReceive = 5,
    PluginConfiguration = 7,
}

/// Up to `max` bytes of a buffer; `None` when the buffer does not exist now.
pub fn get_buffer(buffer: Buffer, max: usize) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the out-parameters are valid and writable.
    let status = unsafe { proxy_get_buffer_bytes(buffer as u32, 0, max, &mut data, &mut size) };
    // SAFETY: the host filled `data` and `size` as the ABI says.
    unsafe { bytes_or_absent("proxy_get_buffer_bytes", status, data, size) }
}

/// Header maps the filter reads or edits.
#[derive(Debug, Clone, Copy)]
pub enum Map {
    /// The request's headers.
    Request = 0,
    /// The request's trailers.
    RequestTrailers = 1,
    /// The response's headers.
    Response = 2,
    /// The headers of a callout's answer.
    HttpCallResponse = 6,
}

/// Every entry of a header map (names as text, values as bytes, in order, duplicates kept).
pub fn get_map(map: Map) -> Result<Vec<(String, Vec<u8>)>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the out-parameters are valid and writable.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    check("proxy_get_header_map_pairs", status)?;
    // SAFETY: on Ok the host allocated `size` bytes with `allocate`.
    let bytes = unsafe { take_bytes(data, size) };
    pairs::decode(&bytes).map_err(|_| failed("proxy_get_header_map_pairs (malformed map)", 0))
}

/// The first value of a header; `None` when it is absent, or when the map does not exist now
/// (Envoy answers BadArgument for a map outside its phase, e.g. a callout answer that has no
/// headers because the connection was reset).
pub fn get_map_value(map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: `name` is valid for its length; the out-parameters are valid and writable.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: the host filled `data` and `size` as the ABI says.
    unsafe { bytes_or_absent("proxy_get_header_map_value", status, data, size) }
}

/// Adds a header (duplicates allowed).
pub fn add_map_value(map: Map, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: both strings are valid for their lengths during the call.
    let status = unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check("proxy_add_header_map_value", status)
}

/// Sets a header to one value (replacing all), or removes every value of it.
pub fn set_map_value(map: Map, name: &str, value: Option<&str>) -> Result<(), HostError> {
    // SAFETY: the strings are valid for their lengths during the calls.
    let (call, status) = unsafe {
        match value {
            Some(v) => (
                "proxy_replace_header_map_value",
                proxy_replace_header_map_value(
                    map as u32,
                    name.as_ptr(),
                    name.len(),
                    v.as_ptr(),
                    v.len(),
                ),
            ),
            None => (
                "proxy_remove_header_map_value",
                proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()),
            ),
        }
    };
    check(call, status)
}

/// A property (path segments joined by NUL); `None` when Envoy has no value for it.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let joined = path.join("\0");
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: `joined` is valid for its length; the out-parameters are valid and writable.
    let status = unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut data, &mut size) };
    // SAFETY: the host filled `data` and `size` as the ABI says.
    unsafe { bytes_or_absent("proxy_get_property", status, data, size) }
}

/// Sets a property whose path is one segment (Envoy keeps it as filter state `wasm.<name>`).
pub fn set_property(name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both slices are valid for their lengths during the call.
    let status =
        unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    check("proxy_set_property", status)
}

/// A shared-data entry and its CAS; `None` when the key does not exist.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: `key` is valid for its length; the out-parameters are valid and writable.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    // SAFETY: the host filled `data` and `size` as the ABI says.
    let value = unsafe { bytes_or_absent("proxy_get_shared_data", status, data, size) }?;
    Ok(value.map(|v| (v, cas)))
}

/// What a shared-data write can come to besides success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetShared {
    /// Another worker wrote the entry since it was read.
    CasMismatch,
    Failed(HostError),
}

/// Writes a shared-data entry, only if its CAS is still `cas` (when given and non-zero).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetShared> {
    // SAFETY: both slices are valid for their lengths during the call.
    let status = unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    };
    match status {
        OK => Ok(()),
        CAS_MISMATCH => Err(SetShared::CasMismatch),
        other => Err(SetShared::Failed(failed("proxy_set_shared_data", other))),
    }
}

/// Lets the paused request go on (after the current callback returns).
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: a plain value (0 = the HTTP request).
    let status = unsafe { proxy_continue_stream(0) };
    check("proxy_continue_stream", status)
}

/// Answers the request with a local reply (sent after the current callback returns).
pub fn send_local_response(
    status_code: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostError> {
    let headers = pairs::encode(headers);
    let details = "portcullis";
    // SAFETY: every slice is valid for its length during the call.
    let status = unsafe {
        proxy_send_local_response(
            u32::from(status_code),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    check("proxy_send_local_response", status)
}

/// Sends an HTTP request through an Envoy cluster; the answer comes to
/// `proxy_on_http_call_response` with the returned token.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, HostError> {
    let headers = pairs::encode(headers);
    let trailers = pairs::encode::<&str, &str>(&[]);
    let mut token = 0u32;
    // SAFETY: every slice is valid for its length during the call; `token` is writable.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    };
    check("proxy_http_call", status).map(|()| token)
}

/// Sends a unary gRPC call; the answer comes to `proxy_on_grpc_receive` (a message) or
/// `proxy_on_grpc_close` (a failure) with the returned token. `service` is a serialised
/// `GrpcService` or a cluster name.
pub fn grpc_call(
    service: &[u8],
    service_name: &str,
    method: &str,
    message: &[u8],
    timeout_ms: u32,
) -> Result<u32, HostError> {
    let metadata = pairs::encode::<&str, &str>(&[]);
    let mut token = 0u32;
    // SAFETY: every slice is valid for its length during the call; `token` is writable.
    let status = unsafe {
        proxy_grpc_call(
            service.as_ptr(),
            service.len(),
            service_name.as_ptr(),
            service_name.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    };
    check("proxy_grpc_call", status).map(|()| token)
}

/// Calls one of Envoy's foreign functions with no arguments; `Ok(false)` when this Envoy does
/// not have it.
pub fn call_foreign_function(name: &str) -> Result<bool, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: `name` is valid for its length; the out-parameters are valid and writable.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            std::ptr::null(),
            0,
            &mut data,
            &mut size,
        )
    };
    // SAFETY: a result, if any, was allocated with `allocate`; it is dropped.
    drop(unsafe { take_bytes(data, size) });
    match status {
        OK => Ok(true),
        NOT_FOUND => Ok(false),
        other => Err(failed("proxy_call_foreign_function", other)),
    }
}

/// Metric kinds of the ABI.
#[derive(Debug, Clone, Copy)]
pub enum MetricKind {
    Counter = 0,
    Histogram = 2,
}

/// Defines a metric; its id in this VM.
pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: `name` is valid for its length and `id` is writable.
    let status = unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    check("proxy_define_metric", status).map(|()| id)
}

/// Adds to a counter.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: plain values.
    let status = unsafe { proxy_increment_metric(id, offset) };
    check("proxy_increment_metric", status)
}

/// Records a histogram sample.
pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: plain values.
    let status = unsafe { proxy_record_metric(id, value) };
    check("proxy_record_metric", status)
}

/// Resets the request (used only when Envoy refused both to reply and to resume, so that the
/// request does not hang).
pub fn close_request() -> Result<(), HostError> {
    // SAFETY: a plain value (0 = the HTTP request).
    let status = unsafe { proxy_close_stream(0) };
    check("proxy_close_stream", status)
}
