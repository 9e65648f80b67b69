//! A strict-but-lenient reader over the generic YAML tree: fields the host knows are read and
//! type-checked (errors carry the field's path), every other field is reported once as a
//! warning when its object is finished, so nothing is silently dropped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use super::{BootstrapError, DataSource};

/// Warnings collected during one parse, plus the directory relative file names resolve against.
pub(crate) struct Walker {
    pub(crate) warnings: Vec<String>,
    pub(crate) base_dir: PathBuf,
    /// `static_resources.clusters[].name`, collected up front so that static route tables can
    /// be checked against them (Envoy's `validate_clusters`, on by default for inline routes).
    pub(crate) cluster_names: Vec<String>,
}

impl Walker {
    /// Records `"{path}: {message}"`.
    pub(crate) fn warn(&mut self, path: &str, message: impl AsRef<str>) {
        self.warnings.push(format!("{path}: {}", message.as_ref()));
    }

    /// The standard warning for a field the host does not implement.
    pub(crate) fn unimplemented(&mut self, path: &str) {
        self.warn(path, "not implemented by portcullis-host (ignored)");
    }

    pub(crate) fn resolve(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// An error at `path`.
pub(crate) fn invalid(path: &str, message: impl Into<String>) -> BootstrapError {
    BootstrapError::Invalid {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Joins a child key onto a path (the root path is empty).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// protobuf JSON accepts both the proto field name and its lowerCamelCase JSON name.
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// One YAML mapping being read; call [`Obj::finish`] to warn about the fields nobody read.
pub(crate) struct Obj<'a> {
    pub(crate) path: String,
    entries: Vec<(String, &'a Value)>,
    used: HashSet<usize>,
}

/// A value with the path it was found at.
pub(crate) type At<'a> = (String, &'a Value);

impl<'a> Obj<'a> {
    /// Views `value` as a mapping (error "expected an object" otherwise).
    pub(crate) fn new(path: &str, value: &'a Value) -> Result<Obj<'a>, BootstrapError> {
        let Value::Mapping(map) = untag(value) else {
            return Err(invalid(path, "expected an object"));
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Value::String(k) = untag(k) else {
                return Err(invalid(path, "object keys must be strings"));
            };
            entries.push((k.clone(), v));
        }
        Ok(Obj {
            path: path.to_string(),
            entries,
            used: HashSet::new(),
        })
    }

    /// The child path of `key`.
    pub(crate) fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Looks `key` up (snake_case, then lowerCamelCase), marks it read; `null` counts as absent.
    pub(crate) fn get(&mut self, key: &str) -> Option<At<'a>> {
        let cam = camel(key);
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k == key)
            .or_else(|| self.entries.iter().position(|(k, _)| *k == cam))?;
        self.used.insert(i);
        let (k, v) = self.entries.get(i)?;
        if matches!(untag(v), Value::Null) {
            return None;
        }
        Some((join(&self.path, k), *v))
    }

    /// Whether the key is present (not null), without marking it read.
    pub(crate) fn has(&self, key: &str) -> bool {
        let cam = camel(key);
        self.entries
            .iter()
            .any(|(k, v)| (k == key || *k == cam) && !matches!(untag(v), Value::Null))
    }

    /// All keys, in document order (for map fields whose keys are data).
    pub(crate) fn keys(&self) -> Vec<String> {
        self.entries.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Marks a field read without a warning (no-op fields such as `google_re2`).
    pub(crate) fn consume(&mut self, key: &str) {
        let _ = self.get(key);
    }

    /// Marks a present field read and warns with `message` (for fields whose absence of
    /// support changes behaviour in a specific way). Returns whether it was present.
    pub(crate) fn skip(&mut self, w: &mut Walker, key: &str, message: &str) -> bool {
        match self.get(key) {
            Some((p, _)) => {
                w.warn(&p, message);
                true
            }
            None => false,
        }
    }

    pub(crate) fn str(&mut self, key: &str) -> Result<Option<String>, BootstrapError> {
        self.get(key).map(|(p, v)| as_str(&p, v)).transpose()
    }

    pub(crate) fn req_str(&mut self, key: &str) -> Result<String, BootstrapError> {
        self.str(key)?
            .ok_or_else(|| invalid(&self.child(key), "required field is missing"))
    }

    pub(crate) fn bool(&mut self, key: &str) -> Result<Option<bool>, BootstrapError> {
        self.get(key)
            .map(|(p, v)| match untag(v) {
                Value::Bool(b) => Ok(*b),
                _ => Err(invalid(&p, "expected a boolean")),
            })
            .transpose()
    }

    pub(crate) fn u64(&mut self, key: &str) -> Result<Option<u64>, BootstrapError> {
        self.get(key).map(|(p, v)| as_u64(&p, v)).transpose()
    }

    pub(crate) fn u32(&mut self, key: &str) -> Result<Option<u32>, BootstrapError> {
        self.get(key)
            .map(|(p, v)| {
                let n = as_u64(&p, v)?;
                u32::try_from(n).map_err(|_| invalid(&p, "integer out of range for uint32"))
            })
            .transpose()
    }

    pub(crate) fn duration(&mut self, key: &str) -> Result<Option<Duration>, BootstrapError> {
        self.get(key).map(|(p, v)| as_duration(&p, v)).transpose()
    }

    pub(crate) fn obj(&mut self, key: &str) -> Result<Option<Obj<'a>>, BootstrapError> {
        self.get(key).map(|(p, v)| Obj::new(&p, v)).transpose()
    }

    pub(crate) fn req_obj(&mut self, key: &str) -> Result<Obj<'a>, BootstrapError> {
        self.obj(key)?
            .ok_or_else(|| invalid(&self.child(key), "required field is missing"))
    }

    /// A repeated field as `(path[i], value)` items; absent → empty.
    pub(crate) fn list(&mut self, key: &str) -> Result<Vec<At<'a>>, BootstrapError> {
        let Some((p, v)) = self.get(key) else {
            return Ok(Vec::new());
        };
        let Value::Sequence(seq) = untag(v) else {
            return Err(invalid(&p, "expected a list"));
        };
        Ok(seq
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{p}[{i}]"), item))
            .collect())
    }

