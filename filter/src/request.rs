//! The part of a request the decision reads: pseudo-headers and headers, nothing else.

/// A borrowed view of a request's headers, as Envoy hands them to the filter (names in lower
/// case, pseudo-headers included, repeated headers as separate entries).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Every header, including `:method`, `:authority` and `:path`.
    pub headers: &'a [(String, String)],
}

impl<'a> Request<'a> {
    /// Wraps a header list.
    pub fn new(headers: &'a [(String, String)]) -> Self {
        Request { headers }
    }

    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn headers_named<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `:method`.
    pub fn method(&self) -> &'a str {
        self.header(":method").unwrap_or("")
    }

    /// `:path` including the query string.
    pub fn path_and_query(&self) -> &'a str {
        self.header(":path").unwrap_or("")
    }

    /// `:path` without the query string.
    pub fn path(&self) -> &'a str {
        let p = self.path_and_query();
        p.split_once('?').map_or(p, |(path, _)| path)
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&'a str> {
        self.path_and_query().split_once('?').map(|(_, q)| q)
    }

    /// `:authority` (or `host`), lower-cased by the caller's comparison, port removed.
    pub fn host(&self) -> &'a str {
        let authority = self
            .header(":authority")
            .or_else(|| self.header("host"))
            .unwrap_or("");
        strip_port(authority)
    }

    /// The value of a query parameter, percent-decoded (`+` is a space, as in forms).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| percent_decode(k).as_deref() == Some(name))
            .and_then(|(_, v)| percent_decode(v))
    }

    /// The value of a cookie from any `cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers_named("cookie")
            .flat_map(|h| h.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Decodes `%XX` escapes and `+`; `None` for malformed escapes or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Removes every occurrence of the query parameter `name` from `path_and_query`.
pub fn without_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(key).as_deref() != Some(name)
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Removes the cookie `name` from one `cookie` header value; `None` if nothing is left.
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(k, _)| k) != name)
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn pseudo_headers_and_host() {
        let h = req(&[
            (":method", "GET"),
            (":path", "/a/b?x=1&token=a%2Bb+c"),
            (":authority", "Api.Example.com:8443"),
            ("cookie", "a=1; session=\"abc\""),
            ("cookie", "z=2"),
        ]);
        let r = Request::new(&h);
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.host(), "Api.Example.com");
        assert_eq!(r.query_param("token").as_deref(), Some("a+b c"));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(r.cookie("session"), Some("abc"));
        assert_eq!(r.cookie("z"), Some("2"));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn removal_helpers() {
        assert_eq!(without_query_param("/a?t=1&b=2&t=3", "t"), "/a?b=2");
        assert_eq!(without_query_param("/a?t=1", "t"), "/a");
        assert_eq!(without_query_param("/a", "t"), "/a");
        assert_eq!(
            without_cookie("a=1; s=2; b=3", "s").as_deref(),
            Some("a=1; b=3")
        );
        assert_eq!(without_cookie("s=2", "s"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
