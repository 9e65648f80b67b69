//! A one-pass scan of a JSON body's shape — nesting depth and string length — before it is
//! parsed, so a hostile document is refused without building any of it.

/// Why a body's shape is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Arrays and objects nest deeper than allowed.
    #[error("the JSON body nests deeper than {0} levels")]
    TooDeep(u64),
    /// A string (key or value, as written with its escapes) is longer than allowed.
    #[error("a JSON string in the body is longer than {0} bytes")]
    StringTooLong(u64),
}

/// Checks depth and string lengths. It does not validate the JSON otherwise: the parser that
/// follows does, and it only runs when this scan passes.
pub fn check(body: &[u8], max_depth: u64, max_string: u64) -> Result<(), ShapeError> {
    let mut depth: u64 = 0;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_len: u64 = 0;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
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
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(ShapeError::TooDeep(max_depth));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
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