    /// A repeated string field.
    pub(crate) fn str_list(&mut self, key: &str) -> Result<Vec<String>, BootstrapError> {
        self.list(key)?
            .into_iter()
            .map(|(p, v)| as_str(&p, v))
            .collect()
    }

    /// An enum given by name (or by number, mapped through `names` by index).
    pub(crate) fn enum_name(
        &mut self,
        key: &str,
        names: &[&str],
    ) -> Result<Option<String>, BootstrapError> {
        let Some((p, v)) = self.get(key) else {
            return Ok(None);
        };
        let name = match untag(v) {
            Value::String(s) => s.clone(),
            Value::Number(n) => n
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| names.get(i))
                .map(|s| (*s).to_string())
                .ok_or_else(|| invalid(&p, "unknown enum number"))?,
            _ => return Err(invalid(&p, "expected an enum name")),
        };
        if names.contains(&name.as_str()) {
            Ok(Some(name))
        } else {
            Err(invalid(
                &p,
                format!(
                    "unknown value {name:?} (expected one of {})",
                    names.join(", ")
                ),
            ))
        }
    }

    /// A `DataSource` (`filename`, `inline_string`, `inline_bytes`, `environment_variable`).
    pub(crate) fn data_source(
        &mut self,
        w: &mut Walker,
        key: &str,
    ) -> Result<Option<DataSource>, BootstrapError> {
        let Some(mut o) = self.obj(key)? else {
            return Ok(None);
        };
        let ds = read_data_source(w, &mut o)?;
        o.finish(w);
        Ok(Some(ds))
    }

    /// The `@type` of an `Any`, reduced to the part after the last `/`.
    pub(crate) fn any_type(&mut self) -> Result<String, BootstrapError> {
        let t = self.req_str("@type")?;
        Ok(t.rsplit('/').next().unwrap_or(&t).to_string())
    }

    /// Warns once for every field nobody read.
    pub(crate) fn finish(self, w: &mut Walker) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if !self.used.contains(&i) {
                w.unimplemented(&join(&self.path, k));
            }
        }
    }
}

