//! The two limiting algorithms, as pure functions of a stored state and the time.
//!
//! * **Fixed window** (envoyproxy/ratelimit's): the count of hits in the current window, windows
//!   aligned to the Unix epoch (a `minute` window starts at every whole minute). Every hit is
//!   counted, also those over the limit, as envoyproxy/ratelimit does: a caller that keeps
//!   hammering stays limited until the window ends.
//! * **GCRA** (generic cell rate algorithm): a smooth limit of `requests_per_unit` per unit that
//!   lets `burst` requests through at once from idle and then one every `unit /
//!   requests_per_unit`. The state is one "theoretical arrival time"; denied requests consume
//!   nothing.
//!
//! The Redis store runs the same arithmetic in Lua (`store/decide.lua`); the memory store calls
//! these functions. Both work in microseconds.

use crate::proto::rate_limit_response::rate_limit::Unit as ProtoUnit;
use std::time::Duration;

/// The time unit of a limit, as named in the configuration (`second` … `year`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3 600 seconds.
    Hour,
    /// 86 400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days (envoyproxy/ratelimit's month).
    Month,
    /// 365 days (envoyproxy/ratelimit's year).
    Year,
}

impl Unit {
    /// Parses a unit name case-insensitively, as envoyproxy/ratelimit does.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "second" => Self::Second,
            "minute" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "year" => Self::Year,
            _ => return None,
        })
    }

    /// The unit from the protocol's enum (a request's limit override); `None` for UNKNOWN.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match ProtoUnit::try_from(value).ok()? {
            ProtoUnit::Second => Self::Second,
            ProtoUnit::Minute => Self::Minute,
            ProtoUnit::Hour => Self::Hour,
            ProtoUnit::Day => Self::Day,
            ProtoUnit::Week => Self::Week,
            ProtoUnit::Month => Self::Month,
            ProtoUnit::Year => Self::Year,
            ProtoUnit::Unknown => return None,
        })
    }

    /// The protocol's enum value, for `current_limit.unit` in responses.
    pub fn to_proto(self) -> ProtoUnit {
        match self {
            Self::Second => ProtoUnit::Second,
            Self::Minute => ProtoUnit::Minute,
            Self::Hour => ProtoUnit::Hour,
            Self::Day => ProtoUnit::Day,
            Self::Week => ProtoUnit::Week,
            Self::Month => ProtoUnit::Month,
            Self::Year => ProtoUnit::Year,
        }
    }

    /// The unit's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
        }
    }

    /// The unit's length in microseconds.
    pub fn micros(self) -> u64 {
        self.seconds() * 1_000_000
    }

    /// The lower-case name used in configuration and storage keys.
    pub fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Clock-aligned fixed window (the default, envoyproxy/ratelimit's behaviour).
    FixedWindow,
    /// GCRA: at most `burst` requests at once, then the steady rate.
    Gcra {
        /// Requests accepted back to back from idle (≥ 1).
        burst: u32,
    },
}

/// One limit: `requests_per_unit` per `unit`, counted by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Requests allowed per unit (0 denies everything, as envoyproxy/ratelimit's blocklists).
    pub requests_per_unit: u32,
    /// The window (fixed window) or the rate's period (GCRA).
    pub unit: Unit,
    /// The counting algorithm.
    pub algorithm: Algorithm,
}

impl Limit {
    /// A short tag for storage keys, so that changing a limit's unit or algorithm starts a fresh
    /// counter instead of misreading the old one.
    pub fn key_suffix(&self) -> &'static str {
        match (self.algorithm, self.unit) {
            (Algorithm::FixedWindow, Unit::Second) => "fw:second",
            (Algorithm::FixedWindow, Unit::Minute) => "fw:minute",
            (Algorithm::FixedWindow, Unit::Hour) => "fw:hour",
            (Algorithm::FixedWindow, Unit::Day) => "fw:day",
            (Algorithm::FixedWindow, Unit::Week) => "fw:week",
            (Algorithm::FixedWindow, Unit::Month) => "fw:month",
            (Algorithm::FixedWindow, Unit::Year) => "fw:year",
            (Algorithm::Gcra { .. }, Unit::Second) => "gcra:second",
            (Algorithm::Gcra { .. }, Unit::Minute) => "gcra:minute",
            (Algorithm::Gcra { .. }, Unit::Hour) => "gcra:hour",
            (Algorithm::Gcra { .. }, Unit::Day) => "gcra:day",
            (Algorithm::Gcra { .. }, Unit::Week) => "gcra:week",
            (Algorithm::Gcra { .. }, Unit::Month) => "gcra:month",
            (Algorithm::Gcra { .. }, Unit::Year) => "gcra:year",
        }
    }
}

