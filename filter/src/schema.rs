//! JSON Schema validation of request bodies.
//!
//! A route's schema is compiled once, when the configuration is read ([`CompiledSchema::compile`]);
//! each request body is then checked against the compiled form ([`CompiledSchema::is_valid`],
//! [`CompiledSchema::validate`]), which neither parses the schema nor compiles a regex again.
//!
//! The validator is the `jsonschema` crate, chosen by measurement over `jsonschema-valid`
//! (docs/json-schema.md): it passes the whole draft-07 and draft 2020-12 test suites, and it
//! validates a 1 KB order document in about 2 µs inside wasm where `jsonschema-valid`, which
//! compiles every `pattern` again on every validation, needs over 100 µs.
//!
//! Choices made here for a gateway rather than a general library:
//! - Drafts: draft-07 and 2020-12, picked by `$schema`; 2020-12 when `$schema` is absent. Others
//!   are refused so that a schema is never read under rules its author did not mean.
//! - `format` is asserted (`email`, `date-time`, `uuid`, `uri`, `ipv4`, `ipv6`, …) in both drafts:
//!   someone who writes `"format": "email"` in a gateway expects the gateway to check it. A format
//!   name the validator does not know is a configuration error, not silently ignored, so a typo
//!   cannot switch a check off. `uuid` is checked in draft-07 too (it is a 2019-09 addition that
//!   draft-07 schemas commonly use); `duration` is 2020-12 only; `idn-email` and `idn-hostname`
//!   are unknown (they need the crate's `idna` tables, left out to keep the module small).
//! - `pattern` and `patternProperties` use the `regex` crate's engine (linear time, no
//!   backtracking): a hostile body cannot make a pattern run for long. Look-around and
//!   back-references are therefore refused when the schema is compiled.
//! - References are resolved only inside the schema document (`$ref` to `#/…`, to an `$anchor`, or
//!   to an embedded `$id`) and to the drafts' own meta-schemas, which the crate carries. Nothing
//!   is ever fetched: a reference to anything else is a configuration error.

use jsonschema::{Draft, PatternOptions, ReferencingError, Retrieve, Uri, ValidationError};
use serde_json::Value;
use std::fmt::Write as _;

/// The longest text kept in any field of a [`Violation`] or in a [`SchemaError`] message, in
/// characters: replies stay small, and a long body key or schema value is not echoed whole.
pub const MAX_FIELD_CHARS: usize = 200;

/// A schema compiled once at configure time.
pub struct CompiledSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("draft", &self.validator.draft())
            .finish_non_exhaustive()
    }
}

/// One violation, for the 400 reply body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Where in the body: a JSON pointer (`""` is the whole body, `/items/1/quantity` a field).
    /// Cut to [`MAX_FIELD_CHARS`] (ending in `…`) when the body's keys make it longer.
    pub instance_path: String,
    /// The schema keyword that failed (`required`, `type`, `format`, `additionalProperties`, …).
    pub keyword: String,
    /// What is wrong, in words. Never contains the offending value (it is written as `value`);
    /// it may name unexpected property names of the body. At most [`MAX_FIELD_CHARS`] characters.
    pub message: String,
}

/// Why a schema cannot be used. The messages are meant for configuration errors: they say what
/// to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// `$schema` names a draft other than draft-07 or 2020-12, or is not a string.
    #[error(
        "`$schema` {0} is not supported: use \"http://json-schema.org/draft-07/schema#\" or \
         \"https://json-schema.org/draft/2020-12/schema\" (2020-12 when absent)"
    )]
    UnsupportedDraft(String),
    /// A `$ref` (or `$schema`, `$dynamicRef`) points outside the document.
    #[error(
        "reference {0} is not inside the schema document: remote references (http, https, file) \
         are never fetched; put the referenced schema under `$defs` with that `$id` instead"
    )]
    RemoteRef(String),
    /// The schema breaks its draft's rules (a wrong keyword type, a pattern the regex engine
    /// refuses, an unknown format, a reference to nothing, …).
    #[error("invalid schema at \"{at}\": {message}")]
    Invalid {
        /// JSON pointer into the schema, `""` for the root.
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// The retriever given to the crate: refuses every URI, so that only the document itself and
/// the bundled meta-schemas can be referenced. Its refusal becomes [`SchemaError::RemoteRef`].
struct NoRetrieval;

impl Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("{uri} is not fetched").into())
    }
}

