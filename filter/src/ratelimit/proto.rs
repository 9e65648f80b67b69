//! The two messages of Envoy's rate-limit service (envoy.service.ratelimit.v3), encoded and
//! decoded by hand: a few fields of protobuf wire format cost less in the .wasm than a protobuf
//! library, and unknown fields are skipped as protobuf requires.
//!
//! `RateLimitRequest { string domain = 1; repeated RateLimitDescriptor descriptors = 2;
//! uint32 hits_addend = 3; }`, `RateLimitDescriptor { repeated Entry entries = 1; }`,
//! `Entry { string key = 1; string value = 2; }`.
//!
//! `RateLimitResponse { Code overall_code = 1; repeated DescriptorStatus statuses = 2; … }`,
//! `DescriptorStatus { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
//! google.protobuf.Duration duration_until_reset = 4; }`,
//! `RateLimit { uint32 requests_per_unit = 1; Unit unit = 2; string name = 3; }`.

/// The answer's code (`RateLimitResponse.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `UNKNOWN` (0), or a value this filter does not know.
    Unknown,
    /// `OK` (1).
    Ok,
    /// `OVER_LIMIT` (2).
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Code {
        match v {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// The limit that applied to a descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentLimit {
    /// Requests allowed per unit.
    pub requests_per_unit: u32,
    /// The unit in seconds (0 when unknown).
    pub unit_seconds: u64,
    /// The limit's name, when the service gives one.
    pub name: String,
}

/// The service's verdict on one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// OK or OVER_LIMIT.
    pub code: Code,
    /// The limit that applied (absent for unlimited descriptors).
    pub current_limit: Option<CurrentLimit>,
    /// Requests left in the current window.
    pub limit_remaining: u32,
    /// Milliseconds until the window resets, when the service says.
    pub until_reset_ms: Option<u64>,
}

/// The decoded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The overall verdict.
    pub overall_code: Code,
    /// One status per descriptor, in request order.
    pub statuses: Vec<DescriptorStatus>,
}

/// A protobuf message that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed rate-limit service response")]
pub struct DecodeError;

/// Encodes a `RateLimitRequest`.
pub fn encode_request(domain: &str, descriptors: &[Vec<(&str, String)>], hits: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_bytes(&mut out, 1, domain.as_bytes());
    for d in descriptors {
        let mut desc = Vec::with_capacity(32);
        for (key, value) in d {
            let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
            put_bytes(&mut entry, 1, key.as_bytes());
            put_bytes(&mut entry, 2, value.as_bytes());
            put_bytes(&mut desc, 1, &entry);
        }
        put_bytes(&mut out, 2, &desc);
    }
    if hits != 1 {
        put_varint_field(&mut out, 3, u64::from(hits));
    }
    out
}

/// A serialized `envoy.config.core.v3.GrpcService { envoy_grpc { cluster_name } }`, the target
/// `proxy_grpc_call` is given: Envoy parses the target as this message first and only then as a
/// plain cluster name, and some plain names happen to be valid protobuf.
pub fn encode_grpc_service(cluster: &str) -> Vec<u8> {
    let mut envoy_grpc = Vec::with_capacity(cluster.len() + 2);
    put_bytes(&mut envoy_grpc, 1, cluster.as_bytes());
    let mut out = Vec::with_capacity(envoy_grpc.len() + 2);
    put_bytes(&mut out, 1, &envoy_grpc);
    out
}

/// Decodes a `RateLimitResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut response = Response {
        overall_code: Code::Unknown,
        statuses: Vec::new(),
    };
    let mut r = Reader(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => response.overall_code = Code::from_wire(v),
            (2, Value::Bytes(b)) => response.statuses.push(decode_status(b)?),
            _ => {}
        }
    }
    Ok(response)
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut status = DescriptorStatus {
        code: Code::Unknown,
        current_limit: None,
        limit_remaining: 0,
        until_reset_ms: None,
    };
    let mut r = Reader(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => status.code = Code::from_wire(v),
            (2, Value::Bytes(b)) => status.current_limit = Some(decode_limit(b)?),
            (3, Value::Varint(v)) => status.limit_remaining = u32::try_from(v).unwrap_or(u32::MAX),
            (4, Value::Bytes(b)) => status.until_reset_ms = Some(decode_duration_ms(b)?),
            _ => {}
        }
    }
    Ok(status)
}

fn decode_limit(bytes: &[u8]) -> Result<CurrentLimit, DecodeError> {
    let mut limit = CurrentLimit::default();
    let mut r = Reader(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => limit.requests_per_unit = u32::try_from(v).unwrap_or(u32::MAX),
            (2, Value::Varint(v)) => limit.unit_seconds = unit_seconds(v),
            (3, Value::Bytes(b)) => {
                limit.name = std::str::from_utf8(b).map_err(|_| DecodeError)?.to_owned();
            }
            _ => {}
        }
    }
    Ok(limit)
}

