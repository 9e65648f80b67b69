//! The map serialisation of proxy-wasm (CPPH `pairs_util.cc`, RSDK `utils::serialize_map`):
//! `[N][klen vlen]*N (k \0 v \0)*N`, little-endian u32s.

use super::types::HeaderMap;

/// cpp-host's limits (CPPH `limits.h`): larger or malformed input is treated as empty.
const MAX_PAIRS_SIZE: usize = 1 << 20;
const MAX_PAIRS_COUNT: usize = 1024;

/// Serialises a map; an empty map is empty bytes (Envoy answers `(0, 0)`).
pub(crate) fn serialize<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    if pairs.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Serialises a header map.
pub(crate) fn serialize_map(map: &HeaderMap) -> Vec<u8> {
    serialize(&map.pairs)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Parses the serialisation strictly, as CPPH `PairsUtil::toPairs`: too large, too many pairs, a
/// missing NUL or trailing bytes → `None` (callers treat it as an empty map). Empty input is an
/// empty map.
pub(crate) fn parse(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    if bytes.len() > MAX_PAIRS_SIZE {
        return None;
    }
    let n = u32_at(bytes, 0)?;
    if n > MAX_PAIRS_COUNT {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    let mut at = 4;
    for _ in 0..n {
        let k = u32_at(bytes, at)?;
        let v = u32_at(bytes, at + 4)?;
        sizes.push((k, v));
        at += 8;
    }
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?.to_vec();
        at += k;
        if *bytes.get(at)? != 0 {
            return None;
        }
        at += 1;
        let value = bytes.get(at..at.checked_add(v)?)?.to_vec();
        at += v;
        if *bytes.get(at)? != 0 {
            return None;
        }
        at += 1;
        out.push((key, value));
    }
    if at != bytes.len() {
        return None;
    }
    Some(out)
}

/// Parses into a header map with lower-cased names (Envoy adds each with `LowerCaseString`).
pub(crate) fn parse_map(bytes: &[u8]) -> Option<HeaderMap> {
    let pairs = parse(bytes)?;
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.add(&String::from_utf8_lossy(&k), &v);
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reference_example() {
        let map = HeaderMap::from_pairs(&[(":method", "GET"), ("x-a", "")]);
        let bytes = serialize_map(&map);
        assert_eq!(bytes.len(), 37);
        assert_eq!(parse_map(&bytes), Some(map));
        assert!(serialize_map(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn malformed_is_none() {
        let mut bytes = serialize(&[("a", "b")]);
        bytes.push(1);
        assert_eq!(parse(&bytes), None);
        assert_eq!(parse(&[1, 0, 0]), None);
        assert_eq!(parse(&[0, 0, 0, 0]), Some(Vec::new()));
    }
}
