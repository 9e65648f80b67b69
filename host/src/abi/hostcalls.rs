//! The `env.proxy_*` imports of ABI 0.2.1 with Envoy's semantics and result codes (CPPH
//! `exports.cc` for argument handling, ECTX `context.cc` for what each call does in Envoy).
//! The Rust SDK panics on codes it does not expect, so every code here is the one Envoy returns.

use super::memory::{copy_out, read, read_string, write_u32, write_u64};
use super::pairs;
use super::properties;
use super::state::{HostState, Phase};
use super::status::{HcErr, HcResult, Status, finish};
use super::types::{Direction, Effect, HeaderMap, LogLevel, LogRecord};
use crate::stats::MetricKind;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, HostState>;

/// Every proxy_* call but `proxy_log` traps during `_initialize` (CPPH `wasm.cc` startVm; V8
/// "restricted_callback").
fn running(caller: &C<'_>, name: &str) -> HcResult<()> {
    if caller.data().phase == Phase::Initializing {
        return Err(HcErr::Trap(wasmtime::Error::msg(format!(
            "restricted_callback: {name} is not allowed while the VM starts (_initialize)"
        ))));
    }
    Ok(())
}

/// Registers every `env` import Envoy registers for ABI 0.2.1 (CPPH `wasm.cc` registerCallbacks).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    add_misc(linker)?;
    add_buffers(linker)?;
    add_maps(linker)?;
    add_stream_control(linker)?;
    add_callouts(linker)?;
    add_shared(linker)?;
    add_metrics(linker)?;
    add_properties(linker)?;
    Ok(())
}