/// What one descriptor's check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the hits fit in the limit.
    pub allowed: bool,
    /// Requests still allowed after this decision (0 when over the limit in a fixed window).
    pub remaining: u64,
    /// When allowed: time until the quota is whole again (window end, or GCRA's bucket full).
    /// When denied: time until a request of the same cost would be allowed (Retry-After).
    pub reset: Duration,
}

/// Hits to apply: how many, and whether they are returned (`is_negative_hits`) or consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hits {
    /// Number of hits (0 only checks).
    pub count: u64,
    /// True to give `count` hits back instead of consuming them.
    pub refund: bool,
}

/// The state of one fixed-window counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowState {
    /// Start of the window the count belongs to (µs since the epoch).
    pub start: u64,
    /// Hits counted in that window.
    pub count: u64,
}

/// Applies `hits` to a fixed-window counter at time `now` (µs) and decides.
pub fn fixed_window(state: &mut WindowState, now: u64, limit: &Limit, hits: Hits) -> Outcome {
    let window = limit.unit.micros();
    let start = now - now % window;
    if state.start != start {
        *state = WindowState { start, count: 0 };
    }
    state.count = if hits.refund {
        state.count.saturating_sub(hits.count)
    } else {
        state.count.saturating_add(hits.count)
    };
    let max = u64::from(limit.requests_per_unit);
    let allowed = hits.refund || state.count <= max;
    Outcome {
        allowed,
        remaining: if allowed {
            max.saturating_sub(state.count)
        } else {
            0
        },
        reset: Duration::from_micros(start + window - now),
    }
}

/// GCRA's tolerance for rounding, in µs: the Redis script stores the arrival time rounded to a
/// whole microsecond, so comparisons forgive one.
const EPSILON: f64 = 1.0;

/// Applies `hits` to a GCRA state (`tat`: theoretical arrival time in µs, 0 when idle) at time
/// `now` (µs) and decides. `burst` comes from `limit.algorithm` (1 when it is not GCRA).
pub fn gcra(tat: &mut f64, now: u64, limit: &Limit, hits: Hits) -> Outcome {
    let burst = match limit.algorithm {
        Algorithm::Gcra { burst } => f64::from(burst.max(1)),
        Algorithm::FixedWindow => 1.0,
    };
    let period = limit.unit.micros() as f64;
    let now_f = now as f64;
    if limit.requests_per_unit == 0 {
        return Outcome {
            allowed: hits.refund,
            remaining: 0,
            reset: Duration::from_micros(limit.unit.micros()),
        };
    }
    let interval = period / f64::from(limit.requests_per_unit);
    let tolerance = interval * burst;
    let current = tat.max(now_f);
    let cost = hits.count as f64 * interval;
    let remaining_at = |t: f64| -> u64 {
        let left = ((tolerance - (t - now_f) + EPSILON) / interval).floor();
        if left <= 0.0 { 0 } else { left as u64 }
    };
    if hits.refund {
        let new = (current - cost).max(now_f);
        *tat = new;
        return Outcome {
            allowed: true,
            remaining: remaining_at(new),
            reset: micros(new - now_f),
        };
    }
    let new = current + cost;
    let allow_at = new - tolerance;
    if now_f + EPSILON >= allow_at {
        *tat = new;
        Outcome {
            allowed: true,
            remaining: remaining_at(new),
            reset: micros(new - now_f),
        }
    } else {
        Outcome {
            allowed: false,
            remaining: remaining_at(current),
            reset: micros(allow_at - now_f),
        }
    }
}

