//! The part of a request the decision reads: pseudo-headers and headers, nothing else.
//!
//! Query strings and cookies are each parsed by one function ([`query_pairs`],
//! [`cookie_pairs`]) that both the credential lookup and the credential removal use, so the two
//! can never disagree about what a parameter or cookie is.

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
        self.headers_named(name).next()
    }

    /// Every value of a header.
    pub fn headers_named<'n>(&self, name: &'n str) -> impl DoubleEndedIterator<Item = &'a str> + 'n
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

    /// `:authority` (or HTTP/1.0's `host`) as sent; empty when there is none.
    pub fn authority(&self) -> &'a str {
        self.header(":authority")
            .or_else(|| self.header("host"))
            .unwrap_or("")
    }

    /// `:authority` (or `host`) reduced to the host name routes match against: port and one
    /// trailing dot removed (`API.example.com.:443` → `API.example.com`). Comparison is
    /// case-insensitive by the caller.
    pub fn host(&self) -> &'a str {
        let (host, _) = split_host_port(self.authority());
        host.strip_suffix('.').unwrap_or(host)
    }

    /// Every value of a query parameter, percent-decoded; `None` for a value that is not valid
    /// percent-encoding or UTF-8 (present, but unreadable).
    pub fn query_values<'n>(&self, name: &'n str) -> impl Iterator<Item = Option<String>> + 'n
    where
        'a: 'n,
    {
        query_pairs(self.query().unwrap_or(""))
            .filter(move |(key, _)| key.as_deref() == Some(name))
            .map(|(_, value)| percent_decode(value))
    }

    /// Every value of a cookie, from every `cookie` header.
    pub fn cookie_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        self.headers_named("cookie")
            .flat_map(cookie_pairs)
            .filter(move |(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

/// `host:port` → (`host`, `Some(port)`); `[v6]:port` → (`[v6]`, `Some(port)`). A hostname
/// cannot contain `:`, so whatever follows the last one is the port, numeric or not.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let host = authority.get(..=end).unwrap_or(authority);
                let port = authority.get(end + 1..).and_then(|r| r.strip_prefix(':'));
                (host, port)
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// Whether an authority (`:authority`, HTTP/1's `Host`) reads the same to the filter and to
/// Envoy's virtual-host matching: a host name (or `[IPv6]`) and at most one `:` with a
/// numeric port. Anything else — `host:80:80`, `host:`, `host:abc`, `user@host`, spaces — could
/// be split one way by the filter and matched another way by Envoy (a route protected for
/// `admin.example.com` missed while Envoy's `admin.example.com:*` domain routes there), so
/// such a request is refused before any route is chosen. Empty is allowed (HTTP/1.0).
pub fn authority_is_unambiguous(authority: &str) -> bool {
    // `[v6]` must be followed by nothing or by `:port` (`[::1]x` and `[::1].` are not hosts).
    if let Some(end) = authority.find(']')
        && authority
            .get(end + 1..)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with(':'))
    {
        return false;
    }
    let (host, port) = split_host_port(authority);
    let host_ok = match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// The `key=value` pairs of a query string, keys percent-decoded (`None` when undecodable) and
/// values raw. A pair without `=` has an empty value.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (Option<String>, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), value)
        })
}

/// The `name=value` pairs of one `cookie` header (RFC 6265 §4.2.1), quotes around a value
/// removed; entries without `=` are not cookies and are skipped.
pub fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name.trim(), value))
    })
}

/// Decodes `%XX` escapes and `+`; `None` for malformed escapes or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
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

/// A query parameter or cookie name as the most forgiving frameworks read it: percent-decoded
/// (PHP decodes cookie names too), an array suffix `[…]` dropped, and `.`, ` ` and `[` read as
/// `_` (PHP reads `access.token`, `access token` and `access[token` as `access_token`).
pub fn lenient_name(raw: &str) -> String {
    let decoded = percent_decode(raw).unwrap_or_else(|| raw.to_owned());
    let base = match decoded.find('[') {
        Some(i) if i > 0 && decoded.ends_with(']') => decoded.get(..i).unwrap_or(&decoded),
        _ => &decoded,
    };
    base.trim()
        .chars()
        .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
        .collect()
}