/// Logs one record from the module (ECTX `Context::log`); also used for WASI stdout/stderr.
pub(crate) fn log_record(state: &mut HostState, level: LogLevel, message: String) {
    if level >= LogLevel::Error {
        state.last_error_log = Some(message.clone());
    }
    let plugin = &state.plugin;
    state.shared.log(LogRecord {
        level,
        plugin_name: plugin.name.clone(),
        root_id: plugin.root_id.clone(),
        vm_id: plugin.vm_id.clone(),
        worker: state.worker,
        message,
    });
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn add_misc(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| {
            finish((|| {
                let Some(level) = LogLevel::from_abi(level) else {
                    return Err(Status::BadArgument.into());
                };
                let msg = read(&mut c, ptr, len)?;
                let msg = String::from_utf8_lossy(&msg).into_owned();
                log_record(c.data_mut(), level, msg);
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, out: i32| {
        finish((|| {
            running(&c, "proxy_get_log_level")?;
            let level = c.data().shared.log_level().to_abi();
            write_u32(&mut c, out, level)?;
            Ok(Status::Ok)
        })())
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, out: i32| {
            finish((|| {
                running(&c, "proxy_get_current_time_nanoseconds")?;
                write_u64(&mut c, out, now_nanos())?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| {
            finish((|| {
                running(&c, "proxy_set_tick_period_milliseconds")?;
                // One timer per root context (EWASM `Wasm::setTimerPeriod`); this VM has one root.
                let period = Duration::from_millis(u64::from(ms as u32));
                c.data_mut().pending.push(Effect::SetTickPeriod(period));
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| {
            finish((|| {
                running(&c, "proxy_set_effective_context")?;
                let id = id as u32;
                let s = c.data_mut();
                if id != 0 && (id == s.root_id || s.streams.get(&id).is_some_and(|st| st.created)) {
                    s.effective = id;
                    Ok(Status::Ok)
                } else {
                    Err(Status::BadArgument.into())
                }
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_done", |mut c: C<'_>| {
        finish((|| {
            running(&c, "proxy_done")?;
            let s = c.data_mut();
            if s.done_pending {
                s.done_pending = false;
                s.pending.push(Effect::Done);
                Ok(Status::Ok)
            } else {
                Err(Status::NotFound.into())
            }
        })())
    })?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, _ap: i32, _al: i32, _rp: i32, _rl: i32| {
            finish((|| {
                running(&c, "proxy_call_foreign_function")?;
                let name = read(&mut c, np, nl)?;
                match name.as_slice() {
                    // EWASM `foreign.cc` (Envoy >= 1.33): clears the route cache of the
                    // effective stream, if there is one; Ok either way, no result. (For the
                    // ABIs the host loads, a request-header change already does; see
                    // `map_mut`.)
                    b"clear_route_cache" => {
                        if let Some(st) = c.data_mut().effective_stream_mut() {
                            st.route_cache_cleared = true;
                        }
                        Ok(Status::Ok)
                    }
                    // The others (compress, declare_property, set_envoy_filter_state, expr_*)
                    // are not provided; an unknown name is NotFound in Envoy.
                    _ => Err(Status::NotFound.into()),
                }
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_out: i32, ptr_out: i32, len_out: i32| {
            finish((|| {
                running(&c, "proxy_get_status")?;
                let (code, msg) = c.data().status.clone();
                write_u32(&mut c, code_out, code)?;
                copy_out(&mut c, &msg, ptr_out, len_out)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    // Registered by Envoy besides the ABI (CPPH `wasm.cc`): no-ops here.
    linker.func_wrap(
        "env",
        "emscripten_notify_memory_growth",
        |_: C<'_>, _: i32| {},
    )?;
    linker.func_wrap("env", "pthread_equal", |_: C<'_>, a: i32, b: i32| {
        i32::from(a == b)
    })?;
    Ok(())
}

/// Buffer 0/1 index for a stream, or `None`.
fn body_index(kind: i32) -> Option<usize> {
    match kind {
        0 => Some(0),
        1 => Some(1),
        _ => None,
    }
}

/// The bytes of a readable buffer now (ECTX `getBuffer`), `Err(status)` if absent.
fn buffer_now(s: &HostState, kind: i32) -> Result<Vec<u8>, Status> {
    match kind {
        0 | 1 => {
            let i = usize::from(kind == 1);
            // Outside their window body buffers read as empty.
            Ok(s.effective_stream()
                .and_then(|st| st.bodies[i].clone())
                .unwrap_or_default())
        }
        2 | 3 => Err(Status::NotFound),
        4 => s.call.http_body.clone().ok_or(Status::NotFound),
        5 => Ok(s.call.grpc_message.clone().unwrap_or_default()),
        6 => Ok(s.plugin.vm_configuration.clone()),
        7 if s.in_configure => Ok(s.plugin.configuration.clone()),
        7 | 8 => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn add_buffers(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, ptr_out: i32, len_out: i32| {
            finish((|| {
                running(&c, "proxy_get_buffer_bytes")?;
                let data = buffer_now(c.data(), kind)?;
                let start = start as u32 as usize;
                let end = start.saturating_add(max as u32 as usize).min(data.len());
                let slice = data.get(start..end).unwrap_or_default();
                copy_out(&mut c, slice, ptr_out, len_out)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, kind: i32, len_out: i32, flags_out: i32| {
            finish((|| {
                running(&c, "proxy_get_buffer_status")?;
                let data = buffer_now(c.data(), kind)?;
                write_u32(&mut c, len_out, data.len() as u32)?;
                write_u32(&mut c, flags_out, 0)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            finish((|| {
                running(&c, "proxy_set_buffer_bytes")?;
                let data = read(&mut c, ptr, len)?;
                let Some(i) = body_index(kind) else {
                    return Err(Status::BadArgument.into());
                };
                let Some(body) = c
                    .data_mut()
                    .effective_stream_mut()
                    .and_then(|st| st.bodies[i].as_mut())
                else {
                    return Err(Status::BadArgument.into());
                };
                // Envoy supports two shapes only (ECTX `Buffer::copyFrom`): start 0 drains
                // `size` bytes then prepends; start >= length appends.
                let start = start as u32 as usize;
                let size = size as u32 as usize;
                if start == 0 {
                    let drain = size.min(body.len());
                    body.drain(..drain);
                    body.splice(0..0, data);
                } else if start >= body.len() {
                    body.extend_from_slice(&data);
                } else {
                    return Err(Status::BadArgument.into());
                }
                Ok(Status::Ok)
            })())
        },
    )?;
    Ok(())
}

/// How a map lookup went (ECTX `getMap` / `getConstMap`).
enum MapRef<'a> {
    Present(&'a HeaderMap),
    /// Not available now; `in_log` picks NotFound over BadArgument for single values.
    Absent {
        in_log: bool,
    },
    Invalid,
}

fn map_ref(s: &HostState, kind: i32) -> MapRef<'_> {
    match kind {
        0..=3 => {
            let Some(st) = s.effective_stream() else {
                return MapRef::Absent { in_log: false };
            };
            match &st.maps[kind as usize] {
                Some(slot) => MapRef::Present(&slot.map),
                None => MapRef::Absent { in_log: st.in_log },
            }
        }
        4..=7 => match &s.call.maps[(kind - 4) as usize] {
            Some(map) => MapRef::Present(map),
            None => MapRef::Absent { in_log: false },
        },
        _ => MapRef::Invalid,
    }
}

/// The writable map now, or BadArgument.
/// A header map the module may change. Changing the request headers clears the stream's route
/// cache: Envoy does so for modules of ABI 0.2.1 and older, the only ones the host loads (since
/// Envoy 1.33 only newer ABIs must call `clear_route_cache` instead; envoy PR #36671).
fn map_mut(s: &mut HostState, kind: i32) -> Result<&mut HeaderMap, Status> {
    if !(0..=3).contains(&kind) {
        return Err(Status::BadArgument);
    }
    let Some(st) = s.effective_stream_mut() else {
        return Err(Status::BadArgument);
    };
    let writable = st.maps[kind as usize]
        .as_ref()
        .is_some_and(|slot| slot.writable);
    if !writable {
        return Err(Status::BadArgument);
    }
    if kind == 0 {
        st.route_cache_cleared = true;
    }
    match st.maps[kind as usize].as_mut() {
        Some(slot) => Ok(&mut slot.map),
        None => Err(Status::BadArgument),
    }
}

fn add_maps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, kind: i32, ptr_out: i32, len_out: i32| {
            finish((|| {
                running(&c, "proxy_get_header_map_pairs")?;
                let bytes = match map_ref(c.data(), kind) {
                    MapRef::Present(map) => pairs::serialize_map(map),
                    MapRef::Absent { .. } => Vec::new(),
                    MapRef::Invalid => return Err(Status::BadArgument.into()),
                };
                copy_out(&mut c, &bytes, ptr_out, len_out)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, kind: i32, ptr: i32, len: i32| {
            finish((|| {
                running(&c, "proxy_set_header_map_pairs")?;
                let bytes = read(&mut c, ptr, len)?;
                // Malformed input counts as empty, so the map is cleared (CPPH `pairs_util.cc`).
                let new = pairs::parse_map(&bytes).unwrap_or_default();
                let map = map_mut(c.data_mut(), kind)?;
                *map = new;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, ptr_out: i32, len_out: i32| {
            finish((|| {
                running(&c, "proxy_get_header_map_value")?;
                let key = read_string(&mut c, kp, kl)?;
                let value = match map_ref(c.data(), kind) {
                    MapRef::Present(map) => map.get(&key).map(<[u8]>::to_vec),
                    MapRef::Absent { in_log: true } => return Err(Status::NotFound.into()),
                    MapRef::Absent { in_log: false } | MapRef::Invalid => {
                        return Err(Status::BadArgument.into());
                    }
                };
                let Some(value) = value else {
                    return Err(Status::NotFound.into());
                };
                copy_out(&mut c, &value, ptr_out, len_out)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            finish((|| {
                running(&c, "proxy_add_header_map_value")?;
                let key = read_string(&mut c, kp, kl)?;
                let value = read(&mut c, vp, vl)?;
                map_mut(c.data_mut(), kind)?.add(&key, &value);
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            finish((|| {
                running(&c, "proxy_replace_header_map_value")?;
                let key = read_string(&mut c, kp, kl)?;
                let value = read(&mut c, vp, vl)?;
                map_mut(c.data_mut(), kind)?.replace(&key, &value);
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, kind: i32, kp: i32, kl: i32| {
            finish((|| {
                running(&c, "proxy_remove_header_map_value")?;
                let key = read_string(&mut c, kp, kl)?;
                map_mut(c.data_mut(), kind)?.remove(&key);
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, kind: i32, out: i32| {
            finish((|| {
                running(&c, "proxy_get_header_map_size")?;
                let size = match map_ref(c.data(), kind) {
                    MapRef::Present(map) => map.byte_size(),
                    _ => return Err(Status::BadArgument.into()),
                };
                write_u32(&mut c, out, size as u32)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    Ok(())
}

fn add_stream_control(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_continue_stream", |mut c: C<'_>, kind: i32| {
        finish((|| {
            running(&c, "proxy_continue_stream")?;
            let s = c.data_mut();
            let direction = match kind {
                0 => Direction::Request,
                1 => Direction::Response,
                // Downstream read resume: no TCP filters here, nothing to do.
                2 => return Ok(Status::Ok),
                3 => return Err(Status::Unimplemented.into()),
                _ => return Err(Status::BadArgument.into()),
            };
            if s.effective_stream().is_some() {
                let stream = s.effective;
                s.pending.push(Effect::ContinueStream {
                    stream,
                    direction,
                    held_headers: None,
                });
            }
            Ok(Status::Ok)
        })())
    })?;
    linker.func_wrap("env", "proxy_close_stream", |mut c: C<'_>, kind: i32| {
        finish((|| {
            running(&c, "proxy_close_stream")?;
            let s = c.data_mut();
            let stream = s.effective;
            let effect = match kind {
                0 => Effect::CloseStream {
                    stream,
                    direction: Direction::Request,
                },
                1 => Effect::CloseStream {
                    stream,
                    direction: Direction::Response,
                },
                2 | 3 => Effect::CloseConnection {
                    stream,
                    downstream: kind == 2,
                },
                _ => return Err(Status::BadArgument.into()),
            };
            if s.effective_stream().is_some() {
                s.pending.push(effect);
            }
            Ok(Status::Ok)
        })())
    })?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32| {
            finish((|| {
                running(&c, "proxy_send_local_response")?;
                let details = read_string(&mut c, dp, dl)?.replace(' ', "_");
                let body = read(&mut c, bp, bl)?;
                let headers = read(&mut c, hp, hl)?;
                let headers = pairs::parse_map(&headers).unwrap_or_default();
                let s = c.data_mut();
                let stream = s.effective;
                // Always Ok; from a root context it does nothing (ECTX `sendLocalResponse`).
                let Some(st) = s.effective_stream_mut() else {
                    return Ok(Status::Ok);
                };
                st.force_stop = true;
                if st.local_reply_sent {
                    // Envoy ignores a second reply but still forces Stop (envoy issue #28826).
                    return Ok(Status::Ok);
                }
                st.local_reply_sent = true;
                s.pending.push(Effect::LocalReply {
                    stream,
                    status: status as u32,
                    headers,
                    body,
                    grpc_status: (0..=16).contains(&grpc).then_some(grpc as u32),
                    details,
                });
                Ok(Status::Ok)
            })())
        },
    )?;
    Ok(())
}

/// Cluster check for callouts: `None` means every name is accepted.
fn cluster_known(s: &HostState, cluster: &str) -> bool {
    s.shared.cluster_known(cluster)
}

fn timeout_of(ms: i32) -> Result<Option<Duration>, Status> {
    match ms {
        0 => Ok(None),
        ms if ms < 0 => Err(Status::BadArgument),
        ms => Ok(Some(Duration::from_millis(ms as u64))),
    }
}

fn add_callouts(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         token_out: i32| {
            finish((|| {
                running(&c, "proxy_http_call")?;
                let cluster = read_string(&mut c, up, ul)?;
                let headers = read(&mut c, hp, hl)?;
                let body = read(&mut c, bp, bl)?;
                let trailers = read(&mut c, tp, tl)?;
                // ECTX `httpCall`: unknown cluster, missing pseudo-headers or a negative
                // timeout are BadArgument.
                if !cluster_known(c.data(), &cluster) {
                    return Err(Status::BadArgument.into());
                }
                let headers = pairs::parse_map(&headers).unwrap_or_default();
                if [":path", ":method", ":authority"]
                    .iter()
                    .any(|h| headers.get(h).is_none_or(<[u8]>::is_empty))
                {
                    return Err(Status::BadArgument.into());
                }
                let trailers = pairs::parse_map(&trailers).unwrap_or_default();
                let timeout = timeout_of(timeout)?;
                let s = c.data_mut();
                let token = s.next_token(0);
                s.http_calls.insert(token);
                s.pending.push(Effect::HttpCall {
                    token,
                    cluster,
                    headers,
                    body,
                    trailers,
                    timeout,
                });
                write_u32(&mut c, token_out, token)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         mdp: i32,
         mdl: i32,
         msgp: i32,
         msgl: i32,
         timeout: i32,
         token_out: i32| {
            finish((|| {
                running(&c, "proxy_grpc_call")?;
                let cluster = grpc_cluster(&mut c, sp, sl)?;
                let service = read_string(&mut c, np, nl)?;
                let method = read_string(&mut c, mp, ml)?;
                let metadata = read(&mut c, mdp, mdl)?;
                let message = read(&mut c, msgp, msgl)?;
                let initial_metadata = pairs::parse_map(&metadata).unwrap_or_default();
                let timeout = timeout_of(timeout)?;
                let s = c.data_mut();
                let token = s.next_token(1);
                s.grpc_calls.insert(token);
                s.pending.push(Effect::GrpcCall {
                    token,
                    cluster,
                    service,
                    method,
                    initial_metadata,
                    message,
                    timeout,
                });
                write_u32(&mut c, token_out, token)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C<'_>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         mdp: i32,
         mdl: i32,
         token_out: i32| {
            finish((|| {
                running(&c, "proxy_grpc_stream")?;
                let cluster = grpc_cluster(&mut c, sp, sl)?;
                let service = read_string(&mut c, np, nl)?;
                let method = read_string(&mut c, mp, ml)?;
                let metadata = read(&mut c, mdp, mdl)?;
                let initial_metadata = pairs::parse_map(&metadata).unwrap_or_default();
                let s = c.data_mut();
                let token = s.next_token(2);
                s.grpc_streams.insert(token);
                s.pending.push(Effect::GrpcStreamOpen {
                    token,
                    cluster,
                    service,
                    method,
                    initial_metadata,
                });
                write_u32(&mut c, token_out, token)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: C<'_>, token: i32, mp: i32, ml: i32, end: i32| {
            finish((|| {
                running(&c, "proxy_grpc_send")?;
                let token = token as u32;
                let message = read(&mut c, mp, ml)?;
                let s = c.data_mut();
                if token & 3 != 2 {
                    return Err(Status::BadArgument.into());
                }
                if !s.grpc_streams.contains(&token) {
                    return Err(Status::NotFound.into());
                }
                s.pending.push(Effect::GrpcSend {
                    token,
                    message,
                    end_stream: end != 0,
                });
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |mut c: C<'_>, token: i32| {
        finish((|| {
            running(&c, "proxy_grpc_cancel")?;
            grpc_end(c.data_mut(), token as u32, true)
        })())
    })?;
    linker.func_wrap("env", "proxy_grpc_close", |mut c: C<'_>, token: i32| {
        finish((|| {
            running(&c, "proxy_grpc_close")?;
            grpc_end(c.data_mut(), token as u32, false)
        })())
    })?;
    Ok(())
}

/// The gRPC target: Envoy first parses the bytes as a serialized
/// `envoy.config.core.v3.GrpcService`, then falls back to a cluster name (ECTX `grpcCall`,
/// envoy PR #15208). A GrpcService with `envoy_grpc.cluster_name` names its cluster; one
/// without (the empty string parses as such, as does any other valid protobuf wire data, a
/// `google_grpc` target included, which this host does not run) fails client creation:
/// BadArgument. An unknown cluster is ParseFailure.
fn grpc_cluster(c: &mut C<'_>, ptr: i32, len: i32) -> HcResult<String> {
    let raw = read(c, ptr, len)?;
    let name = match grpc_service_cluster(&raw) {
        GrpcTarget::Service(Some(cluster)) => cluster,
        GrpcTarget::Service(None) => return Err(Status::BadArgument.into()),
        GrpcTarget::NotProto => String::from_utf8(raw).map_err(|_| Status::ParseFailure)?,
    };
    if !cluster_known(c.data(), &name) {
        return Err(Status::ParseFailure.into());
    }
    Ok(name)
}

enum GrpcTarget {
    /// Valid protobuf: a GrpcService, with its `envoy_grpc.cluster_name` if it has one.
    Service(Option<String>),
    /// Not protobuf wire data: a cluster name.
    NotProto,
}

/// `GrpcService { EnvoyGrpc envoy_grpc = 1; … }`, `EnvoyGrpc { string cluster_name = 1; … }`.
fn grpc_service_cluster(bytes: &[u8]) -> GrpcTarget {
    let Some(fields) = proto_fields(bytes) else {
        return GrpcTarget::NotProto;
    };
    let cluster = fields
        .iter()
        .rev()
        .find(|(n, _)| *n == 1)
        .and_then(|(_, v)| v.as_ref())
        .and_then(|envoy_grpc| proto_fields(envoy_grpc))
        .and_then(|inner| {
            inner
                .into_iter()
                .rev()
                .find(|(n, v)| *n == 1 && v.is_some())
                .and_then(|(_, v)| String::from_utf8(v?).ok())
        })
        .filter(|c| !c.is_empty());
    GrpcTarget::Service(cluster)
}

/// The fields of a protobuf message: number and, for length-delimited ones, the bytes; `None`
/// when the data is not valid wire format.
fn proto_fields(mut b: &[u8]) -> Option<Vec<(u64, Option<Vec<u8>>)>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(x & 0x7f) << (7 * i);
            if x < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn skip<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = varint(&mut b)?;
        let number = tag >> 3;
        if number == 0 {
            return None;
        }
        match tag & 7 {
            0 => {
                varint(&mut b)?;
                out.push((number, None));
            }
            1 => {
                skip(&mut b, 8)?;
                out.push((number, None));
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                out.push((number, Some(skip(&mut b, len)?.to_vec())));
            }
            5 => {
                skip(&mut b, 4)?;
                out.push((number, None));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `proxy_grpc_cancel` / `proxy_grpc_close` (ECTX `grpcCancel`/`grpcClose`).
fn grpc_end(s: &mut HostState, token: u32, cancel: bool) -> HcResult<Status> {
    let known = match token & 3 {
        1 => s.grpc_calls.remove(&token),
        2 => s.grpc_streams.remove(&token),
        _ => return Err(Status::BadArgument.into()),
    };
    if !known {
        return Err(Status::NotFound.into());
    }
    s.pending.push(if cancel {
        Effect::GrpcCancel { token }
    } else {
        Effect::GrpcClose { token }
    });
    Ok(Status::Ok)
}

fn add_shared(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ptr_out: i32, len_out: i32, cas_out: i32| {
            finish((|| {
                running(&c, "proxy_get_shared_data")?;
                let key = read_string(&mut c, kp, kl)?;
                let s = c.data();
                let Some((value, cas)) = s.shared.get_shared_data(&s.plugin.vm_id, &key) else {
                    return Err(Status::NotFound.into());
                };
                copy_out(&mut c, &value, ptr_out, len_out)?;
                write_u32(&mut c, cas_out, cas)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
            finish((|| {
                running(&c, "proxy_set_shared_data")?;
                let key = read_string(&mut c, kp, kl)?;
                let value = read(&mut c, vp, vl)?;
                let s = c.data();
                match s
                    .shared
                    .set_shared_data(&s.plugin.vm_id, &key, &value, cas as u32)
                {
                    super::shared::CasResult::Ok => Ok(Status::Ok),
                    super::shared::CasResult::Mismatch => Err(Status::CasMismatch.into()),
                }
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, out: i32| {
            finish((|| {
                running(&c, "proxy_register_shared_queue")?;
                let name = read_string(&mut c, np, nl)?;
                let s = c.data();
                let id = s
                    .shared
                    .register_queue(&s.plugin.vm_id, &name, s.worker, s.vm_key);
                write_u32(&mut c, out, id)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, out: i32| {
            finish((|| {
                running(&c, "proxy_resolve_shared_queue")?;
                let vm_id = read_string(&mut c, vp, vl)?;
                let name = read_string(&mut c, np, nl)?;
                let s = c.data();
                let vm_id = if vm_id.is_empty() {
                    s.plugin.vm_id.clone()
                } else {
                    vm_id
                };
                let Some(id) = s.shared.resolve_queue(&vm_id, &name) else {
                    return Err(Status::NotFound.into());
                };
                write_u32(&mut c, out, id)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, vp: i32, vl: i32| {
            finish((|| {
                running(&c, "proxy_enqueue_shared_queue")?;
                let value = read(&mut c, vp, vl)?;
                if c.data().shared.enqueue(id as u32, &value) {
                    Ok(Status::Ok)
                } else {
                    Err(Status::NotFound.into())
                }
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ptr_out: i32, len_out: i32| {
            finish((|| {
                running(&c, "proxy_dequeue_shared_queue")?;
                match c.data().shared.dequeue(id as u32) {
                    None => Err(Status::NotFound.into()),
                    Some(None) => Err(Status::Empty.into()),
                    Some(Some(value)) => {
                        copy_out(&mut c, &value, ptr_out, len_out)?;
                        Ok(Status::Ok)
                    }
                }
            })())
        },
    )?;
    Ok(())
}

fn add_metrics(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, out: i32| {
            finish((|| {
                running(&c, "proxy_define_metric")?;
                let name = read_string(&mut c, np, nl)?;
                let (metric_kind, slot) = match kind {
                    0 => (MetricKind::Counter, 0),
                    1 => (MetricKind::Gauge, 1),
                    2 => (MetricKind::Histogram, 2),
                    _ => return Err(Status::BadArgument.into()),
                };
                let s = c.data_mut();
                // Envoy names the stat `wasmcustom.<name>` (EWASM `stats_handler.h`, PR #17357)
                // and hands out a new id per call, type in the low two bits (ECTX `defineMetric`).
                let stat = s
                    .shared
                    .stats()
                    .define(metric_kind, &format!("wasmcustom.{name}"));
                s.next_metric[slot] = s.next_metric[slot].wrapping_add(4);
                let id = s.next_metric[slot];
                s.metrics.insert(id, stat);
                write_u32(&mut c, out, id)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, delta: i64| {
            finish((|| {
                running(&c, "proxy_increment_metric")?;
                let s = c.data();
                let Some(&stat) = s.metrics.get(&(id as u32)) else {
                    return Err(Status::NotFound.into());
                };
                let stats = s.shared.stats();
                match stats.kind(stat) {
                    MetricKind::Counter if delta > 0 => stats.add_counter(stat, delta as u64),
                    MetricKind::Gauge => stats.add_gauge(stat, delta),
                    MetricKind::Counter | MetricKind::Histogram => {
                        return Err(Status::BadArgument.into());
                    }
                }
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| {
            finish((|| {
                running(&c, "proxy_record_metric")?;
                let s = c.data();
                let Some(&stat) = s.metrics.get(&(id as u32)) else {
                    return Err(Status::NotFound.into());
                };
                let stats = s.shared.stats();
                let value = value as u64;
                match stats.kind(stat) {
                    MetricKind::Counter => stats.add_counter(stat, value),
                    MetricKind::Gauge => stats.set_gauge(stat, value),
                    MetricKind::Histogram => stats.record(stat, value),
                }
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, out: i32| {
            finish((|| {
                running(&c, "proxy_get_metric")?;
                let s = c.data();
                let Some(&stat) = s.metrics.get(&(id as u32)) else {
                    return Err(Status::NotFound.into());
                };
                let stats = s.shared.stats();
                if stats.kind(stat) == MetricKind::Histogram {
                    return Err(Status::BadArgument.into());
                }
                let value = stats.value(stat);
                write_u64(&mut c, out, value)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    Ok(())
}

fn add_properties(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ptr_out: i32, len_out: i32| {
            finish((|| {
                running(&c, "proxy_get_property")?;
                let path = read(&mut c, pp, pl)?;
                let value = properties::get(c.data(), &path)?;
                copy_out(&mut c, &value, ptr_out, len_out)?;
                Ok(Status::Ok)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| {
            finish((|| {
                running(&c, "proxy_set_property")?;
                let path = read(&mut c, pp, pl)?;
                let value = read(&mut c, vp, vl)?;
                // Filter state `wasm.<path>`; no stream (root context) → NotFound (ECTX `setProperty`).
                let Some(st) = c.data_mut().effective_stream_mut() else {
                    return Err(Status::NotFound.into());
                };
                st.filter_state.insert(path, value);
                Ok(Status::Ok)
            })())
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod grpc_target_tests {
    use super::{GrpcTarget, grpc_service_cluster};

    fn service(cluster: &str) -> Vec<u8> {
        // GrpcService { envoy_grpc (1) { cluster_name (1): cluster } }
        let mut inner = vec![0x0a, cluster.len() as u8];
        inner.extend_from_slice(cluster.as_bytes());
        let mut out = vec![0x0a, inner.len() as u8];
        out.extend(inner);
        out
    }

    #[test]
    fn a_serialized_grpc_service_names_its_cluster() {
        assert!(matches!(
            grpc_service_cluster(&service("ratelimit")),
            GrpcTarget::Service(Some(c)) if c == "ratelimit"
        ));
    }

    #[test]
    fn valid_wire_data_without_envoy_grpc_has_no_target() {
        // The empty message, and google_grpc (2) instead of envoy_grpc.
        assert!(matches!(
            grpc_service_cluster(b""),
            GrpcTarget::Service(None)
        ));
        assert!(matches!(
            grpc_service_cluster(&[0x12, 0x00]),
            GrpcTarget::Service(None)
        ));
    }

    #[test]
    fn plain_names_are_cluster_names() {
        for name in ["ratelimit", "auth_cluster", "grpc_cluster", "x"] {
            assert!(
                matches!(grpc_service_cluster(name.as_bytes()), GrpcTarget::NotProto),
                "{name}"
            );
        }
    }
}
