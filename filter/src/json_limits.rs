//! A one-pass scan of a JSON body's shape — nesting depth, string length, duplicate keys —
//! before it is parsed, so a hostile document is refused without building any of it.

use std::collections::HashSet;

/// Why a body's shape is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Arrays and objects nest deeper than allowed.
    #[error("the JSON body nests deeper than {0} levels")]
    TooDeep(u64),
    /// A string (key or value, as written with its escapes) is longer than allowed.
    #[error("a JSON string in the body is longer than {0} bytes")]
    StringTooLong(u64),
    /// An object names the same member twice (after unescaping). Parsers disagree on which
    /// value counts (the filter's keeps the last, many services the first), so a payload could
    /// hide behind a harmless twin: such a body is refused, not guessed at.
    #[error("an object in the JSON body has the same key twice")]
    DuplicateKey,
}

/// One open array or object.
enum Frame {
    Array,
    Object {
        /// The keys seen so far, unescaped.
        keys: HashSet<Vec<u8>>,
        /// The next string is a key (after `{` or `,`).
        expecting_key: bool,
    },
}

/// Checks depth, string lengths and duplicate keys. It does not validate the JSON otherwise: the
/// parser that follows does, and it only runs when this scan passes.
pub fn check(body: &[u8], max_depth: u64, max_string: u64) -> Result<(), ShapeError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut string_len: u64 = 0;
    // Where the key being read starts (just after its opening quote), when the string is a key.
    let mut key_start: Option<usize> = None;
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if let Some(start) = key_start.take() {
                    let raw = body.get(start..i).unwrap_or_default();
                    if let Some(Frame::Object { keys, .. }) = stack.last_mut()
                        && !keys.insert(unescape(raw))
                    {
                        return Err(ShapeError::DuplicateKey);
                    }
                }
                continue;
            }
            string_len += 1;
            if string_len > max_string {
                return Err(ShapeError::StringTooLong(max_string));
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_len = 0;
                if let Some(Frame::Object { expecting_key, .. }) = stack.last_mut()
                    && *expecting_key
                {
                    *expecting_key = false;
                    key_start = Some(i + 1);
                }
            }
            b'[' | b'{' => {
                if stack.len() as u64 >= max_depth {
                    return Err(ShapeError::TooDeep(max_depth));
                }
                stack.push(if b == b'[' {
                    Frame::Array
                } else {
                    Frame::Object {
                        keys: HashSet::new(),
                        expecting_key: true,
                    }
                });
            }
            b']' | b'}' => {
                stack.pop();
            }
            b',' => {
                if let Some(Frame::Object { expecting_key, .. }) = stack.last_mut() {
                    *expecting_key = true;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A key as its text: `"q"` and `"\u0071"` are the same key. A key with no escape is its bytes;
/// one whose escapes do not decode stays as written (the parser refuses that body anyway).
fn unescape(raw: &[u8]) -> Vec<u8> {
    if !raw.contains(&b'\\') {
        return raw.to_vec();
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).map_or_else(|_| raw.to_vec(), String::into_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert_eq!(check(br#"{"a":[1,{"b":2}]}"#, 3, 100), Ok(()));
        assert_eq!(
            check(br#"{"a":[1,{"b":2}]}"#, 2, 100),
            Err(ShapeError::TooDeep(2))
        );
        assert_eq!(check(br#"{"a":"[[[[[[\"]]]]"}"#, 1, 100), Ok(()));
        assert_eq!(
            check(&[b'['; 100_000], 64, 10),
            Err(ShapeError::TooDeep(64))
        );
    }

    #[test]
    fn duplicate_keys_are_refused_however_they_are_spelled() {
        let dup = Err(ShapeError::DuplicateKey);
        assert_eq!(
            check(
                br#"{"q":"1' UNION SELECT password FROM users--","q":"ok"}"#,
                8,
                100
            ),
            dup
        );
        assert_eq!(check(br#"{"q":1,"\u0071":2}"#, 8, 100), dup);
        assert_eq!(check(br#"{"a":{"b":1,"c":{"b":2},"b":3}}"#, 8, 100), dup);
        assert_eq!(check(br#"[{"a":1},{"a":1,"a":2}]"#, 8, 100), dup);
        // The same key in different objects, or a value equal to a key, is fine.
        assert_eq!(check(br#"[{"a":1},{"a":2}]"#, 8, 100), Ok(()));
        assert_eq!(
            check(br#"{"a":"a","b":{"a":"b"},"c":["a","a"]}"#, 8, 100),
            Ok(())
        );
        assert_eq!(check(br#"{"a\"b":1,"a\\b":2}"#, 8, 100), Ok(()));
        assert_eq!(check(br#"{"a\"b":1,"a\u0022b":2}"#, 8, 100), dup);
    }

    #[test]
    fn strings_are_measured_as_written() {
        assert_eq!(check(br#"["abcd"]"#, 4, 4), Ok(()));
        assert_eq!(
            check(br#"["abcde"]"#, 4, 4),
            Err(ShapeError::StringTooLong(4))
        );
        assert_eq!(
            check(br#"{"abcde":1}"#, 4, 4),
            Err(ShapeError::StringTooLong(4))
        );
        // An escaped quote does not end the string.
        assert_eq!(
            check(br#"["ab\"cd"]"#, 4, 5),
            Err(ShapeError::StringTooLong(5))
        );
    }
}
