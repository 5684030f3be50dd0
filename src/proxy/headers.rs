//! Header translation between the client side and the origin side. Pure functions over
//! `http::HeaderMap`, so they are unit-tested and fuzzed without sockets.
//!
//! RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a
//! message is forwarded and, for each connection-option in this field, remove any header or
//! trailer field(s) from the message with the same name as the connection-option, and then
//! remove the Connection header field itself."
//! RFC 9113 §8.2.2: HTTP/2 "MUST NOT contain any connection-specific header field"; the only
//! exception is TE, which "MAY be present ... but MUST NOT contain any value other than
//! 'trailers'".

use std::net::IpAddr;

use http::header::{self, GetAll, HeaderMap, HeaderName, HeaderValue};

/// Fields that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1, RFC 9113 §8.2.2).
/// Pre-built names: removing by `&str` parsed the name again on every request.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    HeaderName::from_static("http2-settings"),
];

/// Where `Connection`, `Transfer-Encoding`, `Upgrade` and `TE` are in [`HOP_BY_HOP`].
const CONNECTION_AT: usize = 0;
const TRANSFER_ENCODING_AT: usize = 3;
const UPGRADE_AT: usize = 4;
const TE_AT: usize = 5;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The connection options `Connection` lists, trimmed, empty ones skipped.
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    tokens(&h.get_all(header::CONNECTION))
}

/// The options in `Connection` field values found once (`HeaderMap::get_all`), so that going
/// over them again costs no lookup.
fn tokens<'a>(values: &GetAll<'a, HeaderValue>) -> impl Iterator<Item = &'a [u8]> {
    // Split the raw bytes: one non-ASCII byte elsewhere in the value must not hide the names
    // it lists (found by fuzz_header_translate).
    values
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `Connection` nominates a field other than the hop-by-hop ones (`close` only when a
/// field has that name; `seen` is `h`'s scan): the translation for the origin would then
/// remove an end-to-end field. Browsers send `Connection: keep-alive`, which removes nothing
/// the cache reads. Tokens that are not field names are ignored. The same rule as
/// [`strip_seen`]'s ([`may_name_other`]).
pub fn nominates_end_to_end(h: &HeaderMap, seen: &Seen) -> bool {
    connection_tokens(h).any(|t| may_name_other(t, seen) && HeaderName::from_bytes(t).is_ok())
}

/// Removes hop-by-hop fields and those `Connection` nominates. `keep_te_trailers` keeps a
/// `TE: trailers` (allowed in HTTP/2 requests).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_te_trailers: bool) {
    let seen = Seen::scan(h);
    strip_seen(h, &seen, keep_te_trailers);
}

/// Which of the names the request checks and the translation act on a header map holds,
/// found in one pass over its names: most messages carry no hop-by-hop field, no `Expect`, no
/// `Content-Length` and no `X-Forwarded-For`, and a pass costs less than a hashed lookup or
/// removal per candidate (bench/callgrind.sh). The proxy scans a request once and hands the
/// result to every check; a flag set for a field removed since only costs a lookup.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Per entry of [`HOP_BY_HOP`].
    hop: [bool; HOP_BY_HOP.len()],
    host: bool,
    expect: bool,
    forwarded_for: bool,
    content_length: bool,
    /// A field named `close`: only then does `Connection: close` nominate a field.
    close: bool,
}

impl Seen {
    /// One pass over `h`'s names.
    pub fn scan(h: &HeaderMap) -> Seen {
        let mut s = Seen {
            hop: [false; HOP_BY_HOP.len()],
            host: false,
            expect: false,
            forwarded_for: false,
            content_length: false,
            close: false,
        };
        // A match on the name's text (by length, then bytes) instead of eleven name
        // comparisons per field: 541 -> 206 instructions per request (bench/callgrind.sh).
        // `seen_flags_name_the_right_fields` checks the arms against the named constants.
        for k in h.keys() {
            match k.as_str() {
                "connection" => s.hop[0] = true,
                "keep-alive" => s.hop[1] = true,
                "proxy-connection" => s.hop[2] = true,
                "transfer-encoding" => s.hop[3] = true,
                "upgrade" => s.hop[4] = true,
                "te" => s.hop[5] = true,
                "http2-settings" => s.hop[6] = true,
                "host" => s.host = true,
                "content-length" => s.content_length = true,
                "expect" => s.expect = true,
                "x-forwarded-for" => s.forwarded_for = true,
                "close" => s.close = true,
                _ => {}
            }
        }
        s
    }