impl CompiledSchema {
    /// Compiles a schema document: draft-07 or 2020-12 by `$schema`, 2020-12 when it is absent
    /// (the current draft, the one OpenAPI 3.1 uses, and the crate's own default; a draft-07
    /// schema written without `$schema` is still read correctly unless it relies on
    /// `additionalItems`, `dependencies` or the array form of `items`, which 2020-12 renamed).
    ///
    /// The schema is checked against its draft's meta-schema, every regex is compiled and every
    /// reference resolved now, so a schema that compiles cannot fail later. Remote references
    /// (http/https/file) are refused: only references inside the document are allowed.
    pub fn compile(schema: &Value) -> Result<CompiledSchema, SchemaError> {
        let draft = draft_of(schema)?;
        let mut options = jsonschema::options()
            .with_draft(draft)
            .with_retriever(NoRetrieval)
            .with_pattern_options(PatternOptions::regex())
            .should_validate_formats(true)
            .should_ignore_unknown_formats(false);
        if draft == Draft::Draft7 {
            // `uuid` became a standard format in 2019-09, but draft-07 schemas use it widely
            // (OpenAPI 3.0 among them): check it rather than refuse it as unknown.
            options = options.with_format("uuid", is_uuid);
        }
        let validator = options.build(schema).map_err(|e| schema_error(&e))?;
        Ok(CompiledSchema { validator })
    }

    /// Validates an instance, returning at most `max` violations (empty = valid). `max` is
    /// taken as at least 1, so an invalid body always yields one violation.
    ///
    /// A valid body costs one pass without messages. For an invalid one the crate collects every
    /// violation before the first `max` are kept, so `max` bounds the reply, not the work: the
    /// caller bounds the work by the body size it accepts.
    pub fn validate(&self, instance: &Value, max: usize) -> Vec<Violation> {
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        self.validator
            .iter_errors(instance)
            .take(max.max(1))
            .map(|e| violation(&e))
            .collect()
    }

    /// Yes or no, without building messages: the cheaper check when the reply does not list
    /// violations.
    pub fn is_valid(&self, instance: &Value) -> bool {
        self.validator.is_valid(instance)
    }
}

/// The draft of a schema document, from its root `$schema`.
fn draft_of(schema: &Value) -> Result<Draft, SchemaError> {
    let Some(declared) = schema.as_object().and_then(|o| o.get("$schema")) else {
        return Ok(Draft::Draft202012);
    };
    let Some(uri) = declared.as_str() else {
        return Err(SchemaError::UnsupportedDraft(cap(&declared.to_string())));
    };
    match Draft::from_schema_uri(uri) {
        d @ (Draft::Draft7 | Draft::Draft202012) => Ok(d),
        _ => Err(SchemaError::UnsupportedDraft(cap(&format!("{uri:?}")))),
    }
}

/// RFC 4122's textual form, as 2020-12's `uuid` format: 8-4-4-4-12 hexadecimal digits.
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A compile error of the crate as a configuration error.
fn schema_error(e: &ValidationError<'_>) -> SchemaError {
    if let jsonschema::error::ValidationErrorKind::Referencing(ReferencingError::Unretrievable {
        uri,
        ..
    }) = e.kind()
    {
        return SchemaError::RemoteRef(cap(uri));
    }
    SchemaError::Invalid {
        at: cap(e.instance_path().as_str()),
        message: cap(&e.to_string()),
    }
}

/// A validation error of the crate as a reply entry, without the offending value.
fn violation(e: &ValidationError<'_>) -> Violation {
    let mut message = Capped::default();
    // `Capped` stops the formatting with an error once the message is long enough; what was
    // written up to then is the message.
    let _ = write!(message, "{}", e.masked());
    Violation {
        instance_path: cap(e.instance_path().as_str()),
        keyword: cap(e.kind().keyword()),
        message: message.finish(),
    }
}

/// `text`, cut to [`MAX_FIELD_CHARS`] characters (the last one `…`) when it is longer.
fn cap(text: &str) -> String {
    let mut out = Capped::default();
    let _ = out.write_str(text);
    out.finish()
}

