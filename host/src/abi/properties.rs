//! `proxy_get_property`: the attributes Envoy serves (ECTX `findValue`/`getProperty`, EEXPR
//! `context.cc` wrappers, EATTR) with Envoy's encodings: strings raw, ints and timestamps /
//! durations 8-byte little-endian (nanoseconds), bools one byte, maps in the pairs format.

use super::pairs;
use super::state::{HostState, StreamState};
use super::status::Status;
use super::types::HeaderMap;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn uint(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn found<T>(v: Option<T>) -> Result<T, Status> {
    v.ok_or(Status::NotFound)
}

/// Resolves a NUL-separated path (RSDK `serialize_property_path`).
pub(crate) fn get(s: &HostState, path: &[u8]) -> Result<Vec<u8>, Status> {
    let segments: Vec<&[u8]> = path.split(|b| *b == 0).collect();
    let top = segments.first().copied().unwrap_or_default();
    let rest = segments.get(1..).unwrap_or_default();
    let one = |expected: usize| -> Result<(), Status> {
        if segments.len() == expected {
            Ok(())
        } else {
            Err(Status::NotFound)
        }
    };
    // Plugin attributes work in any context (ECTX `findValue`).
    match top {
        b"plugin_name" => return one(1).map(|()| text(&s.plugin.name)),
        b"plugin_root_id" => return one(1).map(|()| text(&s.plugin.root_id)),
        b"plugin_vm_id" => return one(1).map(|()| text(&s.plugin.vm_id)),
        _ => {}
    }
    // Everything else needs stream info: NotFound in a root context.
    let st = found(s.effective_stream())?;
    let field = rest.first().copied();
    match top {
        b"request" => request(st, field, rest.get(1).copied(), segments.len()),
        b"response" => response(st, field, rest.get(1).copied()),
        b"source" => address(st.info.source, field, segments.len()),
        b"destination" => address(st.info.destination, field, segments.len()),
        b"upstream" => address(st.info.upstream, field, segments.len()),
        b"connection_id" => one(1).map(|()| uint(st.info.connection_id)),
        b"connection" => {
            one(2)?;
            match field.unwrap_or_default() {
                b"id" => Ok(uint(st.info.connection_id)),
                b"mtls" => Ok(vec![u8::from(st.info.mtls)]),
                b"requested_server_name" => {
                    found(st.info.requested_server_name.as_deref()).map(text)
                }
                b"tls_version" => found(st.info.tls_version.as_deref()).map(text),
                _ => Err(Status::NotFound),
            }
        }
        b"xds" => {
            one(2)?;
            let v = match field.unwrap_or_default() {
                b"route_name" => st.info.route_name.as_deref(),
                b"cluster_name" => st.info.cluster_name.as_deref(),
                b"virtual_host_name" => st.info.virtual_host_name.as_deref(),
                b"filter_chain_name" => st.info.filter_chain_name.as_deref(),
                _ => None,
            };
            found(v).map(text)
        }
        // Anything else is filter state written by `proxy_set_property` (key = raw path).
        _ => found(st.filter_state.get(path).cloned()),
    }
}

fn address(addr: Option<SocketAddr>, field: Option<&[u8]>, len: usize) -> Result<Vec<u8>, Status> {
    if len != 2 {
        return Err(Status::NotFound);
    }
    let addr = found(addr)?;
    match field.unwrap_or_default() {
        // "ip:port", IPv6 in brackets (Envoy `Address::asString`).
        b"address" => Ok(text(&addr.to_string())),
        b"port" => Ok(int(i64::from(addr.port()))),
        _ => Err(Status::NotFound),
    }
}

/// The request headers as Envoy holds them now: only in the headers phase (also while paused
/// there) and in `on_log` (ECTX `getRequestHeaders` via `request_headers_`).
fn request_headers(st: &StreamState) -> Option<&HeaderMap> {
    st.maps[0].as_ref().map(|slot| &slot.map)
}

/// Comma-joined values (EEXPR `HeadersWrapper`).
fn joined(map: &HeaderMap, name: &[u8]) -> Option<Vec<u8>> {
    let name = String::from_utf8_lossy(name);
    let values = map.get_all(&name);
    if values.is_empty() {
        return None;
    }
    Some(values.join(&b","[..]))
}

fn headers_value(map: &HeaderMap, key: Option<&[u8]>) -> Result<Vec<u8>, Status> {
    match key {
        Some(key) => found(joined(map, key)),
        None => {
            let mut names: Vec<&str> = Vec::new();
            for (k, _) in &map.pairs {
                if !names.contains(&k.as_str()) {
                    names.push(k);
                }
            }
            let pairs: Vec<(&str, Vec<u8>)> = names
                .into_iter()
                .filter_map(|n| joined(map, n.as_bytes()).map(|v| (n, v)))
                .collect();
            Ok(pairs::serialize(&pairs))
        }
    }
}

fn request(
    st: &StreamState,
    field: Option<&[u8]>,
    key: Option<&[u8]>,
    len: usize,
) -> Result<Vec<u8>, Status> {
    let field = found(field)?;
    if field != b"headers" && len != 2 {
        return Err(Status::NotFound);
    }
    let info = &st.info;
    // Stream-info fields work anywhere in the stream.
    match field {
        b"protocol" => return Ok(text(&info.protocol)),
        b"time" => {
            let ns = info
                .start_time
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            return Ok(int(ns));
        }
        b"duration" => {
            let d = found(info.request_duration)?;
            return Ok(int(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)));
        }
        b"size" => return found(info.request_size).map(|v| int(v as i64)),
        b"total_size" => return found(info.request_total_size).map(|v| int(v as i64)),
        _ => {}
    }
    // Header-derived fields need the request headers (NotFound outside their window).
    let headers = found(request_headers(st))?;
    let header = |name: &str| found(headers.get(name).map(<[u8]>::to_vec));
    match field {
        b"path" => header(":path"),
        b"url_path" => {
            let path = header(":path")?;
            let end = path.iter().position(|b| *b == b'?').unwrap_or(path.len());
            Ok(path[..end].to_vec())
        }
        b"query" => {
            let path = header(":path")?;
            Ok(path
                .iter()
                .position(|b| *b == b'?')
                .map(|i| path[i + 1..].to_vec())
                .unwrap_or_default())
        }
        b"host" => header(":authority"),
        b"scheme" => header(":scheme"),
        b"method" => header(":method"),
        b"referer" => header("referer"),
        b"useragent" => header("user-agent"),
        b"id" => header("x-request-id"),
        b"headers" => headers_value(headers, key),
        _ => Err(Status::NotFound),
    }
}

fn response(st: &StreamState, field: Option<&[u8]>, key: Option<&[u8]>) -> Result<Vec<u8>, Status> {
    let info = &st.info;
    match found(field)? {
        b"code" => found(info.response_code).map(|c| int(i64::from(c))),
        b"code_details" => found(info.response_code_details.as_deref()).map(text),
        b"size" => found(info.response_size).map(|v| int(v as i64)),
        b"headers" => {
            let map = found(st.maps[2].as_ref().map(|s| &s.map))?;
            headers_value(map, key)
        }
        b"trailers" => {
            let map = found(st.maps[3].as_ref().map(|s| &s.map))?;
            headers_value(map, key)
        }
        _ => Err(Status::NotFound),
    }
}
