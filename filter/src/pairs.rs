//! The proxy-wasm map serialisation (header maps, call metadata, local-reply headers).
//!
//! A map is `[count][len(key_0)][len(value_0)]…` (little-endian `u32`s) followed by every key
//! and value, each followed by a NUL. The host writes it for header maps the filter reads; the
//! filter writes it for callouts and local replies. Plain Rust so that it is tested natively:
//! the decoder reads bytes from the host and must refuse anything malformed rather than panic.

/// Serialises `pairs` for the host.
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let text: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + text);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&len_u32(k.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.as_ref().len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// A length as the wire's `u32` (a header map beyond 4 GiB cannot exist in Envoy).
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Why bytes from the host are not a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    #[error("the map is shorter than its lengths say")]
    Truncated,
    #[error("a key or value is not followed by NUL")]
    MissingNul,
    #[error("bytes follow the last value")]
    TrailingBytes,
    #[error("a header name is not UTF-8")]
    NameNotUtf8,
}

/// Reads a serialised map: names as text, values as bytes. Empty input is an empty map (the
/// host writes nothing for a map with no entries).
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PairsError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut at = 0usize;
    let count = read_u32(bytes, &mut at)? as usize;
    // Each pair needs at least 8 bytes of lengths and 2 NULs: a count beyond that is a lie,
    // and must not make the decoder reserve memory for it.
    if count > bytes.len() / 10 {
        return Err(PairsError::Truncated);
    }
    let mut lengths = Vec::with_capacity(count);
    for _ in 0..count {
        let k = read_u32(bytes, &mut at)? as usize;
        let v = read_u32(bytes, &mut at)? as usize;
        lengths.push((k, v));
    }
    let mut pairs = Vec::with_capacity(count);
    for (k, v) in lengths {
        let name = take(bytes, &mut at, k)?;
        let value = take(bytes, &mut at, v)?;
        let name = std::str::from_utf8(name).map_err(|_| PairsError::NameNotUtf8)?;
        pairs.push((name.to_owned(), value.to_vec()));
    }
    if at != bytes.len() {
        return Err(PairsError::TrailingBytes);
    }
    Ok(pairs)
}

fn read_u32(bytes: &[u8], at: &mut usize) -> Result<u32, PairsError> {
    let end = at.checked_add(4).ok_or(PairsError::Truncated)?;
    let word: [u8; 4] = bytes
        .get(*at..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(PairsError::Truncated)?;
    *at = end;
    Ok(u32::from_le_bytes(word))
}

/// `len` bytes and the NUL after them.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], PairsError> {
    let end = at.checked_add(len).ok_or(PairsError::Truncated)?;
    let text = bytes.get(*at..end).ok_or(PairsError::Truncated)?;
    match bytes.get(end) {
        Some(0) => {}
        Some(_) => return Err(PairsError::MissingNul),
        None => return Err(PairsError::Truncated),
    }
    *at = end + 1;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs = [(":method", "GET"), ("x-a", ""), ("x-b", "v\u{e9}")];
        let bytes = encode(&pairs);
        let back = decode(&bytes);
        let expected: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(back, Ok(expected));
    }

    #[test]
    fn the_abi_example() {
        // {(":method","GET"),("x-a","")} as the ABI reference spells it out.
        let mut want = vec![2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b":method\0GET\0x-a\0\0");
        assert_eq!(encode(&[(":method", "GET"), ("x-a", "")]), want);
    }

    #[test]
    fn empty_input_is_an_empty_map() {
        assert_eq!(decode(&[]), Ok(Vec::new()));
        assert_eq!(decode(&encode::<&str, &str>(&[])), Ok(Vec::new()));
    }

    #[test]
    fn malformed_maps_are_errors() {
        let good = encode(&[("a", "b")]);
        for cut in 1..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(decode(&no_nul), Err(PairsError::MissingNul));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(PairsError::TrailingBytes));
        // A count of 2^32-1 with nothing behind it reserves nothing and is refused.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(PairsError::Truncated)
        );
        // Lengths that overflow the address space.
        let mut huge = vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&huge), Err(PairsError::Truncated));
    }
}