/// Reads the DataSource fields of an already opened object.
pub(crate) fn read_data_source(w: &Walker, o: &mut Obj<'_>) -> Result<DataSource, BootstrapError> {
    if let Some(f) = o.str("filename")? {
        return Ok(DataSource::File(w.resolve(&f)));
    }
    if let Some(s) = o.str("inline_string")? {
        return Ok(DataSource::Inline(s.into_bytes()));
    }
    if let Some((p, v)) = o.get("inline_bytes") {
        let s = as_str(&p, v)?;
        return base64_decode(&s)
            .map(DataSource::Inline)
            .ok_or_else(|| invalid(&p, "expected base64 bytes"));
    }
    if let Some((p, v)) = o.get("environment_variable") {
        let name = as_str(&p, v)?;
        return std::env::var(&name)
            .map(|s| DataSource::Inline(s.into_bytes()))
            .map_err(|_| invalid(&p, format!("environment variable {name} is not set")));
    }
    Err(invalid(
        &o.path,
        "expected one of filename, inline_string, inline_bytes, environment_variable",
    ))
}

/// serde_yaml keeps `!tag` values; Envoy's loader ignores tags, so do we.
pub(crate) fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

pub(crate) fn as_str(path: &str, v: &Value) -> Result<String, BootstrapError> {
    match untag(v) {
        Value::String(s) => Ok(s.clone()),
        _ => Err(invalid(path, "expected a string")),
    }
}

/// protobuf JSON integers: a number or a decimal string.
pub(crate) fn as_u64(path: &str, v: &Value) -> Result<u64, BootstrapError> {
    match untag(v) {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid(path, "expected an integer"))
}

/// protobuf JSON `Duration`: `"1.5s"` (up to 9 fractional digits) or `{seconds, nanos}`.
pub(crate) fn as_duration(path: &str, v: &Value) -> Result<Duration, BootstrapError> {
    let bad = || invalid(path, "expected a duration such as \"0.25s\"");
    match untag(v) {
        Value::String(s) => {
            let body = s.strip_suffix('s').ok_or_else(bad)?;
            let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
            if secs.is_empty() && frac.is_empty() {
                return Err(bad());
            }
            if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            if !secs.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let secs: u64 = if secs.is_empty() {
                0
            } else {
                secs.parse().map_err(|_| bad())?
            };
            let nanos: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}").parse().map_err(|_| bad())?
            };
            Ok(Duration::new(secs, nanos))
        }
        Value::Mapping(_) => {
            let mut o = Obj::new(path, v)?;
            let secs = o.u64("seconds")?.unwrap_or(0);
            let nanos = o.u32("nanos")?.unwrap_or(0);
            if nanos >= 1_000_000_000 {
                return Err(invalid(&o.child("nanos"), "must be below 1000000000"));
            }
            if let Some((k, _)) = o
                .entries
                .iter()
                .enumerate()
                .find_map(|(i, e)| if o.used.contains(&i) { None } else { Some(e) })
            {
                return Err(invalid(&join(path, k), "unknown Duration field"));
            }
            Ok(Duration::new(secs, nanos))
        }
        _ => Err(bad()),
    }
}

/// Standard or URL-safe base64, padding optional (protobuf JSON `bytes`).
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in s.bytes().filter(|b| !b.is_ascii_whitespace()) {
        if b == b'=' {
            continue;
        }
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| as_duration("x", &Value::String(s.into()));
        assert_eq!(d("0.25s").unwrap(), Duration::from_millis(250));
        assert_eq!(d("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(d("1.000000001s").unwrap(), Duration::new(1, 1));
        assert_eq!(d(".5s").unwrap(), Duration::from_millis(500));
        assert!(d("5").is_err());
        assert!(d("-1s").is_err());
        assert!(d("1.0000000001s").is_err());
        assert!(d("s").is_err());
        let v: Value = serde_yaml::from_str("{seconds: 2, nanos: 5}").unwrap();
        assert_eq!(as_duration("x", &v).unwrap(), Duration::new(2, 5));
        let v: Value = serde_yaml::from_str("{seconds: 2, minutes: 5}").unwrap();
        assert!(as_duration("x", &v).is_err());
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn camel_case_names() {
        assert_eq!(
            camel("per_connection_buffer_limit_bytes"),
            "perConnectionBufferLimitBytes"
        );
        let v: Value = serde_yaml::from_str("{portValue: 80}").unwrap();
        let mut o = Obj::new("a", &v).unwrap();
        assert_eq!(o.u32("port_value").unwrap(), Some(80));
    }
}