/// Whether some parser would find the query parameter `name` more often than the filter does
/// (which splits on `&` and decodes names exactly): `a=1;name=…` (Rack 2 and older Python
/// split on `;`), `name[]=…`, `na.me` for `na_me`. The filter cannot check or strip what it does
/// not see, so such a request is ambiguous.
pub fn query_disguises(query: &str, name: &str) -> bool {
    let strict = query_pairs(query)
        .filter(|(key, _)| key.as_deref() == Some(name))
        .count();
    let lenient = query
        .split(['&', ';'])
        .filter(|pair| lenient_name(pair.split_once('=').map_or(*pair, |(k, _)| k)) == name)
        .count();
    lenient > strict
}

/// Whether some parser would find the cookie `name` more often than the filter does (which
/// splits on `;` and compares names exactly): percent-encoded names (`sess%69on`, PHP) or a
/// cookie after a `,` (`a=1, session=…`, Python's `SimpleCookie`).
pub fn cookie_disguises(headers: &[&str], name: &str) -> bool {
    let strict = headers
        .iter()
        .flat_map(|h| cookie_pairs(h))
        .filter(|(key, _)| *key == name)
        .count();
    let lenient = headers
        .iter()
        .flat_map(|h| h.split([';', ',']))
        .filter_map(|c| c.split_once('=').map(|(k, _)| k))
        .filter(|key| lenient_name(key) == name)
        .count();
    lenient > strict
}

/// Removes every occurrence of the query parameter `name` from `path_and_query`.
pub fn without_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
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

/// Removes the cookie `name` from a `cookie` header value; `None` if nothing is left.
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| c.split_once('=').is_none_or(|(k, _)| k.trim() != name))
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

/// Whether a value can go into an HTTP header as it is: no control characters (CR, LF, NUL…)
/// that could split or end a header.
pub fn is_safe_header_value(value: &str) -> bool {
    !value.chars().any(char::is_control)
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
    fn disguised_credential_names_are_found() {
        for query in [
            "a=1;access_token=x",
            "access.token=x",
            "access+token=x",
            "access%20token=x",
            "access[token=x",
            "access_token[]=x",
            "access_token%5B%5D=x",
            "access_token=ok&a=1;access_token=x",
        ] {
            assert!(query_disguises(query, "access_token"), "{query}");
        }
        for query in [
            "access_token=x",
            "%61ccess_token=x",
            "a=1&b=2",
            "access_tokens=x",
            "",
        ] {
            assert!(!query_disguises(query, "access_token"), "{query}");
        }
        for cookies in [
            &["sess%69on=x"][..],
            &["a=1, session=x"],
            &["session=ok; a=1, session=x"],
        ] {
            assert!(cookie_disguises(cookies, "session"), "{cookies:?}");
        }
        for cookies in [
            &["session=x"][..],
            &["a=1; session=x"],
            &["a=1", "session=x"],
            &["b=session"],
        ] {
            assert!(!cookie_disguises(cookies, "session"), "{cookies:?}");
        }
    }

    #[test]
    fn pseudo_headers_and_host() {
        let h = req(&[
            (":method", "GET"),
            (":path", "/a/b?x=1&token=a%2Bb+c&bad=%zz"),
            (":authority", "Api.Example.com.:8443"),
            ("cookie", "a=1; session=\"abc\"; flag"),
            ("cookie", "z=2"),
        ]);
        let r = Request::new(&h);
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.host(), "Api.Example.com");
        let values = |name: &str| r.query_values(name).collect::<Vec<_>>();
        assert_eq!(values("token"), vec![Some("a+b c".to_owned())]);
        assert_eq!(values("bad"), vec![None]);
        assert!(values("missing").is_empty());
        assert_eq!(r.cookie_values("session").collect::<Vec<_>>(), vec!["abc"]);
        assert_eq!(r.cookie_values("z").collect::<Vec<_>>(), vec!["2"]);
        assert_eq!(r.cookie_values("flag").count(), 0);
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("a.b:xyz"), ("a.b", Some("xyz")));
    }

    #[test]
    fn removal_helpers() {
        assert_eq!(without_query_param("/a?t=1&b=2&t=3", "t"), "/a?b=2");
        assert_eq!(without_query_param("/a?t=1", "t"), "/a");
        assert_eq!(without_query_param("/a?%74=1&b", "t"), "/a?b");
        assert_eq!(without_query_param("/a", "t"), "/a");
        assert_eq!(
            without_cookie("a=1; s=2; b=3", "s").as_deref(),
            Some("a=1; b=3")
        );
        assert_eq!(without_cookie("s=2", "s"), None);
        assert_eq!(without_cookie("flag; s=2", "s").as_deref(), Some("flag"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