    /// `Connection` is present.
    pub fn connection(&self) -> bool {
        self.hop[CONNECTION_AT]
    }

    /// `Transfer-Encoding` is present.
    pub fn transfer_encoding(&self) -> bool {
        self.hop[TRANSFER_ENCODING_AT]
    }

    /// An `Upgrade` field is present.
    pub fn upgrade(&self) -> bool {
        self.hop[UPGRADE_AT]
    }

    /// `Content-Length` is present.
    pub fn content_length(&self) -> bool {
        self.content_length
    }
}

/// [`strip_hop_by_hop`] with the names already scanned. True if `Connection` nominated a
/// field other than the hop-by-hop ones and it was removed (it may have been any field).
fn strip_seen(h: &mut HeaderMap, seen: &Seen, keep_te_trailers: bool) -> bool {
    if !seen.hop.contains(&true) {
        return false;
    }
    let mut removed_nominated = false;
    let te_trailers = keep_te_trailers
        && seen.hop[TE_AT]
        && h.get_all(header::TE).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
                .unwrap_or(false)
        });
    if seen.hop[CONNECTION_AT] {
        let values = h.get_all(header::CONNECTION);
        // A short list (`close`, `keep-alive`, `Upgrade, HTTP2-Settings`) is kept on the stack
        // and matched against the fields present (names are lower case, tokens compare without
        // case, length first): no name parsing, no allocation, and no removal for
        // `Connection: close`. The values are looked up once (~130 instructions a lookup).
        // Options that name no field but hop-by-hop ones (removed below when `seen` has them)
        // or `close` while no field has that name need no search: `keep-alive` and `close`,
        // nearly every `Connection` there is, then cost no pass over the fields.
        let mut few: [&[u8]; 8] = [&[]; 8];
        let mut n = 0;
        let short = tokens(&values)
            .filter(|t| may_name_other(t, seen))
            .all(|t| {
                let fits = n < few.len();
                if fits {
                    few[n] = t;
                    n += 1;
                }
                fits
            });
        let nominated: Vec<HeaderName> = if short && n == 0 {
            Vec::new()
        } else if short {
            let few = &few[..n];
            h.keys()
                .filter(|k| {
                    few.iter()
                        .any(|t| t.eq_ignore_ascii_case(k.as_str().as_bytes()))
                })
                .cloned()
                .collect()
        } else {
            // A long one: each option parsed once (matching costs fields × options).
            tokens(&values)
                .filter(|t| may_name_other(t, seen))
                .filter_map(|t| HeaderName::from_bytes(t).ok())
                .collect()
        };
        for name in nominated {
            removed_nominated |= h.remove(&name).is_some();
        }
    }
    // Only the names seen above: each removal hashes its name.
    for (name, _) in HOP_BY_HOP.iter().zip(seen.hop).filter(|(_, p)| *p) {
        h.remove(name);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    removed_nominated
}

/// Whether the connection option `t` may name a field that [`strip_seen`] does not remove
/// anyway: not a hop-by-hop name, and not `close` unless a field is called that.
/// By length, then text (a pass over [`HOP_BY_HOP`]'s names cost ~230 instructions for
/// `keep-alive`); `option_filter_knows_the_hop_by_hop_names` checks it against that list.
fn may_name_other(t: &[u8], seen: &Seen) -> bool {
    let is = |name: &[u8]| t.eq_ignore_ascii_case(name);
    match t.len() {
        2 => !is(b"te"),
        5 if is(b"close") => seen.close,
        7 => !is(b"upgrade"),
        10 => !is(b"keep-alive") && !is(b"connection"),
        14 => !is(b"http2-settings"),
        16 => !is(b"proxy-connection"),
        17 => !is(b"transfer-encoding"),
        _ => true,
    }
}

/// A client's address as an `X-Forwarded-For` element, made once per client connection: a
/// clone for each request shares its bytes (made per request, the text, its header value and
/// the value's copy for a retry were three allocations on every request).
#[derive(Debug, Clone)]
pub struct ForwardedFor(HeaderValue);

