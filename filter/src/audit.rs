//! One audit record per request, as a single JSON line. Never tokens, keys, secrets or bodies.

use serde::Serialize;

/// The fields of an audit line (DESIGN.md: "Audit record").
#[derive(Debug, Default, Serialize)]
pub struct AuditRecord<'a> {
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    /// `x-request-id`, or the id the filter made.
    pub request_id: &'a str,
    /// Matched route name.
    pub route: Option<&'a str>,
    /// `:method`.
    pub method: &'a str,
    /// `:path` without the query string (queries may carry credentials).
    pub path: &'a str,
    /// Client address (`source.address` without the port).
    pub client_ip: Option<&'a str>,
    /// Provider that verified the caller.
    pub provider: Option<&'a str>,
    /// `sub` of a verified token.
    pub subject: Option<&'a str>,
    /// Consumer of a verified API key.
    pub consumer: Option<&'a str>,
    /// `allow`, `deny`, `shadow_deny`, or `none` for a request the filter never saw.
    pub decision: &'static str,
    /// Why (one word).
    pub reason: &'static str,
    /// The provider, scope or claim that decided.
    pub rule: Option<&'a str>,
    /// Status the filter replied with, or the upstream's.
    pub status: Option<u16>,
    /// Time the filter spent deciding, in microseconds.
    pub filter_latency_us: u64,
    /// The rate-limit service's answer: `ok`, `over_limit`, `error` (failed or late), or none
    /// when it was not asked.
    pub rate_limit: Option<&'static str>,
}

impl AuditRecord<'_> {
    /// The record as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Formats nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let millis = (nanos / 1_000_000) % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123_000_000), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339(1_795_824_000_000_000_000),
            "2026-11-28T00:00:00.000Z"
        );
    }

    #[test]
    fn never_carries_more_than_its_fields() {
        let r = AuditRecord {
            method: "GET",
            path: "/x",
            decision: "allow",
            reason: "public",
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["decision"], "allow");
        assert_eq!(v.as_object().unwrap().len(), 15);
    }
}
