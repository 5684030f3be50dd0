//! Host → origin routing. Pure: no I/O, no state beyond the table built from config (and a
//! per-thread memo of the last answer, [`Router::route_authority`]).
//!
//! Precedence: an exact host name beats the longest matching `*.suffix`, which beats `*`.
//! A request whose host matches nothing is refused with 404 by the caller: muxgate is never an
//! open proxy.

/// One host pattern from `origins[].hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `example.com` (compared case-insensitively, without port).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    Suffix(String),
    /// `*`: everything not matched otherwise.
    Any,
}

impl HostPattern {
    /// Parses a pattern; the error is the reason it is refused.
    pub fn parse(p: &str) -> Result<HostPattern, String> {
        let p = p.trim().to_ascii_lowercase();
        if p == "*" {
            return Ok(HostPattern::Any);
        }
        // A request's host is printable ASCII (hyper's `Authority`), so a pattern with any
        // other byte could never match: an internationalised name goes in its punycode form.
        if !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "invalid host pattern {p:?}: only printable ASCII (write an internationalised name in punycode)"
            ));
        }
        if let Some(rest) = p.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') || normalize_host(rest) != rest {
                return Err(format!("invalid host pattern {p:?}"));
            }
            return Ok(HostPattern::Suffix(format!(".{rest}")));
        }
        if p.is_empty() || p.contains('*') || p.contains('/') || p.contains(' ') {
            return Err(format!(
                "invalid host pattern {p:?}: use a name, \"*.suffix\" or \"*\""
            ));
        }
        // Requests are matched by their normalised host (no port, no trailing dot): a pattern
        // that normalisation would change could never match (found by fuzz_config).
        if normalize_host(&p) != p {
            return Err(format!(
                "invalid host pattern {p:?}: no port or trailing dot (hosts match without them)"
            ));
        }
        Ok(HostPattern::Exact(p))
    }
}

/// Gives every table built its own [`Router::id`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The routing table: patterns to origin indexes.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Which table this is, for [`Router::route_authority`]'s memo: unique per [`Router::new`]
    /// (a clone has the same table; the empty default is 0).
    id: u64,
    exact: std::collections::HashMap<String, usize>,
    /// Suffixes sorted longest first, so the most specific wins.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl Router {
    /// Builds the table; earlier origins win on identical patterns.
    pub fn new<'a>(origins: impl IntoIterator<Item = (usize, &'a [String])>) -> Router {
        let mut r = Router {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Router::default()
        };
        for (idx, hosts) in origins {
            for h in hosts {
                match HostPattern::parse(h) {
                    Ok(HostPattern::Exact(name)) => {
                        r.exact.entry(name).or_insert(idx);
                    }
                    Ok(HostPattern::Suffix(s)) => {
                        if !r.suffixes.iter().any(|(x, _)| *x == s) {
                            r.suffixes.push((s, idx));
                        }
                    }
                    Ok(HostPattern::Any) => {
                        r.any.get_or_insert(idx);
                    }
                    // Validation refuses bad patterns before a Router is built.
                    Err(_) => {}
                }
            }
        }
        r.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        r
    }

    /// [`Router::route`] for a request's authority, remembering the thread's last answer: a
    /// thread's requests nearly always name the host its previous one did (one site behind
    /// the gateway, or a keep-alive client), and then the table is not searched again (~170
    /// instructions a request, `bench/callgrind.sh`). The memo is keyed by the table's id, so a
    /// reload's new table never answers from the old one.
    pub fn route_authority(&self, host: &http::uri::Authority) -> Option<usize> {
        type Memo = Option<(u64, http::uri::Authority, Option<usize>)>;
        thread_local! {
            static LAST: std::cell::RefCell<Memo> = const { std::cell::RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((id, seen, answer)) = &*last {
                if *id == self.id && seen.as_str() == host.as_str() {
                    return *answer;
                }
            }
            let answer = self.route(host.as_str());
            *last = Some((self.id, host.clone(), answer));
            answer
        })
    }

    /// The origin index for a request host (port and trailing dot ignored, case-insensitive).
    pub fn route(&self, host: &str) -> Option<usize> {
        let name = normalize_host(host);
        if let Some(&i) = self.exact.get(name.as_ref()) {
            return Some(i);
        }
        for (suffix, i) in &self.suffixes {
            if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        self.any
    }
}