impl ForwardedFor {
    /// `ip` as text (an IP literal is always a valid header value).
    pub fn new(ip: IpAddr) -> ForwardedFor {
        let text = ip_text(ip);
        ForwardedFor(
            HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        )
    }

    /// [`ForwardedFor::new`], shared with the thread's previous client connection when that
    /// came from the same address: behind a load balancer or nginx, every connection does
    /// (made each time, it cost ~285 instructions and two allocations per connection).
    pub fn for_peer(ip: IpAddr) -> ForwardedFor {
        thread_local! {
            static LAST: std::cell::RefCell<Option<(IpAddr, ForwardedFor)>> =
                const { std::cell::RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((seen, f)) if *seen == ip => f.clone(),
                _ => {
                    let f = ForwardedFor::new(ip);
                    *last = Some((ip, f.clone()));
                    f
                }
            }
        })
    }

    fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("unknown")
    }
}

/// Client request headers → origin request headers: hop-by-hop removed, `Host` removed (the
/// caller carries it as `:authority` or re-adds it), `Expect` removed (the gateway answers
/// 100-continue itself), `X-Forwarded-For` appended, `X-Forwarded-Proto` set.
pub fn request_to_origin(h: HeaderMap, client: &ForwardedFor, tls: bool) -> HeaderMap {
    let seen = Seen::scan(&h);
    request_to_origin_seen(h, &seen, client, tls, false).0
}