/// A non-negative float of microseconds as a Duration, rounded up (a Retry-After must not be
/// early).
fn micros(value: f64) -> Duration {
    if value <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_micros(value.ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn limit(n: u32, unit: Unit, algorithm: Algorithm) -> Limit {
        Limit {
            requests_per_unit: n,
            unit,
            algorithm,
        }
    }

    fn hit() -> Hits {
        Hits {
            count: 1,
            refund: false,
        }
    }

    #[test]
    fn fixed_window_counts_aligns_and_rolls_over() {
        let l = limit(3, Unit::Minute, Algorithm::FixedWindow);
        let mut s = WindowState::default();
        let t0 = 1_700_000_000 * SEC; // a whole minute? 1_700_000_000 % 60 = 20
        let start = t0 - t0 % (60 * SEC);
        for left in [2, 1, 0] {
            let o = fixed_window(&mut s, t0, &l, hit());
            assert!(o.allowed);
            assert_eq!(o.remaining, left);
            assert_eq!(o.reset, Duration::from_micros(start + 60 * SEC - t0));
        }
        let o = fixed_window(&mut s, t0 + SEC, &l, hit());
        assert!(!o.allowed);
        assert_eq!(o.remaining, 0);
        // Over-limit hits are counted, as envoyproxy/ratelimit does.
        assert_eq!(s.count, 4);
        let o = fixed_window(&mut s, start + 60 * SEC, &l, hit());
        assert!(o.allowed);
        assert_eq!(o.remaining, 2);
        assert_eq!(o.reset, Duration::from_secs(60));
    }

    #[test]
    fn fixed_window_hits_addend_zero_and_refund() {
        let l = limit(5, Unit::Second, Algorithm::FixedWindow);
        let mut s = WindowState::default();
        let now = 10 * SEC;
        let o = fixed_window(
            &mut s,
            now,
            &l,
            Hits {
                count: 5,
                refund: false,
            },
        );
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        let o = fixed_window(
            &mut s,
            now,
            &l,
            Hits {
                count: 0,
                refund: false,
            },
        );
        assert!(o.allowed, "exactly at the limit is still within it");
        let o = fixed_window(
            &mut s,
            now,
            &l,
            Hits {
                count: 2,
                refund: true,
            },
        );
        assert!(o.allowed);
        assert_eq!(o.remaining, 2);
        let o = fixed_window(
            &mut s,
            now,
            &l,
            Hits {
                count: 9,
                refund: true,
            },
        );
        assert_eq!(o.remaining, 5, "a refund never goes below zero");
    }

    #[test]
    fn fixed_window_zero_limit_denies() {
        let l = limit(0, Unit::Second, Algorithm::FixedWindow);
        let mut s = WindowState::default();
        assert!(!fixed_window(&mut s, SEC, &l, hit()).allowed);
    }

    #[test]
    fn gcra_burst_then_steady_rate() {
        // 10 per second, burst 4: 4 at once, then one every 100 ms.
        let l = limit(10, Unit::Second, Algorithm::Gcra { burst: 4 });
        let mut tat = 0.0;
        let t0 = 1_000 * SEC;
        for left in [3, 2, 1, 0] {
            let o = gcra(&mut tat, t0, &l, hit());
            assert!(o.allowed);
            assert_eq!(o.remaining, left);
        }
        let o = gcra(&mut tat, t0, &l, hit());
        assert!(!o.allowed);
        assert_eq!(
            o.reset,
            Duration::from_millis(100),
            "retry after one interval"
        );
        let o = gcra(&mut tat, t0 + 99_000, &l, hit());
        assert!(!o.allowed);
        assert_eq!(o.reset, Duration::from_millis(1));
        let o = gcra(&mut tat, t0 + 100_000, &l, hit());
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        assert!(!gcra(&mut tat, t0 + 150_000, &l, hit()).allowed);
        assert!(gcra(&mut tat, t0 + 200_000, &l, hit()).allowed);
        // A full second idle refills the burst (capped at 4).
        let later = t0 + 5 * SEC;
        let o = gcra(&mut tat, later, &l, hit());
        assert!(o.allowed);
        assert_eq!(o.remaining, 3);
        assert_eq!(o.reset, Duration::from_millis(100));
    }

    #[test]
    fn gcra_denied_requests_consume_nothing_and_costs_scale() {
        let l = limit(2, Unit::Second, Algorithm::Gcra { burst: 2 });
        let mut tat = 0.0;
        let now = 50 * SEC;
        let o = gcra(
            &mut tat,
            now,
            &l,
            Hits {
                count: 3,
                refund: false,
            },
        );
        assert!(!o.allowed, "a cost above the burst never fits");
        assert_eq!(o.remaining, 2);
        let o = gcra(
            &mut tat,
            now,
            &l,
            Hits {
                count: 2,
                refund: false,
            },
        );
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        assert_eq!(o.reset, Duration::from_secs(1));
        let o = gcra(
            &mut tat,
            now,
            &l,
            Hits {
                count: 1,
                refund: true,
            },
        );
        assert!(o.allowed);
        assert_eq!(o.remaining, 1);
    }

    #[test]
    fn gcra_zero_limit_denies() {
        let l = limit(0, Unit::Second, Algorithm::Gcra { burst: 1 });
        let mut tat = 0.0;
        assert!(!gcra(&mut tat, SEC, &l, hit()).allowed);
    }

    #[test]
    fn units_parse_like_envoyproxy() {
        assert_eq!(Unit::parse("SECOND"), Some(Unit::Second));
        assert_eq!(Unit::parse("Minute"), Some(Unit::Minute));
        assert_eq!(Unit::parse("week"), Some(Unit::Week));
        assert_eq!(Unit::parse("unknown"), None);
        assert_eq!(Unit::parse("seconds"), None);
        assert_eq!(Unit::from_proto(7), Some(Unit::Week));
        assert_eq!(Unit::from_proto(0), None);
        assert_eq!(Unit::from_proto(42), None);
        assert_eq!(Unit::Year.to_proto() as i32, 6);
    }
}
