//! `inspection`: which attack signatures are looked for, where, and whether a finding refuses
//! the request or is only recorded. Inspectors are expensive to build, so routes with the same
//! rule options share one.

use super::reader::{self, Ctx, Obj};
use crate::inspect::{Category, Inspector, InspectorOptions, Level};
use serde_json::Value;
use std::sync::Arc;

/// Headers inspected when the configuration names none (values as received; `cookie` is split
/// into cookie values).
pub const DEFAULT_HEADERS: [&str; 3] = ["cookie", "referer", "user-agent"];

/// Inspection as a route applies it.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The prepared rules.
    pub inspector: Arc<Inspector>,
    /// Record findings without refusing.
    pub shadow: bool,
    /// Headers whose values are inspected (lower case).
    pub headers: Vec<String>,
    /// Inspect JSON and form bodies (the body is then read whole before it goes on).
    pub body: bool,
}

/// What a block of `inspection` says, before inspectors are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectionSpec {
    /// Rule options.
    pub options: InspectorOptions,
    /// `mode: "shadow"`.
    pub shadow: bool,
    /// Headers to inspect.
    pub headers: Vec<String>,
    /// Whether bodies are inspected.
    pub body: bool,
}

impl Default for InspectionSpec {
    fn default() -> Self {
        InspectionSpec {
            options: InspectorOptions::default(),
            shadow: false,
            headers: DEFAULT_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
            body: true,
        }
    }
}

/// Reads an `inspection` block over `base` (fields left out keep the base value).
pub fn read_spec(cx: &mut Ctx, v: &Value, path: &str, base: &InspectionSpec) -> InspectionSpec {
    let mut spec = base.clone();
    let Some(mut o) = Obj::new(cx, v, path) else {
        return spec;
    };
    match o.str(cx, "mode") {
        None => {}
        Some("block") => spec.shadow = false,
        Some("shadow") => spec.shadow = true,
        Some(other) => cx.error(
            &o.field_path("mode"),
            format!("{other:?} is not \"block\" or \"shadow\""),
        ),
    }
    if let Some(level) = o.str(cx, "level") {
        match level.parse::<Level>() {
            Ok(l) => spec.options.level = l,
            Err(e) => cx.error(&o.field_path("level"), e.to_string()),
        }
    }
    if o.has("categories") {
        let cpath = o.field_path("categories");
        spec.options.categories = o
            .str_list(cx, "categories")
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| match c.parse::<Category>() {
                Ok(c) => Some(c),
                Err(e) => {
                    cx.error(&reader::index(&cpath, i), e.to_string());
                    None
                }
            })
            .collect();
    }
    if o.has("disabled_rules") {
        spec.options.disabled_rules = o
            .str_list(cx, "disabled_rules")
            .into_iter()
            .map(str::to_owned)
            .collect();
    }
    if let Some(h) = o.get("headers") {
        let hpath = o.field_path("headers");
        spec.headers = reader::as_array(cx, h, &hpath)
            .map(|items| {
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| super::header_name(cx, item, &reader::index(&hpath, i)))
                    .collect()
            })
            .unwrap_or_default();
    }
    spec.body = o.bool(cx, "body", spec.body);
    o.finish(cx);
    spec
}

/// Builds inspectors, one per distinct rule options.
#[derive(Default)]
pub struct InspectorCache {
    built: Vec<(InspectorOptions, Arc<Inspector>)>,
    /// Options already reported as wrong (reported once, not once per route).
    failed: Vec<InspectorOptions>,
}

impl InspectorCache {
    /// The inspection for a spec, reusing an inspector built for the same options; errors
    /// (an unknown rule in `disabled_rules`) are reported at `path`.
    pub fn resolve(
        &mut self,
        cx: &mut Ctx,
        spec: &InspectionSpec,
        path: &str,
    ) -> Option<Inspection> {
        if self.failed.contains(&spec.options) {
            return None;
        }
        let inspector = match self.built.iter().find(|(o, _)| *o == spec.options) {
            Some((_, i)) => Arc::clone(i),
            None => match Inspector::new(&spec.options) {
                Ok(i) => {
                    let i = Arc::new(i);
                    self.built.push((spec.options.clone(), Arc::clone(&i)));
                    i
                }
                Err(e) => {
                    cx.error(path, e.to_string());
                    self.failed.push(spec.options.clone());
                    return None;
                }
            },
        };
        Some(Inspection {
            inspector,
            shadow: spec.shadow,
            headers: spec.headers.clone(),
            body: spec.body,
        })
    }
}