/// [`request_to_origin`] with `h` already scanned. With `keep_host`, the client's `Host` stays
/// unless `Connection` nominated a field (it may have named `Host`); the flag returned says
/// whether the map still holds it. An HTTP/1.1 origin is sent the client's own field then,
/// instead of one removed here and added again for every attempt (~600 instructions).
pub fn request_to_origin_seen(
    mut h: HeaderMap,
    seen: &Seen,
    client: &ForwardedFor,
    tls: bool,
    keep_host: bool,
) -> (HeaderMap, bool) {
    // One scan decides every removal below. `Connection` may nominate Host, Expect or
    // X-Forwarded-For; the flags then overstate what is left, which costs a lookup, no more.
    let nominated = strip_seen(&mut h, seen, true);
    let host_kept = keep_host && seen.host && !nominated;
    if seen.host && !host_kept {
        h.remove(header::HOST);
    }
    if seen.expect {
        h.remove(header::EXPECT);
    }
    if !seen.forwarded_for {
        h.insert(X_FORWARDED_FOR.clone(), client.0.clone());
    } else {
        append_forwarded_for(&mut h, client.as_str());
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    (h, host_kept)
}

/// An IP address as text; IPv4 without `fmt` machinery (it showed at 2 % of the gateway's
/// instructions per request in bench/callgrind.sh).
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// Appends `ip` to the `X-Forwarded-For` lines already present.
fn append_forwarded_for(h: &mut HeaderMap, ip: &str) {
    // Every field line counts (RFC 9110 §5.3: lines combine with ", "); unreadable ones are dropped.
    let mut prev: Vec<&str> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    prev.push(ip);
    let xff = prev.join(", ");
    // Joined values of valid header text plus an IP literal stay valid header text.
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Origin response headers → client response headers: hop-by-hop removed; everything
/// end-to-end (the origin's `Date` and `Server` included) passes unchanged.
pub fn response_to_client(h: &mut HeaderMap) {
    strip_hop_by_hop(h, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_to_end_nominations_are_told_from_hop_by_hop_ones() {
        for (value, expect) in [
            ("keep-alive", false),
            ("Keep-Alive, close", false),
            ("close, upgrade, TE", false),
            ("", false),
            ("cache-control", true),
            ("keep-alive, Authorization", true),
            ("x-custom", true),
        ] {
            let h = map(&[("connection", value)]);
            assert_eq!(
                nominates_end_to_end(&h, &Seen::scan(&h)),
                expect,
                "{value:?}"
            );
        }
        let none = HeaderMap::new();
        assert!(!nominates_end_to_end(&none, &Seen::scan(&none)));
        // Two fields: the second one's names count too.
        let mut h = map(&[("connection", "close")]);
        h.append(header::CONNECTION, HeaderValue::from_static("pragma"));
        assert!(nominates_end_to_end(&h, &Seen::scan(&h)));
        // `close` nominates a field named `close` when there is one (the translation removes it).
        let h = map(&[("connection", "close"), ("close", "x")]);
        assert!(nominates_end_to_end(&h, &Seen::scan(&h)));
    }

    /// The client's Host stays only when asked and when `Connection` removed no field (it may
    /// have named Host); the flag says whether it is there.
    #[test]
    fn host_is_kept_only_when_asked_and_nothing_was_nominated() {
        let run = |fields: &[(&str, &str)], keep: bool| {
            let h = map(fields);
            let seen = Seen::scan(&h);
            request_to_origin_seen(h, &seen, &xff("127.0.0.1"), false, keep)
        };
        let plain = [("host", "a.test"), ("x-a", "1")];
        let (h, kept) = run(&plain, true);
        assert!(kept);
        assert_eq!(h.get_all("host").iter().collect::<Vec<_>>(), ["a.test"]);
        let (h, kept) = run(&plain, false);
        assert!(!kept && !h.contains_key("host"));
        for nominating in ["Host", "x-a", "keep-alive, x-a"] {
            let (h, kept) = run(
                &[("host", "a.test"), ("x-a", "1"), ("connection", nominating)],
                true,
            );
            assert!(!kept && !h.contains_key("host"), "{nominating}");
            assert_eq!(h.contains_key("x-a"), nominating == "Host", "{nominating}");
        }
        // Options that name no field present, or only hop-by-hop ones: kept.
        for harmless in ["close", "keep-alive", "x-absent"] {
            let (h, kept) = run(&[("host", "a.test"), ("connection", harmless)], true);
            assert!(kept && h.contains_key("host"), "{harmless}");
        }
        let (h, kept) = run(&[("x-a", "1")], true);
        assert!(!kept && !h.contains_key("host"));
    }

    #[test]
    fn option_filter_knows_the_hop_by_hop_names() {
        let none = Seen::scan(&HeaderMap::new());
        for name in &HOP_BY_HOP {
            let upper = name.as_str().to_ascii_uppercase();
            assert!(!may_name_other(name.as_str().as_bytes(), &none), "{name}");
            assert!(!may_name_other(upper.as_bytes(), &none), "{upper}");
        }
        let with_close = Seen::scan(&map(&[("close", "x")]));
        assert!(!may_name_other(b"Close", &none));
        assert!(may_name_other(b"Close", &with_close));
        for other in [
            "x-hop",
            "host",
            "tf",
            "closer",
            "keep-alivE2",
            "upgradE",
            "clos",
        ] {
            let want = other != "upgradE";
            assert_eq!(may_name_other(other.as_bytes(), &none), want, "{other}");
        }
    }

    #[test]
    fn seen_flags_name_the_right_fields() {
        // Each hop-by-hop name sets its own flag and no other.
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            let s = Seen::scan(&h);
            let mut want = [false; HOP_BY_HOP.len()];
            want[i] = true;
            assert_eq!(s.hop, want, "{name}");
            assert!(!s.host && !s.expect && !s.forwarded_for && !s.content_length && !s.close);
        }
        for (name, flag) in [
            (header::HOST, (|s: &Seen| s.host) as fn(&Seen) -> bool),
            (header::EXPECT, |s: &Seen| s.expect),
            (header::CONTENT_LENGTH, |s: &Seen| s.content_length),
            (X_FORWARDED_FOR.clone(), |s: &Seen| s.forwarded_for),
            (HeaderName::from_static("close"), |s: &Seen| s.close),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            let s = Seen::scan(&h);
            let others = [s.host, s.expect, s.content_length, s.forwarded_for, s.close];
            assert!(flag(&s) && !s.hop.contains(&true), "{name}");
            assert_eq!(others.iter().filter(|b| **b).count(), 1, "{name}");
        }
        assert_eq!(HOP_BY_HOP[CONNECTION_AT], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_AT], header::TRANSFER_ENCODING);
        assert_eq!(HOP_BY_HOP[TE_AT], header::TE);
        assert_eq!(HOP_BY_HOP[UPGRADE_AT], header::UPGRADE);
        let s = Seen::scan(&map(&[("host", "a"), ("content-length", "3")]));
        assert!(!s.connection() && !s.transfer_encoding() && s.content_length());
        let s = Seen::scan(&map(&[
            ("Connection", "close"),
            ("transfer-encoding", "chunked"),
        ]));
        assert!(s.connection() && s.transfer_encoding() && !s.content_length());
    }

    fn xff(ip: &str) -> ForwardedFor {
        ForwardedFor::new(ip.parse().unwrap())
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_connection_gets_its_own_address_whoever_came_before() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        for ip in [a, a, b, a, b, b] {
            assert_eq!(ForwardedFor::for_peer(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn request_hop_by_hop_removed() {
        let h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAAA"),
            ("te", "gzip, trailers"),
            ("host", "a.test"),
            ("expect", "100-continue"),
            ("x-end-to-end", "kept"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let out = request_to_origin(h, &xff("127.0.0.1"), true);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "host",
            "expect",
        ] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["te"], "trailers");
        assert_eq!(out["x-end-to-end"], "kept");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "https");
    }

    #[test]
    fn nominated_fields_go_with_every_value_and_others_stay() {
        // A field named like an option (`close`) is nominated too; a second `Connection`
        // field and a non-ASCII byte elsewhere in a value hide nothing.
        let mut h = map(&[
            ("connection", "close"),
            ("close", "x"),
            ("x-twice", "1"),
            ("x-twice", "2"),
            ("x-kept", "k"),
        ]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"\xff, X-TWICE ,,").unwrap(),
        );
        let out = request_to_origin(h, &xff("127.0.0.1"), false);
        for gone in ["connection", "close", "x-twice"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["x-kept"], "k");
        // Eight options are matched field by field, a ninth sends the list down the parsing
        // path: the last option counts either way.
        for (absent, path) in [(7, "short"), (8, "long"), (10, "long")] {
            let list = format!("{}, X-Far", "x-absent, ".repeat(absent));
            let out = request_to_origin(
                map(&[("connection", &list), ("x-far", "1"), ("x-kept", "k")]),
                &xff("127.0.0.1"),
                false,
            );
            let gone = !out.contains_key("x-far") && !out.contains_key("connection");
            assert!(gone, "{path} list of {} options", absent + 1);
            assert_eq!(out["x-kept"], "k");
        }
        // `Connection: close` alone removes only itself.
        let out = request_to_origin(
            map(&[("connection", "close"), ("x-kept", "k")]),
            &xff("127.0.0.1"),
            false,
        );
        assert_eq!(out.len(), 3, "{out:?}");
        // Options naming hop-by-hop fields, in any case, need no search of the other fields
        // and still take those fields with them; `CLOSE` takes a field named `close`; a
        // nominated `TE: trailers` is still passed on to an HTTP/2 origin.
        let out = request_to_origin(
            map(&[
                ("connection", "Keep-Alive, TE, CLOSE"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("close", "x"),
                ("x-kept", "k"),
            ]),
            &xff("127.0.0.1"),
            false,
        );
        for gone in ["connection", "keep-alive", "close"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["te"], "trailers");
        assert_eq!(out["x-kept"], "k");
        // Every option a hop-by-hop name or `close`: nothing else goes.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "Close"),
            ("x-kept", "k"),
            ("server", "s"),
        ]);
        response_to_client(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn every_x_forwarded_for_line_is_kept() {
        let h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ]);
        let out = request_to_origin(h, &xff("127.0.0.1"), false);
        assert_eq!(
            out["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
        );
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn te_without_trailers_dropped() {
        let out = request_to_origin(map(&[("te", "gzip")]), &xff("::1"), false);
        assert!(!out.contains_key("te"));
        assert_eq!(out["x-forwarded-for"], "::1");
        assert_eq!(out["x-forwarded-proto"], "http");
    }

    #[test]
    fn response_keeps_date_and_server() {
        let mut h = map(&[
            ("date", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ("server", "origin/1"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
        ]);
        response_to_client(&mut h);
        assert_eq!(h["date"], "Tue, 01 Jan 2030 00:00:00 GMT");
        assert_eq!(h["server"], "origin/1");
        assert!(!h.contains_key("x-hop"));
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("transfer-encoding"));
    }
}