/// Lower-cases a Host value and strips its port and a trailing dot: `Example.COM.:8080` →
/// `example.com`. IPv6 literals keep their brackets. Borrows when nothing changes but the
/// port (the common case: this runs for every request).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    // Byte scans rather than `rfind`/`trim_end_matches` with char patterns: this runs twice
    // per request and the pattern machinery cost ~270 instructions a call (callgrind).
    // ASCII whitespace only, which is cheaper than the Unicode-aware `trim`: a request's host
    // is printable ASCII (an `Authority`) and host patterns are refused with any other byte.
    let h = host.trim_ascii();
    let b = h.as_bytes();
    let mut end = if b.first() == Some(&b'[') {
        b.iter().position(|&c| c == b']').map_or(b.len(), |i| i + 1)
    } else {
        // A trailing `:digits` (possibly `:` alone) is the port.
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        match b.len().checked_sub(digits + 1) {
            Some(colon) if b[colon] == b':' => colon,
            _ => b.len(),
        }
    };
    while end > 0 && b[end - 1] == b'.' {
        end -= 1;
    }
    // `end` is at an ASCII byte or the end, so a char boundary.
    let name = &h[..end];
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let a = ["api.example.com".to_string()];
        let b = ["*.example.com".to_string()];
        let c = ["*.deep.example.com".to_string(), "*".to_string()];
        Router::new([(0, &a[..]), (1, &b[..]), (2, &c[..])])
    }

    #[test]
    fn precedence() {
        let r = router();
        assert_eq!(r.route("api.example.com"), Some(0));
        assert_eq!(r.route("API.Example.com:8080"), Some(0));
        assert_eq!(r.route("www.example.com"), Some(1));
        assert_eq!(r.route("x.deep.example.com"), Some(2));
        assert_eq!(r.route("example.com"), Some(2));
        assert_eq!(r.route("other.org"), Some(2));
    }

    #[test]
    fn no_wildcard_means_no_route() {
        let a = ["a.test".to_string()];
        let r = Router::new([(0, &a[..])]);
        assert_eq!(r.route("a.test."), Some(0));
        assert_eq!(r.route("b.test"), None);
        assert_eq!(r.route(""), None);
    }

    #[test]
    fn patterns_that_could_never_match_are_refused() {
        for p in [
            "app.example.com.",
            "app.example.com:8443",
            "*.example.com.",
            ":.",
            "é.example.com",
            "*.\u{a0}example.com",
            "a\u{b}b.example.com",
            "*.a b",
        ] {
            assert!(HostPattern::parse(p).is_err(), "{p}");
        }
        assert!(HostPattern::parse("[::1]").is_ok());
    }

    #[test]
    fn patterns() {
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a*b").is_err());
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        // Already lower-case: borrowed, no allocation (this runs for every request).
        assert!(matches!(
            normalize_host("api.example.com:8080"),
            std::borrow::Cow::Borrowed("api.example.com")
        ));
        assert!(matches!(
            normalize_host("API.example.com"),
            std::borrow::Cow::Owned(_)
        ));
    }

    /// The byte-scanning `normalize_host` agrees with the plain definition (strip `:port`
    /// after the last colon if only digits follow, keep `[...]`, trim dots, lower-case).
    /// The per-thread memo answers only for the table it was made by (a reload's new table, or
    /// another gateway's in the same process), and always what `route` would.
    #[test]
    fn the_memo_never_answers_for_another_table() {
        use http::uri::Authority;
        let exact = ["a.test".to_string()];
        let first = Router::new([(0, &exact[..])]);
        let any = ["*".to_string()];
        let second = Router::new([(3, &any[..])]);
        let host = Authority::from_static("A.test:8080");
        let other = Authority::from_static("b.test");
        for _ in 0..2 {
            assert_eq!(first.route_authority(&host), Some(0));
            assert_eq!(second.route_authority(&host), Some(3));
            assert_eq!(first.route_authority(&other), None);
            assert_eq!(first.route_authority(&host), Some(0));
            assert_eq!(first.clone().route_authority(&host), Some(0));
            assert_eq!(second.route_authority(&other), Some(3));
            assert_eq!(Router::default().route_authority(&host), None);
        }
        let r = router();
        for h in [
            "api.example.com",
            "x.example.com",
            "a.deep.example.com",
            "other",
            "api.example.com",
        ] {
            let a = Authority::try_from(h).expect("authority");
            assert_eq!(r.route_authority(&a), r.route(h), "{h}");
            assert_eq!(r.route_authority(&a), r.route(h), "{h} again");
        }
    }

    #[test]
    fn normalize_host_matches_its_definition() {
        fn reference(host: &str) -> String {
            let h = host.trim_ascii();
            let without_port = if h.starts_with('[') {
                h.find(']').map_or(h, |end| &h[..=end])
            } else {
                match h.rfind(':') {
                    Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
                    _ => h,
                }
            };
            without_port.trim_end_matches('.').to_ascii_lowercase()
        }
        for h in [
            "",
            ":",
            "::",
            "80",
            ":80",
            "a:",
            "a:80",
            "a.:80",
            "a..",
            "A.B:8a",
            "a:b:80",
            "[::1]",
            "[::1]:443",
            "[::1",
            "[",
            "]:80",
            " Host.Example. ",
            "x.y:00080",
            "é.test:1",
            "ÉX:9",
            "a.b.c",
            "a:8:",
            "...:1",
        ] {
            assert_eq!(normalize_host(h), reference(h), "{h:?}");
        }
    }
}