/// `RateLimitResponse.RateLimit.Unit`: UNKNOWN 0, SECOND 1, MINUTE 2, HOUR 3, DAY 4, MONTH 5,
/// YEAR 6, WEEK 7.
fn unit_seconds(unit: u64) -> u64 {
    match unit {
        1 => 1,
        2 => 60,
        3 => 3_600,
        4 => 86_400,
        5 => 30 * 86_400,
        6 => 365 * 86_400,
        7 => 7 * 86_400,
        _ => 0,
    }
}

/// `google.protobuf.Duration { int64 seconds = 1; int32 nanos = 2; }` in milliseconds
/// (negative values count as zero).
fn decode_duration_ms(bytes: &[u8]) -> Result<u64, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    let mut r = Reader(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            // Negative int64 travels as a ten-byte varint: the two's-complement bits.
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = i64::from(v as i32),
            _ => {}
        }
    }
    let ms = seconds
        .max(0)
        .saturating_mul(1000)
        .saturating_add(nanos.max(0) / 1_000_000);
    Ok(u64::try_from(ms).unwrap_or(0))
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or(DecodeError)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError)?;
        if n > self.0.len() {
            return Err(DecodeError);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            _ => return Err(DecodeError),
        };
        Ok(Some((tag >> 3, value)))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Test helpers: encode a response as the service would.
#[cfg(test)]
pub(crate) fn encode_response(r: &Response) -> Vec<u8> {
    let code = |c: Code| match c {
        Code::Unknown => 0,
        Code::Ok => 1,
        Code::OverLimit => 2,
    };
    let mut out = Vec::new();
    put_varint_field(&mut out, 1, code(r.overall_code));
    for s in &r.statuses {
        let mut st = Vec::new();
        put_varint_field(&mut st, 1, code(s.code));
        if let Some(l) = &s.current_limit {
            let mut lim = Vec::new();
            put_varint_field(&mut lim, 1, u64::from(l.requests_per_unit));
            let unit = match l.unit_seconds {
                1 => 1,
                60 => 2,
                3_600 => 3,
                86_400 => 4,
                _ => 0,
            };
            put_varint_field(&mut lim, 2, unit);
            if !l.name.is_empty() {
                put_bytes(&mut lim, 3, l.name.as_bytes());
            }
            put_bytes(&mut st, 2, &lim);
        }
        put_varint_field(&mut st, 3, u64::from(s.limit_remaining));
        if let Some(ms) = s.until_reset_ms {
            let mut d = Vec::new();
            put_varint_field(&mut d, 1, ms / 1000);
            put_varint_field(&mut d, 2, (ms % 1000) * 1_000_000);
            put_bytes(&mut st, 4, &d);
        }
        put_bytes(&mut out, 2, &st);
    }
    // An unknown field (raw_body = 5) the decoder must skip.
    put_bytes(&mut out, 5, b"ignored");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_as_protobuf() {
        let d = vec![vec![("remote_address", "10.0.0.1".to_owned())]];
        let bytes = encode_request("edge", &d, 1);
        // domain: field 1, len 4, "edge"; descriptors: field 2 …
        assert_eq!(&bytes[..6], &[0x0a, 4, b'e', b'd', b'g', b'e']);
        assert_eq!(bytes[6], 0x12);
        let entry_key = b"remote_address";
        assert!(bytes.windows(entry_key.len()).any(|w| w == entry_key));
        assert_eq!(*bytes.last().unwrap(), b'1');
        let with_hits = encode_request("edge", &d, 5);
        assert_eq!(&with_hits[with_hits.len() - 2..], &[0x18, 5]);
    }

    #[test]
    fn responses_decode_and_skip_unknown_fields() {
        let r = Response {
            overall_code: Code::OverLimit,
            statuses: vec![
                DescriptorStatus {
                    code: Code::OverLimit,
                    current_limit: Some(CurrentLimit {
                        requests_per_unit: 10,
                        unit_seconds: 60,
                        name: "per-user".into(),
                    }),
                    limit_remaining: 0,
                    until_reset_ms: Some(12_500),
                },
                DescriptorStatus {
                    code: Code::Ok,
                    current_limit: None,
                    limit_remaining: 0,
                    until_reset_ms: None,
                },
            ],
        };
        assert_eq!(decode_response(&encode_response(&r)), Ok(r));
    }

    #[test]
    fn malformed_responses_are_errors_not_panics() {
        assert_eq!(decode_response(&[0x12, 0x05, 0x08]), Err(DecodeError));
        assert_eq!(decode_response(&[0xff; 11]), Err(DecodeError));
        assert_eq!(decode_response(&[0x0b]), Err(DecodeError));
        assert!(decode_response(&[]).is_ok());
    }
}