/// A string sink that keeps at most [`MAX_FIELD_CHARS`] characters and then refuses more, so a
/// message listing thousands of a body's keys is not built in full only to be cut.
#[derive(Default)]
struct Capped {
    text: String,
    chars: usize,
    cut: bool,
}

impl Capped {
    /// The text kept; if more was offered, its last character gives way to `…`.
    fn finish(mut self) -> String {
        if self.cut {
            self.text.pop();
            self.text.push('…');
        }
        self.text
    }
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for c in s.chars() {
            if self.chars >= MAX_FIELD_CHARS {
                self.cut = true;
                return Err(std::fmt::Error);
            }
            self.text.push(c);
            self.chars = self.chars.saturating_add(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn order_schema() -> Value {
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "required": ["id", "email", "items"],
            "properties": {
                "id": {"type": "string", "pattern": "^ord_[0-9a-z]{4}$"},
                "email": {"type": "string", "format": "email"},
                "at": {"type": "string", "format": "date-time"},
                "items": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["sku", "qty"],
                        "properties": {
                            "sku": {"type": "string", "enum": ["A-1", "B-2"]},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 10}
                        }
                    }
                }
            }
        })
    }

    fn compiled(schema: &Value) -> CompiledSchema {
        CompiledSchema::compile(schema).unwrap()
    }

    #[test]
    fn valid_body_has_no_violations() {
        let s = compiled(&order_schema());
        let body = json!({"id": "ord_ab12", "email": "a@example.com", "at": "2026-01-02T03:04:05Z",
                          "items": [{"sku": "A-1", "qty": 2}]});
        assert!(s.is_valid(&body));
        assert!(s.validate(&body, 10).is_empty());
    }

    #[test]
    fn violations_name_path_and_keyword_without_the_value() {
        let s = compiled(&order_schema());
        let body = json!({"id": "ord_SECRET", "email": "secret-not-an-email", "extra": 1,
                          "items": [{"sku": "A-1", "qty": 2}, {"sku": "C-3", "qty": 11}]});
        assert!(!s.is_valid(&body));
        let v = s.validate(&body, 10);
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|v| (v.instance_path.as_str(), v.keyword.as_str()))
            .collect();
        for want in [
            ("", "additionalProperties"),
            ("/id", "pattern"),
            ("/email", "format"),
            ("/items/1/sku", "enum"),
            ("/items/1/qty", "maximum"),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {got:?}");
        }
        assert_eq!(v.len(), 5, "{v:?}");
        for v in &v {
            assert!(!v.message.contains("SECRET"), "{v:?}");
            assert!(!v.message.contains("secret-not-an-email"), "{v:?}");
            assert!(!v.message.contains("C-3"), "{v:?}");
        }
    }

    #[test]
    fn max_caps_the_list_and_is_at_least_one() {
        let s = compiled(&order_schema());
        let body = json!({"id": 1, "email": 2, "items": 3});
        assert_eq!(s.validate(&body, 100).len(), 3);
        assert_eq!(s.validate(&body, 2).len(), 2);
        assert_eq!(
            s.validate(&body, 0).len(),
            1,
            "an invalid body is never reported valid"
        );
    }

    #[test]
    fn formats_are_asserted_in_both_drafts() {
        for uri in [
            "http://json-schema.org/draft-07/schema#",
            "https://json-schema.org/draft/2020-12/schema",
        ] {
            for (format, good, bad) in [
                ("email", "a@example.com", "a.example.com"),
                ("date-time", "2026-01-02T03:04:05+01:00", "2026-01-02 03:04"),
                ("uuid", "5f1d0c3e-8a7b-4c1e-9d2f-0a1b2c3d4e5f", "5f1d0c3e"),
                ("uri", "https://example.com/a?b#c", "not a uri"),
                ("ipv4", "192.0.2.1", "192.0.2.256"),
                ("ipv6", "2001:db8::1", "2001:db8:::1"),
            ] {
                let s = compiled(&json!({"$schema": uri, "format": format}));
                assert!(s.is_valid(&json!(good)), "{uri} {format} {good}");
                assert!(!s.is_valid(&json!(bad)), "{uri} {format} {bad}");
                let v = s.validate(&json!(bad), 5);
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].keyword, "format");
            }
        }
    }

    #[test]
    fn uuid_form() {
        assert!(is_uuid("5f1d0c3e-8a7b-4c1e-9d2f-0a1b2c3d4e5f"));
        assert!(is_uuid("5F1D0C3E-8A7B-4C1E-9D2F-0A1B2C3D4E5F"));
        for bad in [
            "",
            "5f1d0c3e-8a7b-4c1e-9d2f-0a1b2c3d4e5g",
            "5f1d0c3e-8a7b-4c1e-9d2f0-a1b2c3d4e5f",
            "5f1d0c3e8a7b4c1e9d2f0a1b2c3d4e5f",
            "{5f1d0c3e-8a7b-4c1e-9d2f-0a1b2c3d4e5f}",
            "5f1d0c3e-8a7b-4c1e-9d2f-0a1b2c3d4e5é",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_formats_are_configuration_errors() {
        let e = CompiledSchema::compile(&json!({"format": "emial"})).unwrap_err();
        assert!(matches!(e, SchemaError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("emial"), "{e}");
    }

    #[test]
    fn draft_is_2020_12_unless_declared() {
        // `dependentRequired` exists in 2020-12 only; draft-07 ignores it as unknown.
        let schema = json!({"dependentRequired": {"a": ["b"]}});
        assert!(!compiled(&schema).is_valid(&json!({"a": 1})));
        let mut d7 = schema.clone();
        d7["$schema"] = json!("http://json-schema.org/draft-07/schema#");
        assert!(compiled(&d7).is_valid(&json!({"a": 1})));
        // The array form of `items` is draft-07; 2020-12 refuses it at compile time.
        let tuple = json!({"items": [{"type": "integer"}]});
        assert!(CompiledSchema::compile(&tuple).is_err());
        let mut tuple7 = tuple.clone();
        tuple7["$schema"] = json!("http://json-schema.org/draft-07/schema");
        assert!(!compiled(&tuple7).is_valid(&json!(["x"])));
    }

    #[test]
    fn other_drafts_are_refused() {
        for declared in [
            json!("http://json-schema.org/draft-04/schema#"),
            json!("http://json-schema.org/draft-06/schema#"),
            json!("https://json-schema.org/draft/2019-09/schema"),
            json!("https://example.com/my-meta-schema"),
            json!(7),
        ] {
            let e = CompiledSchema::compile(&json!({"$schema": declared})).unwrap_err();
            assert!(
                matches!(e, SchemaError::UnsupportedDraft(_)),
                "{declared}: {e}"
            );
        }
    }

    #[test]
    fn remote_references_are_refused_at_compile_time() {
        for uri in [
            "https://example.com/schemas/address.json",
            "http://example.com/schemas/address.json#/$defs/x",
            "file:///etc/schemas/address.json",
        ] {
            let schema = json!({"properties": {"address": {"$ref": uri}}});
            let e = CompiledSchema::compile(&schema).unwrap_err();
            match &e {
                SchemaError::RemoteRef(u) => {
                    assert!(uri.starts_with(u.trim_end_matches('#')), "{u} vs {uri}")
                }
                other => panic!("{uri}: {other}"),
            }
            assert!(e.to_string().contains("never fetched"), "{e}");
        }
    }

    #[test]
    fn references_inside_the_document_resolve() {
        let schema = json!({
            "$id": "https://api.example.com/order.json",
            "$defs": {
                "address": {"$id": "https://api.example.com/address.json", "type": "object",
                            "required": ["city"]},
                "qty": {"$anchor": "qty", "type": "integer", "minimum": 1}
            },
            "properties": {
                "ship_to": {"$ref": "address.json"},
                "bill_to": {"$ref": "https://api.example.com/address.json"},
                "qty": {"$ref": "#qty"},
                "max": {"$ref": "#/$defs/qty"}
            }
        });
        let s = compiled(&schema);
        assert!(s.is_valid(&json!({"ship_to": {"city": "x"}, "bill_to": {"city": "y"}, "qty": 1})));
        let v = s.validate(
            &json!({"ship_to": {}, "bill_to": {}, "qty": 0, "max": 0}),
            10,
        );
        assert_eq!(v.len(), 4, "{v:?}");
        // The drafts' meta-schemas are carried by the crate, not fetched.
        let meta = json!({"$ref": "https://json-schema.org/draft/2020-12/schema"});
        assert!(!compiled(&meta).is_valid(&json!({"type": 5})));
    }

    #[test]
    fn invalid_schemas_say_where() {
        for (schema, at) in [
            (json!({"type": "integr"}), "/type"),
            (
                json!({"properties": {"a": {"minimum": "1"}}}),
                "/properties/a/minimum",
            ),
            (json!({"pattern": "^(?=a)"}), ""),
            (json!(42), ""),
        ] {
            match CompiledSchema::compile(&schema) {
                Err(SchemaError::Invalid { at: got, .. }) => assert!(
                    got.starts_with(at),
                    "{schema}: error at {got:?}, expected {at:?}"
                ),
                other => panic!("{schema}: {other:?}"),
            }
        }
    }

    #[test]
    fn long_keys_and_values_are_cut() {
        let s = compiled(&json!({"additionalProperties": {"type": "integer"}}));
        let key = "k".repeat(5000);
        let v = s.validate(&json!({ key.clone(): "x" }), 5);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].instance_path.chars().count(), MAX_FIELD_CHARS);
        assert!(v[0].instance_path.ends_with('…'));
        let closed = compiled(&json!({"properties": {"a": {}}, "additionalProperties": false}));
        let many: serde_json::Map<String, Value> =
            (0..2000).map(|i| (format!("{key}{i}"), json!(i))).collect();
        let v = closed.validate(&Value::Object(many), 5);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].keyword, "additionalProperties");
        assert_eq!(
            v[0].message.chars().count(),
            MAX_FIELD_CHARS,
            "{}",
            v[0].message
        );
        assert!(v[0].message.ends_with('…'), "{}", v[0].message);
    }

    #[test]
    fn cap_keeps_exactly_the_limit() {
        let at_limit = "é".repeat(MAX_FIELD_CHARS);
        assert_eq!(cap(&at_limit), at_limit);
        let over = "é".repeat(MAX_FIELD_CHARS + 1);
        let cut = cap(&over);
        assert_eq!(cut.chars().count(), MAX_FIELD_CHARS);
        assert!(cut.ends_with("é…"));
        assert_eq!(cap(""), "");
    }

    /// Any JSON value: scalars of every kind (including extreme numbers and non-ASCII strings)
    /// nested in arrays and objects.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,24}".prop_map(Value::from),
            "[a-z0-9.@:_-]{0,24}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,6}|\\PC{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A schema using many keywords at once, recursive through `$ref`.
    fn busy_schema() -> Value {
        json!({
            "$defs": {"node": {
                "type": ["object", "array", "string", "number", "boolean", "null"],
                "properties": {"id": {"type": "string", "format": "uuid"},
                               "email": {"format": "email"}, "at": {"format": "date-time"},
                               "n": {"multipleOf": 0.01, "exclusiveMinimum": -1e9}},
                "patternProperties": {"^[a-z]+$": {"$ref": "#/$defs/node"}},
                "items": {"$ref": "#/$defs/node"},
                "uniqueItems": true,
                "contains": {"type": "string", "pattern": "^\\p{L}+$"},
                "minContains": 0,
                "propertyNames": {"maxLength": 6},
                "dependentSchemas": {"a": {"required": ["b"]}},
                "if": {"type": "string"}, "then": {"maxLength": 20, "format": "ipv4"},
                "anyOf": [{"type": "string"}, {"not": {"const": 0}}],
                "oneOf": [{"type": "null"}, {"not": {"type": "null"}}],
                "unevaluatedProperties": {"type": ["number", "string", "object", "array", "null", "boolean"]}
            }},
            "$ref": "#/$defs/node"
        })
    }

    /// Compiled once for all proptest cases.
    static SCHEMAS: std::sync::LazyLock<[CompiledSchema; 2]> =
        std::sync::LazyLock::new(|| [compiled(&busy_schema()), compiled(&order_schema())]);

    proptest! {
        #[test]
        fn never_panics_and_both_checks_agree(body in any_json()) {
            for s in SCHEMAS.iter() {
                let quick = s.is_valid(&body);
                let listed = s.validate(&body, 3);
                prop_assert_eq!(quick, listed.is_empty());
                prop_assert!(listed.len() <= 3);
                for v in &listed {
                    prop_assert!(v.message.chars().count() <= MAX_FIELD_CHARS);
                    prop_assert!(v.instance_path.chars().count() <= MAX_FIELD_CHARS);
                }
            }
        }
    }
}
