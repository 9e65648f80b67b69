//! JSON Schemas for request bodies: named ones in the top-level `schemas` map, and each route's
//! `body_schemas`, which pick a schema by method. Every schema is compiled once, here.

use super::reader::{self, Ctx, Obj};
use crate::schema::CompiledSchema;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The named schemas.
pub type Schemas = BTreeMap<String, Arc<CompiledSchema>>;

/// A route's schema for some methods.
#[derive(Debug, Clone)]
pub struct BodySchema {
    /// Upper-case methods it applies to (empty = every method).
    pub methods: Vec<String>,
    /// The compiled schema.
    pub schema: Arc<CompiledSchema>,
    /// The schema's name, for audit records (`inline` for an inline schema).
    pub name: String,
}

/// Reads the top-level `schemas`: `{"order": {…JSON Schema…}, …}`.
pub fn read_schemas(cx: &mut Ctx, v: &Value, path: &str) -> Schemas {
    let Value::Object(map) = v else {
        cx.error(
            path,
            format!("expected an object, found {}", reader::type_name(v)),
        );
        return Schemas::new();
    };
    map.iter()
        .filter_map(|(name, doc)| {
            let at = reader::child(path, name);
            compile(cx, doc, &at).map(|s| (name.clone(), s))
        })
        .collect()
}

fn compile(cx: &mut Ctx, doc: &Value, path: &str) -> Option<Arc<CompiledSchema>> {
    match CompiledSchema::compile(doc) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            cx.error(path, e.to_string());
            None
        }
    }
}

/// Reads a route's `body_schemas`: `[{"methods": ["POST"], "schema": "order"}, {"schema": {…}}]`.
pub fn read_body_schemas(
    cx: &mut Ctx,
    o: &mut Obj<'_>,
    key: &'static str,
    named: &Schemas,
) -> Vec<BodySchema> {
    o.array(cx, key)
        .into_iter()
        .filter_map(|(v, path)| {
            let mut e = Obj::new(cx, v, &path)?;
            let methods = super::route::read_methods(cx, &mut e, "methods");
            let schema_path = e.field_path("schema");
            let found = match e.required(cx, "schema") {
                Some(Value::String(name)) => match named.get(name) {
                    Some(s) => Some((Arc::clone(s), name.clone())),
                    None => {
                        cx.error(&schema_path, format!("no schema is named {name:?}"));
                        None
                    }
                },
                Some(doc @ (Value::Object(_) | Value::Bool(_))) => {
                    compile(cx, doc, &schema_path).map(|s| (s, "inline".to_owned()))
                }
                Some(other) => {
                    cx.error(
                        &schema_path,
                        format!(
                            "expected a schema name or a schema, found {}",
                            reader::type_name(other)
                        ),
                    );
                    None
                }
                None => None,
            };
            e.finish(cx);
            let (schema, name) = found?;
            Some(BodySchema {
                methods,
                schema,
                name,
            })
        })
        .collect()
}

/// The schema a request's body must match: the first entry whose methods include `method`.
pub fn for_method<'r>(schemas: &'r [BodySchema], method: &str) -> Option<(usize, &'r BodySchema)> {
    schemas
        .iter()
        .enumerate()
        .find(|(_, s)| s.methods.is_empty() || s.methods.iter().any(|m| m == method))
}
