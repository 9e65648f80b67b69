//! Local replies for refused requests: status, standard headers and a small JSON body.

use crate::decision::Refusal;

/// Headers of a refusal reply (`content-type`, `cache-control`, and `www-authenticate` where the
/// status calls for it).
pub fn headers(refusal: &Refusal) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "application/json".to_owned()),
        ("cache-control", "no-store".to_owned()),
    ];
    if let Some(c) = &refusal.challenge {
        h.push(("www-authenticate", c.clone()));
    }
    h.extend(refusal.headers.iter().cloned());
    h
}

/// `{"error": "...", "message": "...", "request_id": "..."}`, plus `details` (schema
/// violations) when the refusal has them.
pub fn body(refusal: &Refusal, request_id: &str) -> String {
    let mut body = serde_json::json!({
        "error": refusal.error,
        "message": refusal.message,
        "request_id": request_id,
    });
    if let (Some(details), Some(map)) = (&refusal.details, body.as_object_mut()) {
        map.insert("details".to_owned(), details.clone());
    }
    body.to_string()
}
