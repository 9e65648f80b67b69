//! A strict reader over a parsed JSON document that remembers where it is.
//!
//! serde stops at the first error and cannot say which fields were never read; operators want
//! every mistake at once, each with its JSON path (`providers.corp.local_jwks.keys[1].n: not
//! base64url`). [`Obj`] marks each field it is asked for, so that [`Obj::finish`] can report the
//! fields nobody asked for as unknown.

use serde_json::{Map, Value};
use std::fmt;

/// One configuration mistake: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path, e.g. `routes[2].match.prefix`; empty for the document itself.
    pub path: String,
    /// Why the value is refused.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Collects every error found while reading a configuration.
#[derive(Debug, Default)]
pub struct Ctx {
    errors: Vec<ConfigError>,
}

impl Ctx {
    /// Records a mistake at `path`.
    pub fn error(&mut self, path: &str, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_owned(),
            reason: reason.into(),
        });
    }

    /// Number of errors so far (lets a caller tell whether a sub-reader failed).
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The errors, in document order of discovery.
    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }
}

/// `parent.key`, or `key` at the top.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The JSON type name used in error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object being read field by field.
pub struct Obj<'v> {
    map: &'v Map<String, Value>,
    path: String,
    seen: Vec<&'static str>,
}

impl<'v> Obj<'v> {
    /// Opens `value` as an object, or records an error and returns `None`.
    pub fn new(cx: &mut Ctx, value: &'v Value, path: &str) -> Option<Obj<'v>> {
        match value {
            Value::Object(map) => Some(Obj {
                map,
                path: path.to_owned(),
                seen: Vec::new(),
            }),
            other => {
                cx.error(
                    path,
                    format!("expected an object, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// This object's own path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Path of one of this object's fields.
    pub fn field_path(&self, key: &str) -> String {
        child(&self.path, key)
    }

    /// Whether the field is present (and not null). Marks it as known.
    pub fn has(&mut self, key: &'static str) -> bool {
        self.get(key).is_some()
    }

    /// The raw value of a field, if present and not null. Marks it as known.
    pub fn get(&mut self, key: &'static str) -> Option<&'v Value> {
        self.seen.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A field that must be present.
    pub fn required(&mut self, cx: &mut Ctx, key: &'static str) -> Option<&'v Value> {
        let v = self.get(key);
        if v.is_none() {
            cx.error(&self.field_path(key), "required field is missing");
        }
        v
    }

    /// An optional string field.
    pub fn str(&mut self, cx: &mut Ctx, key: &'static str) -> Option<&'v str> {
        let v = self.get(key)?;
        as_str(cx, v, &self.field_path(key))
    }

    /// A required string field.
    pub fn required_str(&mut self, cx: &mut Ctx, key: &'static str) -> Option<&'v str> {
        let v = self.required(cx, key)?;
        as_str(cx, v, &self.field_path(key))
    }

    /// An optional non-empty string field.
    pub fn non_empty_str(&mut self, cx: &mut Ctx, key: &'static str) -> Option<&'v str> {
        let s = self.str(cx, key)?;
        if s.is_empty() {
            cx.error(&self.field_path(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    /// An optional boolean field with its default.
    pub fn bool(&mut self, cx: &mut Ctx, key: &'static str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                cx.error(
                    &self.field_path(key),
                    format!("expected a boolean, found {}", type_name(other)),
                );
                default
            }
        }
    }

    /// An optional non-negative integer field, at most `max`.
    pub fn u64(&mut self, cx: &mut Ctx, key: &'static str, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        as_u64(cx, v, &self.field_path(key), max)
    }

    /// An optional array of strings (absent → empty).
    pub fn str_list(&mut self, cx: &mut Ctx, key: &'static str) -> Vec<&'v str> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let path = self.field_path(key);
        let Some(items) = as_array(cx, v, &path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| as_str(cx, item, &index(&path, i)))
            .collect()
    }

    /// An optional array field: each element with its path (absent → empty).
    pub fn array(&mut self, cx: &mut Ctx, key: &'static str) -> Vec<(&'v Value, String)> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let path = self.field_path(key);
        let Some(items) = as_array(cx, v, &path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, index(&path, i)))
            .collect()
    }

    /// Reports every field that was never asked for.
    pub fn finish(self, cx: &mut Ctx) {
        for key in self.map.keys() {
            if !self.seen.iter().any(|s| s == key) {
                let mut known: Vec<&str> = self.seen.clone();
                known.sort_unstable();
                known.dedup();
                cx.error(
                    &child(&self.path, key),
                    format!("unknown field (expected one of: {})", known.join(", ")),
                );
            }
        }
    }
}

/// `v` as a string, or an error at `path`.
pub fn as_str<'v>(cx: &mut Ctx, v: &'v Value, path: &str) -> Option<&'v str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            cx.error(
                path,
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    }
}

/// `v` as an array, or an error at `path`.
pub fn as_array<'v>(cx: &mut Ctx, v: &'v Value, path: &str) -> Option<&'v Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        other => {
            cx.error(
                path,
                format!("expected an array, found {}", type_name(other)),
            );
            None
        }
    }
}

/// `v` as an integer in `0..=max`, or an error at `path`.
pub fn as_u64(cx: &mut Ctx, v: &Value, path: &str, max: u64) -> Option<u64> {
    match v.as_u64() {
        Some(n) if n <= max => Some(n),
        Some(n) => {
            cx.error(path, format!("{n} is larger than the maximum {max}"));
            None
        }
        None => {
            cx.error(
                path,
                format!("expected a non-negative integer, found {}", describe(v)),
            );
            None
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => type_name(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_and_types_are_reported_with_paths() {
        let doc = json!({"a": {"b": 1, "zz": true}, "c": "x"});
        let mut cx = Ctx::default();
        let mut top = Obj::new(&mut cx, &doc, "").unwrap();
        let a = top.required(&mut cx, "a").unwrap();
        let mut a = Obj::new(&mut cx, a, &top.field_path("a")).unwrap();
        assert_eq!(a.str(&mut cx, "b"), None);
        a.finish(&mut cx);
        top.finish(&mut cx);
        let errs: Vec<String> = cx.into_errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            vec![
                "a.b: expected a string, found a number",
                "a.zz: unknown field (expected one of: b)",
                "c: unknown field (expected one of: a)",
            ]
        );
    }

    #[test]
    fn integers_are_bounded() {
        let mut cx = Ctx::default();
        assert_eq!(as_u64(&mut cx, &json!(5), "n", 4), None);
        assert_eq!(as_u64(&mut cx, &json!(-1), "n", 4), None);
        assert_eq!(as_u64(&mut cx, &json!(1.5), "n", 4), None);
        assert_eq!(as_u64(&mut cx, &json!(4), "n", 4), Some(4));
        assert_eq!(cx.error_count(), 3);
    }
}
