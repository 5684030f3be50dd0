//! RFC 9111 cache policy for muxgate's shared cache: pure functions over `http` types that decide
//! whether a response may be stored, how long it stays fresh, whether a stored response may answer
//! a request, when a stale one may be served (RFC 5861 and nginx's `use_stale`), how `Vary`
//! selects a variant, and how a 304 revalidation updates a stored response.
//!
//! Owns no state, no clock and no I/O: everything that depends on time takes `now`. The moka
//! store, request collapsing and background updates live elsewhere and call in here.
//!
//! How the store is expected to use it:
//!
//! ```text
//! origin response  → storable(..)? → headers = storable_headers(..)
//!                  → meta = EntryMeta::new(req, status, &headers, request_time, response_time, cfg)
//!                  → key = primary key + meta.secondary_key()
//! client request   → entry for secondary_key(stored vary names, req) → vary_matches(&meta, req)
//!                  → request_allows_cached(req, &meta, now):
//!                      Fresh / StaleAccepted  serve (Age = meta.current_age(now))
//!                      Expired                revalidate; may_serve_stale(Updating) may answer now
//!                      MustRevalidate         revalidate and wait (no `updating`)
//!                      Miss                   forward, the entry cannot answer this request
//!                  → origin failure: may_serve_stale(&meta, now, reason, cfg)
//! 304 answer       → validator_matches(stored, 304)? → merged = merge_304(stored, 304)
//!                  → storable(GET, req, stored status, &merged, cfg)? (a 304 can add no-store)
//!                  → storable_headers + EntryMeta::new with the new request/response times
//! unsafe request   → invalidates(method, status) → drop the entries for the target URI
//! ```
//!
//! Decisions where the RFCs leave a choice (each is also noted at the line that implements it):
//! - A response `max-age`/`s-maxage` that is malformed (`max-age=abc`, `max-age=-1`, `max-age=`)
//!   or given twice with different values makes the response stale on arrival (RFC 9111 §4.2.1:
//!   "either the first occurrence should be used or the response should be considered stale";
//!   "Caches are encouraged to consider responses that have invalid freshness information ... to
//!   be stale"). The response can still be stored and revalidated.
//! - The quoted form `max-age="5"` is accepted in `Cache-Control`: RFC 9111 §5.2 says "recipients
//!   ought to accept both forms, even if a specific form is required for generation". In a
//!   targeted field (a Structured Field, RFC 9213 §2.1) a String is not an Integer, so
//!   `max-age="5"` there is invalid.
//! - Duplicated request values: `min-fresh` takes the largest, `max-stale` the smallest; a
//!   duplicated request `max-age` with different values, and any malformed request value, is
//!   ignored. Duplicated `stale-while-revalidate`/`stale-if-error` take the smallest; a malformed
//!   one disables that window (no stale serving on a value we cannot read).
//! - `no-cache="field"` and `private="field"` are treated as unqualified `no-cache`/`private`.
//! - `Vary: *` (or a `Vary` member that is not a field name) makes a response not storable.
//! - `cfg.valid` (nginx `proxy_cache_valid`) is preferred over the Last-Modified heuristic: both
//!   apply only without explicit freshness, and an operator's configured lifetime is a better
//!   informed choice than a guess (nginx has no heuristic, so this also matches nginx).
//! - `s-maxage` implies `proxy-revalidate` for a shared cache (RFC 9111 §5.2.2.10), so a response
//!   with `s-maxage` is never served stale, not even within `stale-while-revalidate`.
//! - `Pragma: no-cache` is not honoured (deprecated by RFC 9111 §5.4).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::proxy::headers::strip_hop_by_hop;

/// `CDN-Cache-Control` (RFC 9213 §3): targeted at CDN caches, which includes this gateway.
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The largest delta-seconds value kept; larger values (and lifetimes) are clamped to it.
/// RFC 9111 §1.2.2: "the cache MUST consider the value to be 2147483648 (2^31) or the greatest
/// positive integer it can conveniently represent".
pub const MAX_DELTA: Duration = Duration::from_secs(1 << 31);

/// Heuristic lifetime = (Date − Last-Modified) / this. RFC 9111 §4.2.2: "A typical setting of
/// this fraction might be 10%."
const HEURISTIC_DIVISOR: u32 = 10;

/// Default cap on a heuristic lifetime: one day.
const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(24 * 60 * 60);

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The operator's cache policy settings (built by the config module from `[cache]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// nginx `proxy_cache_valid`: lifetimes by status, used only when a response has no explicit
    /// freshness (`s-maxage`, `max-age`, `Expires`). As in nginx the first matching entry wins
    /// and a zero lifetime means "not made cacheable by this rule". Default: empty.
    pub valid: Vec<(ValidStatus, Duration)>,
    /// nginx `proxy_cache_use_stale`. Default: off.
    pub use_stale: UseStale,
    /// nginx `proxy_ignore_headers`: response fields whose caching semantics are ignored
    /// (`Cache-Control`, `CDN-Cache-Control`, `Expires`, `Set-Cookie`, `Vary`; see
    /// [`parse_ignore_headers`]). Ignoring `Cache-Control` ignores its `no-store` and `private`
    /// too, exactly as nginx does. Default: empty.
    pub ignore_headers: Vec<HeaderName>,
    /// A targeted cache-control field for this gateway (RFC 9213), e.g. `muxgate-cache-control`;
    /// takes precedence over `CDN-Cache-Control` and `Cache-Control`. Default: none.
    pub targeted_field: Option<HeaderName>,
    /// Cap on a Last-Modified heuristic lifetime. Default: one day.
    pub heuristic_max: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            valid: Vec::new(),
            use_stale: UseStale::default(),
            ignore_headers: Vec::new(),
            targeted_field: None,
            heuristic_max: DEFAULT_HEURISTIC_MAX,
        }
    }
}

/// The status part of a `valid` rule: one code, or `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidStatus {
    /// Exactly this status.
    Status(StatusCode),
    /// Every status (nginx `any`).
    Any,
}

/// nginx `proxy_cache_use_stale` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UseStale {
    /// `error`: the origin could not be reached or failed mid-exchange.
    pub error: bool,
    /// `timeout`: the origin timed out.
    pub timeout: bool,
    /// `invalid_header`: the origin sent an invalid response header.
    pub invalid_header: bool,
    /// `updating`: serve stale while the entry is being refreshed.
    pub updating: bool,
    /// `http_500`, `http_502`, `http_503`, `http_504`, `http_403`, `http_404`, `http_429`.
    pub statuses: Vec<u16>,
}

/// Why the gateway is considering a stale response instead of the origin's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The origin could not be reached or the exchange failed.
    Error,
    /// The origin timed out.
    Timeout,
    /// The origin's response header was invalid.
    InvalidHeader,
    /// A refresh of this entry is in flight (or about to be started in the background).
    Updating,
    /// The origin answered with this status.
    Status(u16),
}

/// Why a response may not be stored (RFC 9111 §3 and the operator's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotStorable {
    /// Only GET responses are stored (HEAD responses are not).
    #[error("request method is not GET")]
    Method,
    /// The request carried `Cache-Control: no-store`.
    #[error("request carries no-store")]
    RequestNoStore,
    /// Non-final, partial (206) or 304 status, or `must-understand` on a status not understood.
    #[error("status code is not storable")]
    Status,
    /// The response carried `no-store`.
    #[error("response carries no-store")]
    NoStore,
    /// The response is `private`.
    #[error("response is private")]
    Private,
    /// The request carried `Authorization` and the response does not allow shared caching.
    #[error("request carries Authorization and the response does not allow shared caching")]
    Authorization,
    /// The response sets a cookie and `Set-Cookie` is not ignored.
    #[error("response sets a cookie")]
    SetCookie,
    /// `Vary: *`, or a `Vary` member that is not a field name.
    #[error("response varies on `*` or an invalid field name")]
    Vary,
    /// No explicit freshness, no configured lifetime, and not heuristically cacheable.
    #[error("response has no freshness information, validator or configured lifetime")]
    NoFreshness,
}

// ---------------------------------------------------------------------------------------------
// Directives
// ---------------------------------------------------------------------------------------------

/// A delta-seconds directive value (`max-age`, `s-maxage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// A valid value, clamped to [`MAX_DELTA`].
    Secs(Duration),
    /// Malformed, or duplicated with different values: a response is stale (RFC 9111 §4.2.1);
    /// a request ignores it.
    Invalid,
}

/// The request `max-stale` directive (RFC 9111 §5.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    /// `max-stale` without a value: any staleness is acceptable.
    Any,
    /// `max-stale=N`.
    Limit(Duration),
}

/// Cache directives from one field (request or response side; each side reads its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store` (request and response).
    pub no_store: bool,
    /// `no-cache`, with or without a field list (request and response).
    pub no_cache: bool,
    /// `private`, with or without a field list.
    pub private: bool,
    /// `public` (ignored when it carries an argument).
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand` (RFC 9111 §5.2.2.3).
    pub must_understand: bool,
    /// `max-age` (request and response).
    pub max_age: Option<Delta>,
    /// `s-maxage`.
    pub s_maxage: Option<Delta>,
    /// `stale-while-revalidate=N` (RFC 5861 §3).
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error=N` (RFC 5861 §4).
    pub stale_if_error: Option<Duration>,
    /// Request `max-stale[=N]`.
    pub max_stale: Option<MaxStale>,
    /// Request `min-fresh=N`.
    pub min_fresh: Option<Duration>,
    /// Request `only-if-cached`: the caller answers 504 instead of contacting the origin
    /// (RFC 9111 §5.2.1.7).
    pub only_if_cached: bool,
}

/// Where a stored response's freshness lifetime came from (RFC 9111 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshnessSource {
    /// `s-maxage`.
    SMaxAge,
    /// `max-age`.
    MaxAge,
    /// `Expires` − `Date`.
    Expires,
    /// Invalid freshness information (bad `max-age`/`s-maxage`/`Expires`): stale on arrival.
    Invalid,
    /// `cfg.valid` for the status.
    Configured,
    /// 10 % of `Date` − `Last-Modified`, capped.
    Heuristic,
    /// None: stale on arrival.
    None,
}

/// What the store keeps about one stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// When the request that produced the response was sent (RFC 9111 §4.2.3 `request_time`).
    pub request_time: SystemTime,
    /// When the response header was received (RFC 9111 §4.2.3 `response_time`).
    pub response_time: SystemTime,
    /// Status of the stored response.
    pub status: StatusCode,
    /// The response `Date`, if valid (otherwise `response_time` stands in for it).
    pub date: Option<SystemTime>,
    /// The response `Age` (zero when absent or invalid).
    pub age_value: Duration,
    /// Freshness lifetime, at most [`MAX_DELTA`].
    pub lifetime: Duration,
    /// RFC 9111 §4.2.3 `corrected_initial_age`, fixed once stored (see
    /// [`EntryMeta::current_age`]).
    pub initial_age: Duration,
    /// Where `lifetime` came from.
    pub freshness: FreshnessSource,
    /// The response directives that apply to this cache (targeted field, or `Cache-Control`).
    pub directives: CacheControl,
    /// A well-formed `ETag`.
    pub etag: Option<HeaderValue>,
    /// A valid `Last-Modified`, as received.
    pub last_modified: Option<HeaderValue>,
    /// `Vary` names with the normalised values the storing request had (`None` = absent).
    pub vary: Vec<(HeaderName, Option<String>)>,
}

/// Whether a stored response may answer a request (RFC 9111 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Fresh and acceptable to the request: serve it (`HIT`).
    Fresh,
    /// Stale, but the request's `max-stale` accepts it (RFC 9111 §5.2.1.2): serve it (`STALE`).
    StaleAccepted,
    /// Stale: revalidate. Answering with the stale response while the refresh runs is allowed
    /// only if [`may_serve_stale`] says so for [`StaleReason::Updating`] (`EXPIRED`/`UPDATING`).
    Expired,
    /// The request or the response demands validation before reuse (`no-cache`, request
    /// `max-age`/`min-fresh`, `must-revalidate` once stale): revalidate and wait for the answer.
    /// If the origin then fails, [`may_serve_stale`] still decides.
    MustRevalidate,
    /// This entry cannot answer this request at all (RFC 9111 §3.5 Authorization): forward.
    Miss,
}

// ---------------------------------------------------------------------------------------------
// Configuration impls
// ---------------------------------------------------------------------------------------------

impl PolicyConfig {
    /// Whether `name` is in `ignore_headers`.
    pub fn ignores(&self, name: &HeaderName) -> bool {
        self.ignore_headers.iter().any(|n| n == name)
    }

    /// The configured lifetime for `status`: the first matching rule, `None` if none matches or
    /// the matching rule's lifetime is zero (nginx `ngx_http_file_cache_valid`).
    pub fn valid_for(&self, status: StatusCode) -> Option<Duration> {
        let (_, d) = self.valid.iter().find(|(s, _)| s.matches(status))?;
        (!d.is_zero()).then_some(*d)
    }
}

/// Parses `ignore_headers`: `Cache-Control`, `CDN-Cache-Control`, `Expires`, `Set-Cookie`,
/// `Vary` (case-insensitive, as field names are).
pub fn parse_ignore_headers(names: &[String]) -> Result<Vec<HeaderName>, String> {
    const ALLOWED: [&str; 5] = [
        "cache-control",
        "cdn-cache-control",
        "expires",
        "set-cookie",
        "vary",
    ];
    let mut out: Vec<HeaderName> = Vec::new();
    for n in names {
        let lower = n.trim().to_ascii_lowercase();
        if !ALLOWED.contains(&lower.as_str()) {
            return Err(format!(
                "unsupported header {n:?}: expected one of Cache-Control, CDN-Cache-Control, \
                 Expires, Set-Cookie, Vary"
            ));
        }
        let name = HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| format!("invalid header name {n:?}"))?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

impl ValidStatus {
    /// Parses `"any"` or a final status code `"200"`..`"599"`.
    pub fn parse(text: &str) -> Result<ValidStatus, String> {
        let t = text.trim();
        if t == "any" {
            return Ok(ValidStatus::Any);
        }
        let code = if t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse::<u16>().ok()
        } else {
            None
        };
        match code.filter(|c| (200..=599).contains(c)) {
            Some(c) => StatusCode::from_u16(c)
                .map(ValidStatus::Status)
                .map_err(|_| format!("invalid status {text:?}")),
            None => Err(format!(
                "invalid status {text:?}: expected \"any\" or a status code from 200 to 599"
            )),
        }
    }

    /// Whether this rule covers `status`.
    pub fn matches(&self, status: StatusCode) -> bool {
        match self {
            ValidStatus::Any => true,
            ValidStatus::Status(s) => *s == status,
        }
    }
}

impl UseStale {
    /// Parses nginx's words: `error`, `timeout`, `invalid_header`, `updating`, `http_500`,
    /// `http_502`, `http_503`, `http_504`, `http_403`, `http_404`, `http_429`, or `off` alone.
    /// An empty list is `off`; repeated words are accepted once.
    pub fn parse(words: &[String]) -> Result<UseStale, String> {
        let mut u = UseStale::default();
        let mut off = false;
        for w in words {
            let status = match w.as_str() {
                "off" => {
                    off = true;
                    continue;
                }
                "error" => {
                    u.error = true;
                    continue;
                }
                "timeout" => {
                    u.timeout = true;
                    continue;
                }
                "invalid_header" => {
                    u.invalid_header = true;
                    continue;
                }
                "updating" => {
                    u.updating = true;
                    continue;
                }
                "http_500" => 500,
                "http_502" => 502,
                "http_503" => 503,
                "http_504" => 504,
                "http_403" => 403,
                "http_404" => 404,
                "http_429" => 429,
                other => {
                    return Err(format!(
                        "unknown use_stale value {other:?}: expected error, timeout, \
                         invalid_header, updating, http_500, http_502, http_503, http_504, \
                         http_403, http_404, http_429 or off"
                    ))
                }
            };
            if !u.statuses.contains(&status) {
                u.statuses.push(status);
            }
        }
        if off && u != UseStale::default() {
            return Err("use_stale value \"off\" cannot be combined with other values".into());
        }
        Ok(u)
    }

    /// Whether the operator opted in to stale responses for `why`.
    pub fn allows(&self, why: StaleReason) -> bool {
        match why {
            StaleReason::Error => self.error,
            StaleReason::Timeout => self.timeout,
            StaleReason::InvalidHeader => self.invalid_header,
            StaleReason::Updating => self.updating,
            StaleReason::Status(s) => self.statuses.contains(&s),
        }
    }
}

impl NotStorable {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::RequestNoStore => "request_no_store",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no_store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set_cookie",
            NotStorable::Vary => "vary",
            NotStorable::NoFreshness => "no_freshness",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Directive parsing
// ---------------------------------------------------------------------------------------------

/// One directive's argument as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    /// No argument; Structured Field Boolean true.
    None,
    /// token form; SF Token.
    Token(Vec<u8>),
    /// quoted-string form (unescaped); SF String.
    Quoted(Vec<u8>),
    /// SF Integer.
    Integer(i64),
    /// SF Boolean false (`?0`): the directive is absent.
    False,
    /// A malformed element, or an SF Decimal, Byte Sequence or Inner List.
    Other,
}

/// A directive name (lower-cased) and its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawDirective {
    name: String,
    arg: Arg,
}

/// Where the response directives came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectiveSource {
    /// A targeted field (RFC 9213): `Cache-Control` and `Expires` are ignored.
    Targeted,
    /// `Cache-Control`.
    CacheControl,
    /// No field applies.
    None,
}

impl CacheControl {
    /// Parses the directives in `field`. `cache-control` uses the RFC 9111 §5.2 syntax; any other
    /// field is a targeted field, a Structured Fields Dictionary (RFC 9213 §2.1).
    ///
    /// `None` when the field is absent or empty, or — for a targeted field — fails to parse as a
    /// Dictionary (RFC 9213 §2.2: the cache then falls back to the next field).
    pub fn parse(headers: &HeaderMap, field: &HeaderName) -> Option<CacheControl> {
        let lines = headers.get_all(field);
        if *field == header::CACHE_CONTROL {
            let mut raw = Vec::new();
            for v in lines.iter() {
                parse_cc_line(v.as_bytes(), &mut raw);
            }
            if raw.is_empty() && lines.iter().next().is_none() {
                return None;
            }
            Some(CacheControl::from_raw(&raw, false))
        } else {
            // RFC 8941 §4.2: multiple field lines are combined with ", " before parsing.
            let mut joined = Vec::new();
            for (i, v) in lines.iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            let raw = parse_sf_dictionary(&joined)?;
            // RFC 9213 §2.2: "the first ... field with a valid, non-empty value".
            if raw.is_empty() {
                return None;
            }
            Some(CacheControl::from_raw(&raw, true))
        }
    }

    /// The request's `Cache-Control` (targeted fields are response-only).
    pub fn for_request(req_headers: &HeaderMap) -> CacheControl {
        CacheControl::parse(req_headers, &header::CACHE_CONTROL).unwrap_or_default()
    }

    /// The response directives that apply to this cache: `cfg.targeted_field`, else
    /// `CDN-Cache-Control`, else `Cache-Control`, skipping ignored fields (RFC 9213 §2.2).
    pub fn for_response(resp_headers: &HeaderMap, cfg: &PolicyConfig) -> CacheControl {
        response_directives(resp_headers, cfg).0
    }

    /// RFC 9111 §3.5: a shared cache may use a response to a request with `Authorization` only
    /// with `must-revalidate`, `public` or `s-maxage`.
    pub fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage.is_some() || self.must_revalidate
    }

    /// RFC 9111 §4.2.4: "A cache MUST NOT generate a stale response if it is prohibited by an
    /// explicit in-protocol directive (e.g., by a no-cache response directive, a must-revalidate
    /// response directive, or an applicable s-maxage or proxy-revalidate response directive)".
    pub fn forbids_stale(&self) -> bool {
        self.no_cache || self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }

    fn from_raw(raw: &[RawDirective], sf: bool) -> CacheControl {
        let mut cc = CacheControl::default();
        let mut swr: Vec<Option<Duration>> = Vec::new();
        let mut sie: Vec<Option<Duration>> = Vec::new();
        let mut max_stale: Vec<Option<MaxStale>> = Vec::new();
        for d in raw {
            if d.arg == Arg::False {
                continue;
            }
            match d.name.as_str() {
                // Restrictive directives count whatever argument they carry.
                "no-store" => cc.no_store = true,
                // RFC 9111 §5.2.2.4: the qualified form is treated as unqualified (stricter).
                "no-cache" => cc.no_cache = true,
                // RFC 9111 §5.2.2.7: likewise, the whole response is treated as private.
                "private" => cc.private = true,
                "must-revalidate" => cc.must_revalidate = true,
                "proxy-revalidate" => cc.proxy_revalidate = true,
                "must-understand" => cc.must_understand = true,
                "only-if-cached" => cc.only_if_cached = true,
                // RFC 9111 §5.2.2.9: public has no argument; with one it is not trusted to
                // loosen anything.
                "public" => cc.public = d.arg == Arg::None,
                "max-age" => fold_freshness(&mut cc.max_age, delta_arg(&d.arg, sf)),
                "s-maxage" => fold_freshness(&mut cc.s_maxage, delta_arg(&d.arg, sf)),
                "stale-while-revalidate" => swr.push(delta_arg(&d.arg, sf)),
                "stale-if-error" => sie.push(delta_arg(&d.arg, sf)),
                "min-fresh" => {
                    // Duplicates: the most restrictive (largest) wins; malformed is ignored.
                    if let Some(v) = delta_arg(&d.arg, sf) {
                        cc.min_fresh = Some(cc.min_fresh.map_or(v, |m| m.max(v)));
                    }
                }
                "max-stale" => max_stale.push(match d.arg {
                    Arg::None => Some(MaxStale::Any),
                    _ => delta_arg(&d.arg, sf).map(MaxStale::Limit),
                }),
                _ => {}
            }
        }
        cc.stale_while_revalidate = fold_window(&swr);
        cc.stale_if_error = fold_window(&sie);
        cc.max_stale = fold_max_stale(&max_stale);
        cc
    }
}

/// The response directives for this cache and where they came from.
fn response_directives(resp: &HeaderMap, cfg: &PolicyConfig) -> (CacheControl, DirectiveSource) {
    // RFC 9213 §2.2: a cache uses the first targeted field on its list that has a valid,
    // non-empty value, and then ignores Cache-Control (and Expires).
    let targeted = cfg
        .targeted_field
        .iter()
        .chain(std::iter::once(&CDN_CACHE_CONTROL));
    for field in targeted {
        if *field == header::CACHE_CONTROL || cfg.ignores(field) {
            continue;
        }
        if let Some(cc) = CacheControl::parse(resp, field) {
            return (cc, DirectiveSource::Targeted);
        }
    }
    if !cfg.ignores(&header::CACHE_CONTROL) {
        if let Some(cc) = CacheControl::parse(resp, &header::CACHE_CONTROL) {
            return (cc, DirectiveSource::CacheControl);
        }
    }
    (CacheControl::default(), DirectiveSource::None)
}

/// A delta-seconds argument. RFC 9111 §1.2.2: `delta-seconds = 1*DIGIT`. In `Cache-Control` both
/// the token and quoted-string forms are read (§5.2); a targeted field needs an SF Integer.
fn delta_arg(arg: &Arg, sf: bool) -> Option<Duration> {
    match arg {
        Arg::Token(t) if !sf => delta_seconds(t),
        Arg::Quoted(t) if !sf => delta_seconds(t),
        Arg::Integer(n) => u64::try_from(*n)
            .ok()
            .map(|n| Duration::from_secs(n).min(MAX_DELTA)),
        _ => None,
    }
}

/// `1*DIGIT`, saturating at [`MAX_DELTA`] (RFC 9111 §1.2.2).
fn delta_seconds(b: &[u8]) -> Option<Duration> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let max = MAX_DELTA.as_secs();
    let mut n: u64 = 0;
    for d in b {
        n = (n * 10 + u64::from(d - b'0')).min(max);
    }
    Some(Duration::from_secs(n))
}

/// RFC 9111 §4.2.1: "When there is more than one value present for a given directive (e.g., ...
/// multiple Cache-Control: max-age directives), either the first occurrence should be used or
/// the response should be considered stale." Equal duplicates are harmless; different or
/// malformed ones make the value [`Delta::Invalid`] (stale).
fn fold_freshness(slot: &mut Option<Delta>, value: Option<Duration>) {
    let new = value.map_or(Delta::Invalid, Delta::Secs);
    *slot = Some(match slot.take() {
        None => new,
        Some(prev) if prev == new => prev,
        Some(_) => Delta::Invalid,
    });
}

/// RFC 5861 windows: the smallest of the values; any malformed occurrence disables the window.
fn fold_window(values: &[Option<Duration>]) -> Option<Duration> {
    values
        .iter()
        .try_fold(None, |acc: Option<Duration>, v| {
            v.map(|v| Some(acc.map_or(v, |a| a.min(v))))
        })
        .flatten()
}

/// `max-stale`: a limit beats no limit, the smallest limit wins; a malformed value disables it.
fn fold_max_stale(values: &[Option<MaxStale>]) -> Option<MaxStale> {
    values
        .iter()
        .try_fold(None, |acc: Option<MaxStale>, v| {
            let v = (*v)?;
            Some(Some(match (acc, v) {
                (None, v) | (Some(MaxStale::Any), v) => v,
                (Some(MaxStale::Limit(a)), MaxStale::Any) => MaxStale::Limit(a),
                (Some(MaxStale::Limit(a)), MaxStale::Limit(b)) => MaxStale::Limit(a.min(b)),
            }))
        })
        .flatten()
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses one `Cache-Control` field line (RFC 9111 §5.2:
/// `cache-directive = token [ "=" ( token / quoted-string ) ]`, comma-separated with OWS).
/// A malformed element keeps its name with [`Arg::Other`]; an element without a name is skipped.
fn parse_cc_line(b: &[u8], out: &mut Vec<RawDirective>) {
    let mut i = 0;
    loop {
        while i < b.len() && (is_ows(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        let name = &b[start..i];
        let mut arg = Arg::None;
        let mut ok = !name.is_empty();
        if ok && b.get(i) == Some(&b'=') {
            i += 1;
            if b.get(i) == Some(&b'"') {
                match quoted_string(b, i) {
                    Some((s, next)) => {
                        arg = Arg::Quoted(s);
                        i = next;
                    }
                    None => ok = false,
                }
            } else {
                let vs = i;
                while i < b.len() && is_tchar(b[i]) {
                    i += 1;
                }
                if i == vs {
                    ok = false;
                } else {
                    arg = Arg::Token(b[vs..i].to_vec());
                }
            }
        }
        while i < b.len() && is_ows(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            ok = false;
            i = skip_to_comma(b, i);
        }
        if !name.is_empty() {
            out.push(RawDirective {
                name: String::from_utf8_lossy(name).to_ascii_lowercase(),
                arg: if ok { arg } else { Arg::Other },
            });
        }
    }
}

/// RFC 9110 §5.6.4 quoted-string starting at `b[i] == '"'`: the unescaped text and the index
/// after the closing quote.
fn quoted_string(b: &[u8], i: usize) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Some((out, j + 1)),
            b'\\' => {
                let c = *b.get(j + 1)?;
                if !(c == b'\t' || c == b' ' || c >= 0x21) || c == 0x7f {
                    return None;
                }
                out.push(c);
                j += 2;
            }
            c if c == b'\t' || c == b' ' || (c >= 0x21 && c != 0x7f) => {
                out.push(c);
                j += 1;
            }
            _ => return None,
        }
    }
    None
}

/// Index of the next comma at or after `i` outside a quoted-string (or `b.len()`).
fn skip_to_comma(b: &[u8], mut i: usize) -> usize {
    let mut quoted = false;
    while i < b.len() {
        match b[i] {
            b',' if !quoted => return i,
            b'"' => quoted = !quoted,
            b'\\' if quoted => i += 1,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// RFC 8941 §4.2.2 Dictionary, enough of it for RFC 9213: keys with Boolean, Integer, String,
/// Token values (Decimal, Byte Sequence and Inner List are recognised and kept as
/// [`Arg::Other`]); parameters are parsed and ignored. A duplicate key overwrites the earlier
/// one (RFC 8941 §4.2.2). `None` when the whole field fails to parse.
fn parse_sf_dictionary(input: &[u8]) -> Option<Vec<RawDirective>> {
    let mut p = SfParser { b: input, i: 0 };
    let mut out: Vec<RawDirective> = Vec::new();
    p.skip_sp();
    while !p.done() {
        let key = p.key()?;
        let arg = if p.eat(b'=') {
            let arg = if p.peek() == Some(b'(') {
                p.inner_list()?;
                Arg::Other
            } else {
                p.bare_item()?
            };
            p.parameters()?;
            arg
        } else {
            p.parameters()?;
            Arg::None
        };
        out.retain(|d| d.name != key);
        out.push(RawDirective { name: key, arg });
        while p.peek().is_some_and(is_ows) {
            p.i += 1;
        }
        if p.done() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        while p.peek().is_some_and(is_ows) {
            p.i += 1;
        }
        if p.done() {
            return None; // trailing comma
        }
    }
    Some(out)
}

/// Cursor over a Structured Field.
struct SfParser<'a> {
    b: &'a [u8],
    i: usize,
}

impl SfParser<'_> {
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    /// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
    fn key(&mut self) -> Option<String> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return None,
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
        {
            self.i += 1;
        }
        Some(String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    fn bare_item(&mut self) -> Option<Arg> {
        match self.peek()? {
            c if c == b'-' || c.is_ascii_digit() => self.number(),
            b'"' => self.string(),
            c if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                self.i += 1;
                while self
                    .peek()
                    .is_some_and(|c| is_tchar(c) || c == b':' || c == b'/')
                {
                    self.i += 1;
                }
                Some(Arg::Token(self.b[start..self.i].to_vec()))
            }
            b':' => {
                self.i += 1;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
                {
                    self.i += 1;
                }
                self.eat(b':').then_some(Arg::Other)
            }
            b'?' => {
                self.i += 1;
                if self.eat(b'1') {
                    Some(Arg::None)
                } else if self.eat(b'0') {
                    Some(Arg::False)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// RFC 8941 §4.2.4: Integer (at most 15 digits) or Decimal (12.3 digits).
    fn number(&mut self) -> Option<Arg> {
        let negative = self.eat(b'-');
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let int_len = self.i - start;
        if int_len == 0 {
            return None;
        }
        if self.eat(b'.') {
            let frac = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            let frac_len = self.i - frac;
            return (int_len <= 12 && (1..=3).contains(&frac_len)).then_some(Arg::Other);
        }
        if int_len > 15 {
            return None;
        }
        let n = self.b[start..self.i]
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        Some(Arg::Integer(if negative { -n } else { n }))
    }

    /// RFC 8941 §4.2.5: printable ASCII, escapes only `\"` and `\\`.
    fn string(&mut self) -> Option<Arg> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return Some(Arg::Quoted(out)),
                b'\\' => {
                    let e = self.peek()?;
                    if e != b'"' && e != b'\\' {
                        return None;
                    }
                    out.push(e);
                    self.i += 1;
                }
                0x20..=0x7e => out.push(c),
                _ => return None,
            }
        }
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn inner_list(&mut self) -> Option<()> {
        self.i += 1; // '('
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return Some(());
            }
            self.bare_item()?;
            self.parameters()?;
            match self.peek()? {
                b' ' | b')' => {}
                _ => return None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field values: HTTP-date, Age, ETag, Vary
// ---------------------------------------------------------------------------------------------

const DAY_NAMES: [&[u8]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const DAY_NAMES_LONG: [&[u8]; 7] = [
    b"Sunday",
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, or the obsolete RFC 850 and asctime
/// formats. Names are case-sensitive. The day name must match the date in IMF-fixdate and
/// asctime; in RFC 850 (only ever sent by very old servers) it is not checked, so that the
/// two-digit year resolution cannot change whether a value is valid. `now` resolves the RFC 850
/// two-digit year: a date "more than 50 years in the future" is taken a century earlier.
pub fn parse_http_date(value: &[u8], now: SystemTime) -> Option<SystemTime> {
    let v = trim_ows(value);
    imf_fixdate(v)
        .or_else(|| rfc850_date(v, now))
        .or_else(|| asctime_date(v))
}

/// Formats an IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn format_http_date(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let wday = weekday(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        String::from_utf8_lossy(DAY_NAMES[wday]),
        d,
        String::from_utf8_lossy(MONTHS[(m - 1) as usize]),
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The parts of a date, before validation.
struct DateParts {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// Index into [`DAY_NAMES`], when the format's day name is to be checked.
    wday: Option<usize>,
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !is_ows(*b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(*b)).map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 4 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

fn month(b: &[u8]) -> Option<u32> {
    MONTHS.iter().position(|m| *m == b).map(|i| i as u32 + 1)
}

/// `HH:MM:SS`.
fn time_of_day(b: &[u8]) -> Option<(u32, u32, u32)> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    Some((digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(b: &[u8]) -> Option<SystemTime> {
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' {
        return None;
    }
    let (hour, minute, second) = time_of_day(&b[17..25])?;
    date_parts_to_time(DateParts {
        year: i64::from(digits(&b[12..16])?),
        month: month(&b[8..11])?,
        day: digits(&b[5..7])?,
        hour,
        minute,
        second,
        wday: Some(DAY_NAMES.iter().position(|d| *d == &b[0..3])?),
    })
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn rfc850_date(b: &[u8], now: SystemTime) -> Option<SystemTime> {
    let comma = b.iter().position(|c| *c == b',')?;
    if !DAY_NAMES_LONG.contains(&&b[..comma]) {
        return None;
    }
    let r = &b[comma..];
    if r.len() != 24 || &r[0..2] != b", " || r[4] != b'-' || r[8] != b'-' {
        return None;
    }
    if r[11] != b' ' || &r[20..] != b" GMT" {
        return None;
    }
    if !r[9..11].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let yy = i64::from(digits(&r[9..11])?);
    // RFC 9110 §5.6.7: "Recipients of a timestamp value in rfc850-date format, which uses a
    // two-digit year, MUST interpret a timestamp that appears to be more than 50 years in the
    // future as representing the most recent year in the past that had the same last two digits."
    let this_year = civil_from_days(unix_secs(now).div_euclid(86_400)).0;
    let mut year = this_year - this_year.rem_euclid(100) + yy;
    if year > this_year + 50 {
        year -= 100;
    } else if year < this_year - 50 {
        year += 100;
    }
    let (hour, minute, second) = time_of_day(&r[12..20])?;
    date_parts_to_time(DateParts {
        year,
        month: month(&r[5..8])?,
        day: digits(&r[2..4])?,
        hour,
        minute,
        second,
        wday: None,
    })
}

/// `Sun Nov  6 08:49:37 1994`
fn asctime_date(b: &[u8]) -> Option<SystemTime> {
    if b.len() != 24 || b[3] != b' ' || b[7] != b' ' || b[10] != b' ' || b[19] != b' ' {
        return None;
    }
    // date3 = month SP ( 2DIGIT / ( SP DIGIT ) )
    let day = if b[8] == b' ' {
        digits(&b[9..10])?
    } else {
        digits(&b[8..10])?
    };
    let (hour, minute, second) = time_of_day(&b[11..19])?;
    date_parts_to_time(DateParts {
        year: i64::from(digits(&b[20..24])?),
        month: month(&b[4..7])?,
        day,
        hour,
        minute,
        second,
        wday: Some(DAY_NAMES.iter().position(|d| *d == &b[0..3])?),
    })
}

fn date_parts_to_time(p: DateParts) -> Option<SystemTime> {
    // RFC 9110 §5.6.7: hour 00-23, minute 00-59, second 00-60 (leap second).
    if p.day == 0 || p.day > days_in_month(p.year, p.month) || p.hour > 23 || p.minute > 59 {
        return None;
    }
    if p.second > 60 {
        return None;
    }
    let days = days_from_civil(p.year, p.month, p.day);
    if p.wday.is_some_and(|w| w != weekday(days)) {
        return None;
    }
    let secs =
        days * 86_400 + i64::from(p.hour) * 3600 + i64::from(p.minute) * 60 + i64::from(p.second);
    from_unix_secs(secs)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// 0 = Sunday; 1970-01-01 was a Thursday.
fn weekday(days: i64) -> usize {
    (days + 4).rem_euclid(7) as usize
}

/// Whole seconds since the epoch (negative before it, rounded down).
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                -s.saturating_add(1)
            } else {
                -s
            }
        }
    }
}

fn from_unix_secs(secs: i64) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// `a − b`, or zero when `b` is later.
fn since(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or(Duration::ZERO)
}

/// A singleton date field: its time if there is exactly one valid line.
fn single_date(h: &HeaderMap, name: &HeaderName, now: SystemTime) -> Option<SystemTime> {
    let mut lines = h.get_all(name).iter();
    let v = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    parse_http_date(v.as_bytes(), now)
}

/// A valid `Last-Modified` line and its time.
fn last_modified(h: &HeaderMap, now: SystemTime) -> Option<(HeaderValue, SystemTime)> {
    let t = single_date(h, &header::LAST_MODIFIED, now)?;
    h.get(header::LAST_MODIFIED).map(|v| (v.clone(), t))
}

/// `Expires`: `None` when absent; `Some(None)` when present but invalid or repeated, which
/// RFC 9111 §5.3 makes "already expired": "A cache recipient MUST interpret invalid date formats,
/// especially the value "0", as representing a time in the past".
fn expires(h: &HeaderMap, now: SystemTime) -> Option<Option<SystemTime>> {
    h.contains_key(header::EXPIRES)
        .then(|| single_date(h, &header::EXPIRES, now))
}

/// RFC 9111 §5.1: `Age = delta-seconds`; "a cache encountering a message with a list-based Age
/// field value SHOULD use the first member of the field value, discarding subsequent ones".
/// Anything but a non-negative integer is ignored (zero).
fn age_header(h: &HeaderMap) -> Duration {
    h.get(header::AGE)
        .and_then(|v| v.as_bytes().split(|b| *b == b',').next().map(trim_ows))
        .and_then(delta_seconds)
        .unwrap_or(Duration::ZERO)
}

/// A well-formed `ETag` (RFC 9110 §8.8.3: `[ "W/" ] DQUOTE *etagc DQUOTE`), only one line.
fn valid_etag(h: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = h.get_all(header::ETAG).iter();
    let v = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let opaque = trim_ows(v.as_bytes());
    let opaque = opaque.strip_prefix(b"W/").unwrap_or(opaque);
    let ok = opaque.len() >= 2
        && opaque[0] == b'"'
        && opaque[opaque.len() - 1] == b'"'
        && opaque[1..opaque.len() - 1]
            .iter()
            .all(|c| *c == 0x21 || (0x23..=0x7e).contains(c) || *c >= 0x80);
    ok.then(|| v.clone())
}

/// `(weak, opaque-tag)` of a validated ETag.
fn etag_parts(v: &HeaderValue) -> (bool, &[u8]) {
    let b = trim_ows(v.as_bytes());
    match b.strip_prefix(b"W/") {
        Some(o) => (true, o),
        None => (false, b),
    }
}

/// The `Vary` field names, lower-cased, sorted and without duplicates (RFC 9111 §4.1).
/// `Err(NotStorable::Vary)` for `*` ("always fails to match") or a member that is not a token.
pub fn vary_names(resp_headers: &HeaderMap) -> Result<Vec<HeaderName>, NotStorable> {
    let mut names = Vec::new();
    for v in resp_headers.get_all(header::VARY) {
        for member in v.as_bytes().split(|b| *b == b',') {
            let m = trim_ows(member);
            if m.is_empty() {
                continue; // RFC 9110 §5.6.1: empty list elements are ignored
            }
            if m == b"*" || !m.iter().all(|c| is_tchar(*c)) {
                return Err(NotStorable::Vary);
            }
            names.push(HeaderName::from_bytes(m).map_err(|_| NotStorable::Vary)?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Ok(names)
}

/// Fields whose values are case-insensitive lists, so lower-casing and dropping whitespace
/// around commas keeps their meaning (RFC 9110 §12.5: media types, charsets, codings and
/// language tags are case-insensitive).
fn case_insensitive_list(name: &HeaderName) -> bool {
    *name == header::ACCEPT
        || *name == header::ACCEPT_ENCODING
        || *name == header::ACCEPT_LANGUAGE
        || *name == header::ACCEPT_CHARSET
}

/// A request field normalised for `Vary` matching (RFC 9111 §4.1: values match after
/// "adding or removing whitespace, combining multiple field lines, or normalizing both values in
/// a way that is known to have identical semantics"). Lines are joined with `", "`, whitespace
/// runs collapse to one space and the ends are trimmed; list fields from
/// [`case_insensitive_list`] are lower-cased and lose whitespace around commas. Bytes outside
/// ASCII and `\` are escaped so that the result is injective. `None` when the field is absent.
fn normalised_field(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = h.get_all(name).iter().peekable();
    lines.peek()?;
    let list = case_insensitive_list(name);
    let mut out = String::new();
    let mut pending_space = false;
    for (i, v) in lines.enumerate() {
        let sep: &[u8] = if i > 0 { b", " } else { b"" };
        for &b in sep.iter().chain(v.as_bytes()) {
            if is_ows(b) {
                let after_list_comma = list && out.ends_with(',');
                pending_space = !out.is_empty() && !after_list_comma;
                continue;
            }
            let list_comma = list && b == b',';
            if pending_space && !list_comma {
                out.push(' ');
            }
            pending_space = false;
            match b {
                b'\\' => out.push_str("\\\\"),
                0x80..=0xff => out.push_str(&format!("\\x{b:02x}")),
                _ if list => out.push(char::from(b.to_ascii_lowercase())),
                _ => out.push(char::from(b)),
            }
        }
    }
    Some(out)
}

/// Appends one `Vary` name and normalised value to a secondary key; `\n` cannot occur in either.
fn push_key_part(key: &mut String, name: &HeaderName, value: Option<&str>) {
    key.push_str(name.as_str());
    key.push('\n');
    match value {
        None => key.push('-'),
        Some(v) => {
            key.push('+');
            key.push_str(v);
        }
    }
    key.push('\n');
}

// ---------------------------------------------------------------------------------------------
// Storability (RFC 9111 §3)
// ---------------------------------------------------------------------------------------------

/// RFC 9110 §15.1: "200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, and 501" are
/// heuristically cacheable.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses whose caching requirements this cache implements (for `must-understand`).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203
            | 204
            | 300
            | 301
            | 302
            | 303
            | 307
            | 308
            | 400
            | 403
            | 404
            | 405
            | 410
            | 414
            | 429
            | 451
            | 500
            | 501
            | 502
            | 503
            | 504
    )
}

/// Whether a shared cache may store this response (RFC 9111 §3), `Err` with the first reason
/// it may not. Freshness is not required to be positive: a response that is stale on arrival but
/// has a validator is stored and revalidated on use.
pub fn storable(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    cfg: &PolicyConfig,
) -> Result<(), NotStorable> {
    // §3: "the request method is understood by the cache"; we store GET only (HEAD responses
    // carry no content to serve a later GET).
    if *method != Method::GET {
        return Err(NotStorable::Method);
    }
    // §5.2.1.5: "a cache MUST NOT store any part of either this request or any response to it".
    if CacheControl::for_request(req_headers).no_store {
        return Err(NotStorable::RequestNoStore);
    }
    let (cc, source) = response_directives(resp_headers, cfg);
    // §3: "the response status code is final"; 206 and 304 need understanding we do not have
    // (no partial-content storage; a 304 updates, it is not stored); §5.2.2.3 must-understand.
    let s = status.as_u16();
    if s < 200 || s == 206 || s == 304 || (cc.must_understand && !understood(status)) {
        return Err(NotStorable::Status);
    }
    // §3: "the no-store cache directive is not present in the response". must-understand's
    // permission to ignore no-store (§5.2.2.3, a SHOULD) is not taken: no-store always wins.
    if cc.no_store {
        return Err(NotStorable::NoStore);
    }
    // §3 / §5.2.2.7: a shared cache "MUST NOT store the response" when private.
    if cc.private {
        return Err(NotStorable::Private);
    }
    // §3 / §3.5: Authorization only with must-revalidate, public or s-maxage.
    if req_headers.contains_key(header::AUTHORIZATION) && !cc.allows_authorized() {
        return Err(NotStorable::Authorization);
    }
    // nginx: a response with Set-Cookie is not cached unless proxy_ignore_headers Set-Cookie.
    if resp_headers.contains_key(header::SET_COOKIE) && !cfg.ignores(&header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    // §4.1: "A stored response with a Vary header field value containing a member "*" always
    // fails to match", so storing it is pointless.
    if !cfg.ignores(&header::VARY) {
        vary_names(resp_headers)?;
    }
    // §3: the response contains "a public response directive; ... an Expires header field; a
    // max-age response directive; ... an s-maxage response directive; ... a status code that is
    // defined as heuristically cacheable". A heuristically cacheable response must also have a
    // Last-Modified (heuristic lifetime) or an ETag (revalidation), otherwise keeping it is
    // useless; `cfg.valid` makes any status storable, as nginx's proxy_cache_valid does.
    let expires_counts = source != DirectiveSource::Targeted
        && !cfg.ignores(&header::EXPIRES)
        && resp_headers.contains_key(header::EXPIRES);
    let explicit = cc.public || cc.max_age.is_some() || cc.s_maxage.is_some() || expires_counts;
    let configured = cfg.valid_for(status).is_some();
    let heuristic = heuristically_cacheable(status)
        && (valid_etag(resp_headers).is_some()
            || last_modified(resp_headers, UNIX_EPOCH).is_some());
    if explicit || configured || heuristic {
        Ok(())
    } else {
        Err(NotStorable::NoFreshness)
    }
}

/// The header fields to keep with a stored response: hop-by-hop fields removed (RFC 9111 §3.1
/// allows doing so before storage), `Set-Cookie` removed when it is ignored (a cookie must never
/// be replayed to other clients), and a `Date` added when missing (RFC 9110 §6.6.1: "A recipient
/// with a clock that receives a response message without a Date header field MUST record the
/// time it was received and append a corresponding Date header field to the message's header
/// section if it is cached or forwarded downstream").
pub fn storable_headers(
    resp_headers: &HeaderMap,
    response_time: SystemTime,
    cfg: &PolicyConfig,
) -> HeaderMap {
    let mut h = resp_headers.clone();
    strip_hop_by_hop(&mut h, false);
    if cfg.ignores(&header::SET_COOKIE) {
        h.remove(header::SET_COOKIE);
    }
    if !h.contains_key(header::DATE) {
        if let Ok(v) = HeaderValue::from_str(&format_http_date(response_time)) {
            h.insert(header::DATE, v);
        }
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Freshness (RFC 9111 §4.2)
// ---------------------------------------------------------------------------------------------

/// Freshness lifetime and its source (RFC 9111 §4.2.1, shared cache).
fn freshness_lifetime(
    status: StatusCode,
    resp: &HeaderMap,
    cc: &CacheControl,
    source: DirectiveSource,
    date_value: SystemTime,
    cfg: &PolicyConfig,
) -> (Duration, FreshnessSource) {
    let from_delta = |d: Delta, src| match d {
        Delta::Secs(d) => (d, src),
        // §4.2.1: "Caches are encouraged to consider responses that have invalid freshness
        // information (e.g., a max-age directive with non-integer content) to be stale."
        Delta::Invalid => (Duration::ZERO, FreshnessSource::Invalid),
    };
    // §4.2.1: "If the cache is shared and the s-maxage response directive is present, use its
    // value, or ... if the max-age response directive is present, use its value, or ... if the
    // Expires response header field is present, use its value minus the value of the Date
    // response header field (using the time the message was received if it is not present)".
    if let Some(d) = cc.s_maxage {
        return from_delta(d, FreshnessSource::SMaxAge);
    }
    if let Some(d) = cc.max_age {
        return from_delta(d, FreshnessSource::MaxAge);
    }
    // RFC 9213 §2.2: with a targeted field, Expires is ignored too.
    if source != DirectiveSource::Targeted && !cfg.ignores(&header::EXPIRES) {
        match expires(resp, date_value) {
            Some(Some(t)) => {
                return (
                    since(t, date_value).min(MAX_DELTA),
                    FreshnessSource::Expires,
                )
            }
            Some(None) => return (Duration::ZERO, FreshnessSource::Invalid),
            None => {}
        }
    }
    // nginx proxy_cache_valid: only without explicit freshness; preferred over the heuristic.
    if let Some(d) = cfg.valid_for(status) {
        return (d.min(MAX_DELTA), FreshnessSource::Configured);
    }
    // §4.2.2: "heuristics can only be used on responses without explicit freshness whose status
    // codes are defined as heuristically cacheable ... and on responses without explicit
    // freshness that have been marked as explicitly cacheable (e.g., with a public response
    // directive)"; "no more than some fraction of the interval since [Last-Modified]".
    if heuristically_cacheable(status) || cc.public {
        if let Some((_, lm)) = last_modified(resp, date_value) {
            let lifetime = (since(date_value, lm) / HEURISTIC_DIVISOR)
                .min(cfg.heuristic_max)
                .min(MAX_DELTA);
            return (lifetime, FreshnessSource::Heuristic);
        }
    }
    (Duration::ZERO, FreshnessSource::None)
}

impl EntryMeta {
    /// Builds the metadata of a response about to be stored. `request_time` is when the request
    /// was sent to the origin, `response_time` when the response header arrived.
    pub fn new(
        req_headers: &HeaderMap,
        status: StatusCode,
        resp_headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        cfg: &PolicyConfig,
    ) -> EntryMeta {
        let (directives, source) = response_directives(resp_headers, cfg);
        let date = single_date(resp_headers, &header::DATE, response_time);
        // §4.2.3: date_value; RFC 9110 §6.6.1: the receipt time when Date is missing.
        let date_value = date.unwrap_or(response_time);
        let (lifetime, freshness) =
            freshness_lifetime(status, resp_headers, &directives, source, date_value, cfg);
        let vary = if cfg.ignores(&header::VARY) {
            Vec::new()
        } else {
            match vary_names(resp_headers) {
                Ok(names) => names
                    .into_iter()
                    .map(|n| {
                        let v = normalised_field(req_headers, &n);
                        (n, v)
                    })
                    .collect(),
                // Never matches (see `vary_matches`); `storable` refuses such responses anyway.
                Err(_) => vec![(HeaderName::from_static("*"), None)],
            }
        };
        let age_value = age_header(resp_headers);
        let apparent_age = since(response_time, date_value);
        let response_delay = since(response_time, request_time);
        let initial_age = apparent_age.max(age_value.saturating_add(response_delay));
        EntryMeta {
            request_time,
            response_time,
            status,
            date,
            age_value,
            lifetime,
            initial_age,
            freshness,
            directives,
            etag: valid_etag(resp_headers),
            last_modified: last_modified(resp_headers, response_time).map(|(v, _)| v),
            vary,
        }
    }

    /// RFC 9111 §4.2.3 `current_age`:
    ///
    /// ```text
    /// apparent_age = max(0, response_time - date_value);
    /// response_delay = response_time - request_time;
    /// corrected_age_value = age_value + response_delay;
    /// corrected_initial_age = max(apparent_age, corrected_age_value);
    /// resident_time = now - response_time;
    /// current_age = corrected_initial_age + resident_time;
    /// ```
    ///
    /// A clock running backwards yields zero components, never a negative age. Everything but
    /// `resident_time` is known when the entry is built ([`EntryMeta::initial_age`]); a hit
    /// computes only the last line (it runs twice per hit).
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let resident_time = since(now, self.response_time);
        self.initial_age.saturating_add(resident_time)
    }

    /// RFC 9111 §4.2: `response_is_fresh = (freshness_lifetime > current_age)`. Says nothing
    /// about `no-cache`; see [`request_allows_cached`].
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.lifetime > self.current_age(now)
    }

    /// How long past its freshness lifetime the response is; `None` while fresh.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        let age = self.current_age(now);
        (self.lifetime <= age).then(|| age - self.lifetime)
    }

    /// Time left until the response becomes stale (zero when stale).
    pub fn fresh_for(&self, now: SystemTime) -> Duration {
        self.lifetime.saturating_sub(self.current_age(now))
    }

    /// The secondary cache key of this entry: equal to [`secondary_key`] for its `Vary` names and
    /// any request that [`vary_matches`] it.
    pub fn secondary_key(&self) -> String {
        let mut parts: Vec<&(HeaderName, Option<String>)> = self.vary.iter().collect();
        parts.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        parts.dedup_by(|a, b| a.0 == b.0);
        let mut key = String::new();
        for (name, value) in parts {
            push_key_part(&mut key, name, value.as_deref());
        }
        key
    }
}

// ---------------------------------------------------------------------------------------------
// Reuse (RFC 9111 §4)
// ---------------------------------------------------------------------------------------------

/// Whether the stored response described by `meta` may answer this request (RFC 9111 §4,
/// §4.2.4, §5.2.1), given that the URI and [`vary_matches`] already selected it.
/// `only-if-cached` is left to the caller ([`CacheControl::only_if_cached`]): anything but
/// `Fresh`/`StaleAccepted` then becomes a 504.
pub fn request_allows_cached(req_headers: &HeaderMap, meta: &EntryMeta, now: SystemTime) -> Serve {
    let cc = &meta.directives;
    // §3.5: "A shared cache MUST NOT use a cached response to a request with an Authorization
    // header field ... unless" must-revalidate, public or s-maxage.
    if req_headers.contains_key(header::AUTHORIZATION) && !cc.allows_authorized() {
        return Serve::Miss;
    }
    // §5.2.2.4: response no-cache: "the response MUST NOT be used to satisfy any other request
    // without forwarding it for validation and receiving a successful response".
    if cc.no_cache {
        return Serve::MustRevalidate;
    }
    let req = CacheControl::for_request(req_headers);
    // §5.2.1.4: request no-cache: "the client prefers a stored response not be used to satisfy
    // the request without successful validation on the origin server".
    if req.no_cache {
        return Serve::MustRevalidate;
    }
    let age = meta.current_age(now);
    // §5.2.1.1: max-age: "the client prefers a response whose age is less than or equal to the
    // specified number of seconds".
    if let Some(Delta::Secs(max)) = req.max_age {
        if age > max {
            return Serve::MustRevalidate;
        }
    }
    if meta.lifetime > age {
        // §5.2.1.3: min-fresh: "the client prefers a response whose freshness lifetime is no
        // less than its current age plus the specified time in seconds".
        if req.min_fresh.is_some_and(|m| meta.lifetime - age < m) {
            return Serve::MustRevalidate;
        }
        return Serve::Fresh;
    }
    let stale = age - meta.lifetime;
    // §4.2.4 / §5.2.2.2 must-revalidate, §5.2.2.8 proxy-revalidate, §5.2.2.10 s-maxage: once
    // stale, not reused without validation, whatever the request accepts.
    if cc.forbids_stale() {
        return Serve::MustRevalidate;
    }
    // §5.2.1.2: max-stale: "the client will accept a response that has exceeded its freshness
    // lifetime" (by no more than N seconds when N is given).
    match req.max_stale {
        Some(MaxStale::Any) => Serve::StaleAccepted,
        Some(MaxStale::Limit(n)) if stale <= n => Serve::StaleAccepted,
        _ => Serve::Expired,
    }
}

/// Whether a stale (or fresh) stored response may be served for `why`.
///
/// Never when the response forbids it (RFC 9111 §4.2.4: `no-cache`, `must-revalidate`,
/// `proxy-revalidate`, `s-maxage`). Otherwise:
/// - the operator's `use_stale` allows it without a time limit, as in nginx — except `updating`,
///   which never goes beyond a `stale-while-revalidate` window the origin set;
/// - RFC 5861 `stale-while-revalidate=N` allows `Updating` within N seconds of staleness, and
///   `stale-if-error=N` allows `Error`, `Timeout`, `InvalidHeader` and 500/502/503/504 within N
///   seconds, even when `use_stale` is off.
pub fn may_serve_stale(
    meta: &EntryMeta,
    now: SystemTime,
    why: StaleReason,
    cfg: &PolicyConfig,
) -> bool {
    let cc = &meta.directives;
    // §5.2.2.4: a no-cache response is never reused without validation, fresh or not.
    if cc.no_cache {
        return false;
    }
    let Some(stale) = meta.staleness(now) else {
        return true; // still fresh: serving it is not serving stale
    };
    // §4.2.4: "A cache MUST NOT generate a stale response if it is prohibited by an explicit
    // in-protocol directive".
    if cc.forbids_stale() {
        return false;
    }
    let within = |window: Option<Duration>| window.is_some_and(|w| stale <= w);
    match why {
        // RFC 5861 §3: "caches MAY serve the response in which it appears after it becomes
        // stale, up to the indicated number of seconds". The origin's window also caps nginx's
        // `updating`.
        StaleReason::Updating => match cc.stale_while_revalidate {
            Some(w) => stale <= w,
            None => cfg.use_stale.updating,
        },
        // RFC 5861 §4: "when an error is encountered, a cached stale response MAY be used to
        // satisfy the request"; "An error is any situation that would result in a 500, 502,
        // 503, or 504 HTTP response status code being returned."
        StaleReason::Error
        | StaleReason::Timeout
        | StaleReason::InvalidHeader
        | StaleReason::Status(500 | 502 | 503 | 504) => {
            cfg.use_stale.allows(why) || within(cc.stale_if_error)
        }
        StaleReason::Status(_) => cfg.use_stale.allows(why),
    }
}

// ---------------------------------------------------------------------------------------------
// Vary (RFC 9111 §4.1)
// ---------------------------------------------------------------------------------------------

/// RFC 9111 §4.1: the stored response matches when every field named by its `Vary` has the same
/// normalised value in the new request as in the request that stored it ("If (after any
/// normalization that might take place) a header field is absent from a request, it can only
/// match another request if it is also absent there"). `*` never matches.
pub fn vary_matches(meta: &EntryMeta, req_headers: &HeaderMap) -> bool {
    meta.vary.iter().all(|(name, stored)| {
        name.as_str() != "*" && normalised_field(req_headers, name).as_deref() == stored.as_deref()
    })
}

/// The secondary cache key for a request: the `Vary` names (order and duplicates do not matter)
/// with the request's normalised values. Two requests get the same key exactly when
/// [`vary_matches`] would match one against an entry stored for the other.
pub fn secondary_key(vary: &[HeaderName], req_headers: &HeaderMap) -> String {
    let mut names: Vec<&HeaderName> = vary.iter().collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    let mut key = String::new();
    for name in names {
        push_key_part(
            &mut key,
            name,
            normalised_field(req_headers, name).as_deref(),
        );
    }
    key
}

// ---------------------------------------------------------------------------------------------
// Revalidation (RFC 9111 §4.3) and invalidation (§4.4)
// ---------------------------------------------------------------------------------------------

/// Precondition fields for revalidating a stored response (RFC 9111 §4.3.1): `If-None-Match`
/// from its ETag and `If-Modified-Since` from its Last-Modified. Both are sent when both exist,
/// as RFC 9110 §8.9 asks ("SHOULD send both validators in cache validation requests if both an
/// entity tag and a Last-Modified value have been provided"); an origin evaluates
/// If-None-Match first and ignores If-Modified-Since then (RFC 9110 §13.1.3).
pub fn conditional_request_headers(meta: &EntryMeta) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(etag) = &meta.etag {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = &meta.last_modified {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    h
}

/// Whether a 304 answers for this stored response (RFC 9111 §4.3.4): a strong ETag in the 304
/// must strongly match the stored ETag; a weak one must weakly match; without an ETag a
/// Last-Modified in the 304 must equal the stored one. A 304 with no validator at all is taken
/// to answer the conditional request that this entry's own validators produced.
pub fn validator_matches(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    if let Some(new) = valid_etag(not_modified) {
        let Some(old) = valid_etag(stored) else {
            return false;
        };
        let (new_weak, new_tag) = etag_parts(&new);
        let (old_weak, old_tag) = etag_parts(&old);
        // RFC 9110 §8.8.3.2: strong comparison needs both tags strong; weak ignores W/.
        return new_tag == old_tag && (new_weak || !old_weak);
    }
    match (
        not_modified.get(header::LAST_MODIFIED),
        stored.get(header::LAST_MODIFIED),
    ) {
        (Some(new), Some(old)) => trim_ows(new.as_bytes()) == trim_ows(old.as_bytes()),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Fields a 304 does not update: RFC 9111 §3.2 excepts "The Content-Length header field" and
/// lets caches exclude fields "automatically processed" (Content-Range) and ones whose change
/// would break the integrity of the stored content (Content-Encoding describes stored bytes).
fn kept_on_update(name: &HeaderName) -> bool {
    *name == header::CONTENT_LENGTH
        || *name == header::CONTENT_RANGE
        || *name == header::CONTENT_ENCODING
}

/// The stored header fields updated from a 304 (RFC 9111 §4.3.4 → §3.2: "the cache MUST add each
/// header field in the provided response to the stored response, replacing field values that are
/// already present", except those of [`kept_on_update`] and hop-by-hop fields). `Date` and `Age`
/// always come from the 304 (or are absent): they describe the new response, and an old `Age`
/// kept would be counted again. Rebuild the [`EntryMeta`] from the result, after
/// [`storable`] and [`storable_headers`].
pub fn merge_304(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    let mut update = fresh.clone();
    strip_hop_by_hop(&mut update, false);
    let mut out = stored.clone();
    out.remove(header::DATE);
    out.remove(header::AGE);
    for name in update.keys() {
        if kept_on_update(name) {
            continue;
        }
        out.remove(name);
        for v in update.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    strip_hop_by_hop(&mut out, false);
    out
}

/// RFC 9111 §4.4: "A cache MUST invalidate the target URI ... when it receives a non-error
/// status code in response to an unsafe request method (including methods whose safety is
/// unknown)". Non-error means 2xx or 3xx. (The caller may also invalidate the URIs in
/// `Location` and `Content-Location` when they share the origin.)
pub fn invalidates(method: &Method, status: StatusCode) -> bool {
    !method.is_safe() && (status.is_success() || status.is_redirection())
}

// ---------------------------------------------------------------------------------------------
// Fuzzing
// ---------------------------------------------------------------------------------------------

/// Fuzz entry point: bytes 0..4 choose the status, method, timing and configuration; the rest,
/// split on `\n`, are the response's Cache-Control, Expires, Date, Age, Vary, Last-Modified,
/// ETag, CDN-Cache-Control, then the request's Cache-Control and Accept-Encoding. Runs every
/// function and asserts the invariants: no panic; `no-store` (request or applicable response)
/// is never storable; ages and lifetimes stay within range and consistent; a stale response with
/// `must-revalidate` (or another prohibition) is never served; a stored response matches the
/// request that stored it; HTTP-dates round-trip.
pub fn fuzz_policy(data: &[u8]) {
    let knob = |i: usize| data.get(i).copied().unwrap_or(0);
    let mut parts = data.get(4..).unwrap_or(&[]).split(|b| *b == b'\n');
    let mut resp = HeaderMap::new();
    let mut req = HeaderMap::new();
    let resp_fields = [
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::DATE,
        header::AGE,
        header::VARY,
        header::LAST_MODIFIED,
        header::ETAG,
        CDN_CACHE_CONTROL.clone(),
    ];
    for name in resp_fields {
        if let Some(v) = parts.next().and_then(|p| HeaderValue::from_bytes(p).ok()) {
            resp.append(name, v);
        }
    }
    for name in [header::CACHE_CONTROL, header::ACCEPT_ENCODING] {
        if let Some(v) = parts.next().and_then(|p| HeaderValue::from_bytes(p).ok()) {
            req.append(name, v);
        }
    }
    const STATUSES: [u16; 15] = [
        200, 203, 204, 206, 300, 301, 302, 304, 404, 410, 500, 502, 503, 599, 101,
    ];
    let status = StatusCode::from_u16(STATUSES[usize::from(knob(0) % 15)]).unwrap_or_default();
    let method = if knob(1) & 0x80 != 0 {
        Method::POST
    } else {
        Method::GET
    };
    if knob(3) & 0x80 != 0 {
        req.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    }
    let cfg = if knob(0) & 0x80 != 0 {
        PolicyConfig {
            valid: vec![(ValidStatus::Any, Duration::from_secs(60))],
            use_stale: UseStale {
                error: true,
                timeout: true,
                invalid_header: true,
                updating: true,
                statuses: vec![500, 502, 503, 504, 403, 404, 429],
            },
            targeted_field: Some(HeaderName::from_static("muxgate-cache-control")),
            ..PolicyConfig::default()
        }
    } else {
        PolicyConfig::default()
    };

    let request_time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let response_time = request_time + Duration::from_secs(u64::from(knob(1) & 0x7f));
    let now = response_time
        + Duration::from_secs(u64::from(u16::from_be_bytes([knob(2), knob(3) & 0x7f])));

    let req_cc = CacheControl::for_request(&req);
    let resp_cc = CacheControl::for_response(&resp, &cfg);
    let verdict = storable(&method, &req, status, &resp, &cfg);
    if req_cc.no_store || resp_cc.no_store {
        assert!(verdict.is_err(), "no-store stored");
    }
    let stored = storable_headers(&resp, response_time, &cfg);
    let meta = EntryMeta::new(&req, status, &stored, request_time, response_time, &cfg);
    assert!(meta.lifetime <= MAX_DELTA, "lifetime out of range");
    let age = meta.current_age(now);
    assert!(age >= meta.age_value, "age below the Age header");
    assert!(
        meta.current_age(now + Duration::from_secs(10)) >= age,
        "age went backwards"
    );
    assert_eq!(meta.is_fresh(now), meta.staleness(now).is_none());
    assert_eq!(meta.fresh_for(now).is_zero(), !meta.is_fresh(now));

    let serve = request_allows_cached(&req, &meta, now);
    if meta.directives.no_cache {
        assert_ne!(serve, Serve::Fresh, "no-cache served without validation");
    }
    let reasons = [
        StaleReason::Error,
        StaleReason::Timeout,
        StaleReason::InvalidHeader,
        StaleReason::Updating,
        StaleReason::Status(500),
        StaleReason::Status(404),
    ];
    if meta.directives.forbids_stale() && !meta.is_fresh(now) {
        assert!(
            !matches!(serve, Serve::Fresh | Serve::StaleAccepted),
            "must-revalidate served stale"
        );
        for why in reasons {
            assert!(!may_serve_stale(&meta, now, why, &cfg), "stale served");
        }
    } else {
        for why in reasons {
            let _ = may_serve_stale(&meta, now, why, &cfg);
        }
    }

    if verdict.is_ok() {
        assert!(
            vary_matches(&meta, &req),
            "entry does not match its own request"
        );
        let names: Vec<HeaderName> = meta.vary.iter().map(|(n, _)| n.clone()).collect();
        let mut reversed = names.clone();
        reversed.reverse();
        assert_eq!(secondary_key(&names, &req), meta.secondary_key());
        assert_eq!(secondary_key(&reversed, &req), meta.secondary_key());
    }

    let _ = conditional_request_headers(&meta);
    let merged = merge_304(&stored, &resp);
    let _ = validator_matches(&stored, &resp);
    let _ = invalidates(&method, status);
    for name in [header::CONNECTION, header::TRANSFER_ENCODING] {
        assert!(!merged.contains_key(name), "hop-by-hop field kept");
    }

    for name in [header::DATE, header::EXPIRES, header::LAST_MODIFIED] {
        if let Some(t) = resp
            .get(&name)
            .and_then(|v| parse_http_date(v.as_bytes(), now))
        {
            let text = format_http_date(t);
            assert_eq!(parse_http_date(text.as_bytes(), now), Some(t), "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn date(secs: u64) -> String {
        format_http_date(t(secs))
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

    fn cc(value: &str) -> CacheControl {
        CacheControl::for_response(&map(&[("cache-control", value)]), &PolicyConfig::default())
    }

    /// Metadata for a response received at t(0) (request sent at t(0)), with a Date of t(0).
    fn meta_with(resp: &[(&str, &str)], cfg: &PolicyConfig) -> EntryMeta {
        let mut h = map(resp);
        if !h.contains_key("date") {
            h.insert(header::DATE, HeaderValue::from_str(&date(0)).unwrap());
        }
        EntryMeta::new(&HeaderMap::new(), StatusCode::OK, &h, t(0), t(0), cfg)
    }

    fn meta(resp: &[(&str, &str)]) -> EntryMeta {
        meta_with(resp, &PolicyConfig::default())
    }

    fn store(req: &[(&str, &str)], status: u16, resp: &[(&str, &str)]) -> Result<(), NotStorable> {
        storable_cfg(req, status, resp, &PolicyConfig::default())
    }

    fn storable_cfg(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
        cfg: &PolicyConfig,
    ) -> Result<(), NotStorable> {
        storable(
            &Method::GET,
            &map(req),
            StatusCode::from_u16(status).unwrap(),
            &map(resp),
            cfg,
        )
    }

    fn all_stale() -> UseStale {
        UseStale::parse(
            &[
                "error",
                "timeout",
                "invalid_header",
                "updating",
                "http_500",
                "http_502",
                "http_503",
                "http_504",
                "http_403",
                "http_404",
                "http_429",
            ]
            .map(String::from),
        )
        .unwrap()
    }

    // --- §5.2 directive syntax -----------------------------------------------------------

    /// RFC 9111 §5.2: directive names are "compared case-insensitively".
    #[test]
    fn directives_are_case_insensitive_5_2() {
        let c = cc("No-Store, MAX-AGE=5, Must-Revalidate");
        assert!(c.no_store && c.must_revalidate);
        assert_eq!(c.max_age, Some(Delta::Secs(secs(5))));
    }

    /// RFC 9110 §5.3: several field lines form one comma-separated list.
    #[test]
    fn multiple_field_lines_combine_5_2() {
        let h = map(&[("cache-control", "public"), ("cache-control", "max-age=7")]);
        let c = CacheControl::parse(&h, &header::CACHE_CONTROL).unwrap();
        assert!(c.public);
        assert_eq!(c.max_age, Some(Delta::Secs(secs(7))));
        assert_eq!(
            CacheControl::parse(&HeaderMap::new(), &header::CACHE_CONTROL),
            None
        );
    }

    /// RFC 9111 §5.2: "recipients ought to accept both forms" (token and quoted-string).
    #[test]
    fn quoted_max_age_accepted_5_2() {
        assert_eq!(cc("max-age=\"60\"").max_age, Some(Delta::Secs(secs(60))));
        assert_eq!(cc("s-maxage=\"6x\"").s_maxage, Some(Delta::Invalid));
    }

    /// RFC 9111 §1.2.2 delta-seconds is `1*DIGIT`; §4.2.1: invalid freshness means stale.
    #[test]
    fn malformed_max_age_is_invalid_4_2_1() {
        for bad in [
            "max-age=abc",
            "max-age=-1",
            "max-age=+5",
            "max-age=",
            "max-age=1.5",
            "max-age",
            "max-age=5 6",
            "max-age = 5",
        ] {
            assert_eq!(cc(bad).max_age, Some(Delta::Invalid), "{bad}");
            let m = meta(&[("cache-control", bad)]);
            assert_eq!(m.freshness, FreshnessSource::Invalid, "{bad}");
            assert!(!m.is_fresh(t(0)), "{bad}");
        }
    }

    /// RFC 9111 §4.2.1: duplicates: "either the first occurrence should be used or the response
    /// should be considered stale" — different values are stale, equal ones are harmless.
    #[test]
    fn conflicting_duplicate_max_age_is_stale_4_2_1() {
        assert_eq!(cc("max-age=5, max-age=10").max_age, Some(Delta::Invalid));
        assert_eq!(
            cc("max-age=5, max-age=5").max_age,
            Some(Delta::Secs(secs(5)))
        );
        assert_eq!(cc("max-age=5, max-age=x").max_age, Some(Delta::Invalid));
    }

    /// RFC 9111 §1.2.2: overflowing delta-seconds become 2^31.
    #[test]
    fn delta_seconds_overflow_saturates_1_2_2() {
        let c = cc("max-age=99999999999999999999999999");
        assert_eq!(c.max_age, Some(Delta::Secs(MAX_DELTA)));
        let h = map(&[("age", "123456789012345678901234567890")]);
        assert_eq!(age_header(&h), MAX_DELTA);
    }

    /// RFC 9111 §5.2.2.4 / §5.2.2.7: qualified no-cache / private count as unqualified.
    #[test]
    fn qualified_no_cache_and_private_are_unqualified_5_2_2_4() {
        let c = cc("no-cache=\"set-cookie, x-a\", private=\"x-b\", max-age=5");
        assert!(c.no_cache && c.private);
        assert_eq!(c.max_age, Some(Delta::Secs(secs(5))));
    }

    /// RFC 9110 §5.6.4: commas inside a quoted-string do not separate directives.
    #[test]
    fn quoted_comma_does_not_split_5_2() {
        let c = cc("no-cache=\"a, max-age=99\", s-maxage=3");
        assert!(c.no_cache);
        assert_eq!(c.max_age, None);
        assert_eq!(c.s_maxage, Some(Delta::Secs(secs(3))));
    }

    /// RFC 9111 §5.2.2.9: public has no argument; one makes it untrusted. Restrictive
    /// directives count with any argument.
    #[test]
    fn public_with_argument_ignored_5_2_2_9() {
        assert!(!cc("public=yes").public);
        assert!(cc("no-store=1").no_store);
    }

    /// RFC 9111 §5.2.1: request directives and their duplicates.
    #[test]
    fn request_directives_parsed_5_2_1() {
        let h = map(&[(
            "cache-control",
            "max-stale, min-fresh=5, min-fresh=9, only-if-cached, no-cache",
        )]);
        let c = CacheControl::for_request(&h);
        assert_eq!(c.max_stale, Some(MaxStale::Any));
        assert_eq!(c.min_fresh, Some(secs(9)));
        assert!(c.only_if_cached && c.no_cache);
        let c = CacheControl::for_request(&map(&[("cache-control", "max-stale=30, max-stale")]));
        assert_eq!(c.max_stale, Some(MaxStale::Limit(secs(30))));
        let c = CacheControl::for_request(&map(&[("cache-control", "max-stale=x")]));
        assert_eq!(c.max_stale, None);
    }

    /// RFC 5861 §3/§4 windows: smallest duplicate; a malformed one disables the window.
    #[test]
    fn stale_windows_parsed_rfc5861() {
        let c = cc("stale-while-revalidate=30, stale-while-revalidate=10, stale-if-error=60");
        assert_eq!(c.stale_while_revalidate, Some(secs(10)));
        assert_eq!(c.stale_if_error, Some(secs(60)));
        assert_eq!(cc("stale-if-error=1m").stale_if_error, None);
    }

    // --- RFC 9213 targeted fields ----------------------------------------------------------

    /// RFC 9213 §2.2: CDN-Cache-Control takes precedence over Cache-Control for a CDN.
    #[test]
    fn cdn_cache_control_overrides_cache_control_rfc9213_2_2() {
        let resp = [
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600"),
        ];
        assert_eq!(store(&[], 200, &resp), Ok(()));
        assert_eq!(meta(&resp).lifetime, secs(600));
    }

    /// RFC 9213 §2.2: the configured targeted field comes first on the list.
    #[test]
    fn targeted_field_overrides_cdn_rfc9213_2_2() {
        let cfg = PolicyConfig {
            targeted_field: Some(HeaderName::from_static("muxgate-cache-control")),
            ..PolicyConfig::default()
        };
        let resp = [
            ("cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=2"),
            ("muxgate-cache-control", "max-age=3"),
        ];
        assert_eq!(meta_with(&resp, &cfg).lifetime, secs(3));
        assert_eq!(meta(&resp).lifetime, secs(2));
    }

    /// RFC 9213 §2.1/§2.2: a targeted field that is not a valid, non-empty Dictionary is
    /// ignored and the next field is used.
    #[test]
    fn invalid_targeted_field_falls_back_rfc9213_2_1() {
        for bad in ["Max-Age=5", "max-age=5,", "max-age=5 x", "\"x\"", ""] {
            let resp = [("cache-control", "max-age=9"), ("cdn-cache-control", bad)];
            assert_eq!(meta(&resp).lifetime, secs(9), "{bad:?}");
        }
        // "none" is a valid (unknown) directive: Cache-Control is then ignored.
        let resp = [("cache-control", "no-store"), ("cdn-cache-control", "none")];
        assert!(!CacheControl::for_response(&map(&resp), &PolicyConfig::default()).no_store);
    }

    /// RFC 9213 §2.1: targeted fields are Structured Fields: `?0` is false, a String is not an
    /// Integer, a duplicate key overwrites, parameters are ignored.
    #[test]
    fn targeted_field_structured_values_rfc9213_2_1() {
        let parse = |v: &str| {
            CacheControl::parse(&map(&[("cdn-cache-control", v)]), &CDN_CACHE_CONTROL).unwrap()
        };
        assert!(!parse("no-store=?0").no_store);
        assert!(parse("no-store=?1").no_store);
        assert_eq!(parse("max-age=\"60\"").max_age, Some(Delta::Invalid));
        assert_eq!(parse("max-age=1.5").max_age, Some(Delta::Invalid));
        assert_eq!(
            parse("max-age=5, max-age=10").max_age,
            Some(Delta::Secs(secs(10)))
        );
        assert_eq!(
            parse("max-age=5;a=1, public").max_age,
            Some(Delta::Secs(secs(5)))
        );
        assert!(parse("no-cache=(\"a\" \"b\")").no_cache);
    }

    /// RFC 9213 §2.2: with a targeted field, Expires is ignored as well.
    #[test]
    fn targeted_field_ignores_expires_rfc9213_2_2() {
        let resp = [
            ("cdn-cache-control", "public"),
            ("expires", "0"),
            ("last-modified", &date(0)),
        ];
        let m = meta(&resp);
        assert_ne!(m.freshness, FreshnessSource::Invalid);
    }

    // --- HTTP-date, Expires, Age ----------------------------------------------------------

    /// RFC 9110 §5.6.7: IMF-fixdate.
    #[test]
    fn http_date_imf_fixdate_5_6_7() {
        let d = parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT", t(0)).unwrap();
        assert_eq!(d, UNIX_EPOCH + secs(784_111_777));
        assert_eq!(format_http_date(d), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    /// RFC 9110 §5.6.7: obsolete RFC 850 date, two-digit year resolved against now.
    #[test]
    fn http_date_rfc850_two_digit_year_5_6_7() {
        let d = parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT", t(0)).unwrap();
        assert_eq!(d, UNIX_EPOCH + secs(784_111_777));
        // In 2023, "30" is 2030 (7 years ahead), not 1930.
        let d = parse_http_date(b"Monday, 01-Jan-30 00:00:00 GMT", t(0)).unwrap();
        assert_eq!(format_http_date(d), "Tue, 01 Jan 2030 00:00:00 GMT");
        // "80" would be 2080 (> 50 years ahead): 1980.
        let d = parse_http_date(b"Tuesday, 01-Jan-80 00:00:00 GMT", t(0)).unwrap();
        assert_eq!(format_http_date(d), "Tue, 01 Jan 1980 00:00:00 GMT");
    }

    /// RFC 9110 §5.6.7: obsolete asctime date.
    #[test]
    fn http_date_asctime_5_6_7() {
        let d = parse_http_date(b"Sun Nov  6 08:49:37 1994", t(0)).unwrap();
        assert_eq!(d, UNIX_EPOCH + secs(784_111_777));
    }

    /// RFC 9110 §5.6.7: case-sensitive names, exact layout, valid ranges, matching day name.
    #[test]
    fn http_date_strict_5_6_7() {
        for bad in [
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong day name
            "sun, 06 Nov 1994 08:49:37 GMT", // case
            "Sun, 06 Nov 1994 08:49:37 UTC", // zone
            "Sun, 6 Nov 1994 08:49:37 GMT",  // layout
            "Sun, 31 Nov 1994 08:49:37 GMT", // day range
            "Sun, 06 Nov 1994 24:00:00 GMT", // hour range
            "0",
            "-1",
            "1994-11-06T08:49:37Z",
            "",
        ] {
            assert_eq!(parse_http_date(bad.as_bytes(), t(0)), None, "{bad:?}");
        }
        // Surrounding OWS is not part of a field value.
        assert!(parse_http_date(b" Sun, 06 Nov 1994 08:49:37 GMT ", t(0)).is_some());
        // Leap second 60 is allowed.
        assert!(parse_http_date(b"Sat, 31 Dec 2016 23:59:60 GMT", t(0)).is_some());
        assert!(parse_http_date(b"Thu, 29 Feb 2024 00:00:00 GMT", t(0)).is_some());
        assert!(parse_http_date(b"Sat, 29 Feb 2023 00:00:00 GMT", t(0)).is_none());
    }

    /// Formatting and parsing round-trip across the range (RFC 9110 §5.6.7 IMF-fixdate).
    #[test]
    fn http_date_round_trip_5_6_7() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = UNIX_EPOCH + secs(x % 253_402_300_799); // up to 9999-12-31
            let text = format_http_date(at);
            assert_eq!(parse_http_date(text.as_bytes(), t(0)), Some(at), "{text}");
        }
        let before = UNIX_EPOCH - secs(86_400 * 365);
        assert_eq!(format_http_date(before), "Wed, 01 Jan 1969 00:00:00 GMT");
        assert_eq!(
            parse_http_date(b"Wed, 01 Jan 1969 00:00:00 GMT", t(0)),
            Some(before)
        );
    }

    /// RFC 9111 §5.3: an invalid Expires ("0") means already expired.
    #[test]
    fn invalid_expires_means_expired_5_3() {
        let m = meta(&[("expires", "0")]);
        assert_eq!(m.lifetime, Duration::ZERO);
        assert_eq!(m.freshness, FreshnessSource::Invalid);
        assert_eq!(
            store(&[], 200, &[("expires", "0"), ("etag", "\"a\"")]),
            Ok(())
        );
    }

    /// RFC 9111 §4.2.1/§5.3: several Expires values are treated as expired.
    #[test]
    fn multiple_expires_means_expired_5_3() {
        let m = meta(&[("expires", &date(100)), ("expires", &date(200))]);
        assert_eq!(m.freshness, FreshnessSource::Invalid);
        assert!(!m.is_fresh(t(0)));
    }

    /// RFC 9111 §5.1: Age is a non-negative integer; otherwise ignored; first list member used.
    #[test]
    fn age_header_non_negative_integer_5_1() {
        for (v, want) in [
            ("10", 10),
            ("-5", 0),
            ("1.5", 0),
            ("x", 0),
            ("7, 9", 7),
            (" 8 ", 8),
        ] {
            assert_eq!(age_header(&map(&[("age", v)])), secs(want), "{v:?}");
        }
    }

    // --- §3 storability -------------------------------------------------------------------

    /// RFC 9111 §3: only understood methods; we store GET only, HEAD responses are not stored.
    #[test]
    fn only_get_is_stored_3() {
        let resp = map(&[("cache-control", "max-age=60")]);
        for (m, want) in [
            (Method::GET, Ok(())),
            (Method::HEAD, Err(NotStorable::Method)),
            (Method::POST, Err(NotStorable::Method)),
        ] {
            let got = storable(
                &m,
                &HeaderMap::new(),
                StatusCode::OK,
                &resp,
                &PolicyConfig::default(),
            );
            assert_eq!(got, want, "{m}");
        }
    }

    /// RFC 9111 §3 and §5.2.2.5: response no-store is never stored.
    #[test]
    fn response_no_store_not_stored_5_2_2_5() {
        let r = store(
            &[],
            200,
            &[("cache-control", "no-store, max-age=60, public")],
        );
        assert_eq!(r, Err(NotStorable::NoStore));
    }

    /// RFC 9111 §5.2.1.5: request no-store forbids storing the response.
    #[test]
    fn request_no_store_not_stored_5_2_1_5() {
        let r = store(
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")],
        );
        assert_eq!(r, Err(NotStorable::RequestNoStore));
    }

    /// RFC 9111 §3 / §5.2.2.7: a shared cache does not store private responses.
    #[test]
    fn private_not_stored_in_shared_cache_5_2_2_7() {
        let r = store(&[], 200, &[("cache-control", "private, max-age=60")]);
        assert_eq!(r, Err(NotStorable::Private));
    }

    /// RFC 9111 §3.5: Authorization requests only with must-revalidate, public or s-maxage.
    #[test]
    fn authorization_needs_explicit_permission_3_5() {
        let auth = [("authorization", "Bearer t")];
        let r = store(&auth, 200, &[("cache-control", "max-age=60")]);
        assert_eq!(r, Err(NotStorable::Authorization));
        for ok in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            assert_eq!(store(&auth, 200, &[("cache-control", ok)]), Ok(()), "{ok}");
        }
    }

    /// nginx proxy_ignore_headers: Set-Cookie blocks storing unless ignored.
    #[test]
    fn set_cookie_not_stored_unless_ignored() {
        let resp = [("cache-control", "max-age=60"), ("set-cookie", "s=1")];
        assert_eq!(store(&[], 200, &resp), Err(NotStorable::SetCookie));
        let cfg = PolicyConfig {
            ignore_headers: parse_ignore_headers(&["Set-Cookie".into()]).unwrap(),
            ..PolicyConfig::default()
        };
        assert_eq!(storable_cfg(&[], 200, &resp, &cfg), Ok(()));
        let kept = storable_headers(&map(&resp), t(0), &cfg);
        assert!(!kept.contains_key(header::SET_COOKIE));
    }

    /// RFC 9111 §4.1: `Vary: *` always fails to match, so it is not stored.
    #[test]
    fn vary_star_not_stored_4_1() {
        for v in ["*", "accept-encoding, *", "bad name"] {
            let r = store(&[], 200, &[("cache-control", "max-age=60"), ("vary", v)]);
            assert_eq!(r, Err(NotStorable::Vary), "{v}");
        }
        let m = meta(&[("cache-control", "max-age=60"), ("vary", "*")]);
        assert!(!vary_matches(&m, &HeaderMap::new()));
    }

    /// RFC 9111 §3: final statuses only; 206 and 304 are not stored.
    #[test]
    fn non_final_partial_and_304_not_stored_3() {
        for s in [100, 101, 206, 304] {
            let r = store(&[], s, &[("cache-control", "max-age=60")]);
            assert_eq!(r, Err(NotStorable::Status), "{s}");
        }
    }

    /// RFC 9111 §5.2.2.3: must-understand limits storing to understood statuses.
    #[test]
    fn must_understand_needs_known_status_5_2_2_3() {
        let resp = [("cache-control", "must-understand, max-age=60")];
        assert_eq!(store(&[], 200, &resp), Ok(()));
        assert_eq!(store(&[], 299, &resp), Err(NotStorable::Status));
        // no-store still wins (the SHOULD to ignore it is not taken).
        let resp = [("cache-control", "must-understand, no-store, max-age=60")];
        assert_eq!(store(&[], 200, &resp), Err(NotStorable::NoStore));
    }

    /// RFC 9111 §3: explicit freshness, a heuristically cacheable status (with a validator or
    /// Last-Modified), or a configured lifetime is needed.
    #[test]
    fn storing_needs_freshness_or_heuristic_3() {
        let lm = date(0);
        assert_eq!(store(&[], 200, &[]), Err(NotStorable::NoFreshness));
        assert_eq!(store(&[], 200, &[("last-modified", &lm)]), Ok(()));
        assert_eq!(store(&[], 200, &[("etag", "\"v1\"")]), Ok(()));
        assert_eq!(
            store(
                &[],
                200,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")]
            ),
            Ok(())
        );
        assert_eq!(
            store(&[], 500, &[("last-modified", &lm)]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&[], 302, &[("etag", "\"v1\"")]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(store(&[], 302, &[("cache-control", "max-age=5")]), Ok(()));
        assert_eq!(store(&[], 500, &[("cache-control", "public")]), Ok(()));
        let cfg = PolicyConfig {
            valid: vec![(ValidStatus::parse("any").unwrap(), secs(60))],
            ..PolicyConfig::default()
        };
        assert_eq!(storable_cfg(&[], 500, &[], &cfg), Ok(()));
    }

    /// nginx proxy_ignore_headers Cache-Control: its directives (no-store included) are ignored.
    #[test]
    fn ignored_cache_control_is_not_read() {
        let cfg = PolicyConfig {
            ignore_headers: parse_ignore_headers(&["cache-control".into()]).unwrap(),
            valid: vec![(ValidStatus::Status(StatusCode::OK), secs(30))],
            ..PolicyConfig::default()
        };
        let resp = [("cache-control", "no-store, max-age=5")];
        assert_eq!(storable_cfg(&[], 200, &resp, &cfg), Ok(()));
        let m = meta_with(&resp, &cfg);
        assert_eq!(
            (m.lifetime, m.freshness),
            (secs(30), FreshnessSource::Configured)
        );
        assert!(parse_ignore_headers(&["X-Accel-Expires".into()]).is_err());
    }

    // --- §4.2 freshness -------------------------------------------------------------------

    /// RFC 9111 §4.2.1: s-maxage wins over max-age in a shared cache.
    #[test]
    fn s_maxage_over_max_age_4_2_1() {
        let m = meta(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(
            (m.lifetime, m.freshness),
            (secs(20), FreshnessSource::SMaxAge)
        );
    }

    /// RFC 9111 §4.2.1: max-age wins over Expires, even an invalid one.
    #[test]
    fn max_age_over_expires_4_2_1() {
        let m = meta(&[("cache-control", "max-age=10"), ("expires", "0")]);
        assert_eq!(
            (m.lifetime, m.freshness),
            (secs(10), FreshnessSource::MaxAge)
        );
    }

    /// RFC 9111 §4.2.1: Expires − Date, with the receipt time when Date is absent.
    #[test]
    fn expires_minus_date_4_2_1() {
        let m = meta(&[("expires", &date(300)), ("date", &date(100))]);
        assert_eq!(
            (m.lifetime, m.freshness),
            (secs(200), FreshnessSource::Expires)
        );
        let h = map(&[("expires", &date(300))]);
        let m = EntryMeta::new(
            &HeaderMap::new(),
            StatusCode::OK,
            &h,
            t(0),
            t(50),
            &PolicyConfig::default(),
        );
        assert_eq!(m.lifetime, secs(250));
        let m = meta(&[("expires", &date(0)), ("date", &date(100))]);
        assert_eq!(m.lifetime, Duration::ZERO);
    }

    /// RFC 9111 §4.2.2: heuristic = 10 % of Date − Last-Modified, capped.
    #[test]
    fn heuristic_ten_percent_capped_4_2_2() {
        let m = meta(&[("last-modified", &date(0)), ("date", &date(1000))]);
        assert_eq!(
            (m.lifetime, m.freshness),
            (secs(100), FreshnessSource::Heuristic)
        );
        let cfg = PolicyConfig {
            heuristic_max: secs(30),
            ..PolicyConfig::default()
        };
        let m = meta_with(&[("last-modified", &date(0)), ("date", &date(1000))], &cfg);
        assert_eq!(m.lifetime, secs(30));
        // Last-Modified in the future of Date: zero, not negative.
        let m = meta(&[("last-modified", &date(5000)), ("date", &date(1000))]);
        assert_eq!(m.lifetime, Duration::ZERO);
    }

    /// RFC 9111 §4.2.2: heuristics only for heuristically cacheable statuses or `public`.
    #[test]
    fn heuristic_needs_cacheable_status_or_public_4_2_2() {
        let cfg = PolicyConfig::default();
        let h = map(&[("last-modified", &date(0)), ("date", &date(1000))]);
        let m = EntryMeta::new(&HeaderMap::new(), StatusCode::FOUND, &h, t(0), t(0), &cfg);
        assert_eq!(m.freshness, FreshnessSource::None);
        let mut h = h;
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public"));
        let m = EntryMeta::new(&HeaderMap::new(), StatusCode::FOUND, &h, t(0), t(0), &cfg);
        assert_eq!(
            (m.lifetime, m.freshness),
            (secs(100), FreshnessSource::Heuristic)
        );
    }

    /// nginx proxy_cache_valid: only without explicit freshness; before the heuristic; first
    /// matching rule wins; zero means no lifetime.
    #[test]
    fn valid_applies_without_explicit_freshness() {
        let cfg = PolicyConfig {
            valid: vec![
                (ValidStatus::parse("404").unwrap(), Duration::ZERO),
                (ValidStatus::parse("200").unwrap(), secs(60)),
                (ValidStatus::parse("any").unwrap(), secs(5)),
            ],
            ..PolicyConfig::default()
        };
        let m = meta_with(&[("cache-control", "max-age=10")], &cfg);
        assert_eq!(m.lifetime, secs(10));
        let m = meta_with(
            &[("last-modified", &date(0)), ("date", &date(100_000))],
            &cfg,
        );
        assert_eq!(
            (m.lifetime, m.freshness),
            (secs(60), FreshnessSource::Configured)
        );
        assert_eq!(cfg.valid_for(StatusCode::NOT_FOUND), None);
        assert_eq!(cfg.valid_for(StatusCode::BAD_GATEWAY), Some(secs(5)));
    }

    /// ValidStatus accepts "any" and final codes only.
    #[test]
    fn valid_status_parse() {
        assert_eq!(ValidStatus::parse("any"), Ok(ValidStatus::Any));
        assert_eq!(
            ValidStatus::parse("301"),
            Ok(ValidStatus::Status(StatusCode::MOVED_PERMANENTLY))
        );
        for bad in ["ANY", "99", "100", "600", "2OO", "+200", ""] {
            assert!(ValidStatus::parse(bad).is_err(), "{bad}");
        }
    }

    /// RFC 9111 §4.2.3: apparent age vs corrected Age + response delay, plus resident time.
    #[test]
    fn current_age_calculation_4_2_3() {
        let cfg = PolicyConfig::default();
        // Date 30 s before receipt, no Age: apparent age 30 wins over delay 2.
        let h = map(&[("date", &date(8)), ("cache-control", "max-age=100")]);
        let m = EntryMeta::new(&HeaderMap::new(), StatusCode::OK, &h, t(36), t(38), &cfg);
        assert_eq!(m.current_age(t(38)), secs(30));
        assert_eq!(m.current_age(t(48)), secs(40));
        // Age 50 + response delay 2 beats apparent age 0.
        let h = map(&[
            ("date", &date(38)),
            ("age", "50"),
            ("cache-control", "max-age=100"),
        ]);
        let m = EntryMeta::new(&HeaderMap::new(), StatusCode::OK, &h, t(36), t(38), &cfg);
        assert_eq!(m.current_age(t(38)), secs(52));
        // A clock earlier than the response: no negative resident time.
        assert_eq!(m.current_age(t(0)), secs(52));
        // Date in the future: apparent age is zero, not negative.
        let h = map(&[("date", &date(1000))]);
        let m = EntryMeta::new(&HeaderMap::new(), StatusCode::OK, &h, t(0), t(0), &cfg);
        assert_eq!(m.current_age(t(0)), Duration::ZERO);
    }

    /// RFC 9111 §4.2: fresh while lifetime > current age; staleness after.
    #[test]
    fn freshness_and_staleness_4_2() {
        let m = meta(&[("cache-control", "max-age=10")]);
        assert!(m.is_fresh(t(9)));
        assert_eq!(m.staleness(t(9)), None);
        assert_eq!(m.fresh_for(t(4)), secs(6));
        assert!(!m.is_fresh(t(10)));
        assert_eq!(m.staleness(t(10)), Some(Duration::ZERO));
        assert_eq!(m.staleness(t(25)), Some(secs(15)));
    }

    // --- §4 reuse -------------------------------------------------------------------------

    fn serve(req: &[(&str, &str)], m: &EntryMeta, at: u64) -> Serve {
        request_allows_cached(&map(req), m, t(at))
    }

    /// RFC 9111 §4.2: a fresh response is reused; a stale one must be revalidated.
    #[test]
    fn fresh_served_stale_expired_4_2() {
        let m = meta(&[("cache-control", "max-age=10")]);
        assert_eq!(serve(&[], &m, 5), Serve::Fresh);
        assert_eq!(serve(&[], &m, 15), Serve::Expired);
    }

    /// RFC 9111 §5.2.1.4: request no-cache forces validation.
    #[test]
    fn request_no_cache_revalidates_5_2_1_4() {
        let m = meta(&[("cache-control", "max-age=100")]);
        assert_eq!(
            serve(&[("cache-control", "no-cache")], &m, 1),
            Serve::MustRevalidate
        );
    }

    /// RFC 9111 §5.2.1.1: request max-age limits the acceptable age.
    #[test]
    fn request_max_age_5_2_1_1() {
        let m = meta(&[("cache-control", "max-age=100")]);
        assert_eq!(
            serve(&[("cache-control", "max-age=10")], &m, 10),
            Serve::Fresh
        );
        assert_eq!(
            serve(&[("cache-control", "max-age=10")], &m, 11),
            Serve::MustRevalidate
        );
        assert_eq!(
            serve(&[("cache-control", "max-age=0")], &m, 1),
            Serve::MustRevalidate
        );
        // Malformed request values are ignored.
        assert_eq!(
            serve(&[("cache-control", "max-age=x")], &m, 50),
            Serve::Fresh
        );
    }

    /// RFC 9111 §5.2.1.3: min-fresh wants remaining freshness of at least N.
    #[test]
    fn request_min_fresh_5_2_1_3() {
        let m = meta(&[("cache-control", "max-age=100")]);
        assert_eq!(
            serve(&[("cache-control", "min-fresh=20")], &m, 80),
            Serve::Fresh
        );
        assert_eq!(
            serve(&[("cache-control", "min-fresh=20")], &m, 81),
            Serve::MustRevalidate
        );
    }

    /// RFC 9111 §5.2.1.2: max-stale accepts staleness (within N when given).
    #[test]
    fn request_max_stale_5_2_1_2() {
        let m = meta(&[("cache-control", "max-age=10")]);
        assert_eq!(
            serve(&[("cache-control", "max-stale")], &m, 1000),
            Serve::StaleAccepted
        );
        assert_eq!(
            serve(&[("cache-control", "max-stale=5")], &m, 15),
            Serve::StaleAccepted
        );
        assert_eq!(
            serve(&[("cache-control", "max-stale=5")], &m, 16),
            Serve::Expired
        );
    }

    /// RFC 9111 §5.2.2.4: a no-cache response is always revalidated.
    #[test]
    fn response_no_cache_always_revalidates_5_2_2_4() {
        let m = meta(&[("cache-control", "no-cache, max-age=100")]);
        assert_eq!(serve(&[], &m, 1), Serve::MustRevalidate);
        assert_eq!(
            serve(&[("cache-control", "max-stale")], &m, 1),
            Serve::MustRevalidate
        );
    }

    /// RFC 9111 §5.2.2.2 / §5.2.2.8 / §5.2.2.10: once stale, must-revalidate, proxy-revalidate
    /// and s-maxage override the request's max-stale.
    #[test]
    fn must_revalidate_overrides_max_stale_5_2_2_2() {
        for d in [
            "must-revalidate, max-age=10",
            "proxy-revalidate, max-age=10",
            "s-maxage=10",
        ] {
            let m = meta(&[("cache-control", d)]);
            assert_eq!(
                serve(&[("cache-control", "max-stale")], &m, 5),
                Serve::Fresh,
                "{d}"
            );
            assert_eq!(
                serve(&[("cache-control", "max-stale")], &m, 20),
                Serve::MustRevalidate,
                "{d}"
            );
        }
    }

    /// RFC 9111 §3.5: an entry without public/s-maxage/must-revalidate cannot answer a request
    /// with Authorization.
    #[test]
    fn authorization_request_misses_plain_entry_3_5() {
        let auth = [("authorization", "Basic eA==")];
        let m = meta(&[("cache-control", "max-age=100")]);
        assert_eq!(serve(&auth, &m, 1), Serve::Miss);
        let m = meta(&[("cache-control", "public, max-age=100")]);
        assert_eq!(serve(&auth, &m, 1), Serve::Fresh);
    }

    // --- stale serving ---------------------------------------------------------------------

    /// nginx proxy_cache_use_stale words, exactly.
    #[test]
    fn use_stale_parse_nginx_words() {
        let u = all_stale();
        assert!(u.error && u.timeout && u.invalid_header && u.updating);
        assert_eq!(u.statuses, vec![500, 502, 503, 504, 403, 404, 429]);
        assert_eq!(UseStale::parse(&["off".into()]), Ok(UseStale::default()));
        assert_eq!(UseStale::parse(&[]), Ok(UseStale::default()));
        assert!(UseStale::parse(&["off".into(), "error".into()]).is_err());
        for bad in ["http_501", "Error", "stale", "http_200"] {
            assert!(UseStale::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    /// nginx use_stale: the operator's opt-in applies without a time limit.
    #[test]
    fn use_stale_config_allows_stale() {
        let cfg = PolicyConfig {
            use_stale: UseStale::parse(&["error".into(), "http_404".into()]).unwrap(),
            ..PolicyConfig::default()
        };
        let m = meta(&[("cache-control", "max-age=10")]);
        assert!(may_serve_stale(&m, t(100_000), StaleReason::Error, &cfg));
        assert!(may_serve_stale(
            &m,
            t(100_000),
            StaleReason::Status(404),
            &cfg
        ));
        assert!(!may_serve_stale(&m, t(100_000), StaleReason::Timeout, &cfg));
        assert!(!may_serve_stale(
            &m,
            t(100_000),
            StaleReason::Status(500),
            &cfg
        ));
        assert!(!may_serve_stale(
            &m,
            t(100_000),
            StaleReason::Updating,
            &cfg
        ));
        // Fresh: always servable.
        assert!(may_serve_stale(
            &m,
            t(1),
            StaleReason::Timeout,
            &PolicyConfig::default()
        ));
    }

    /// RFC 9111 §4.2.4: no stale response when must-revalidate, proxy-revalidate, s-maxage or
    /// no-cache forbid it, whatever the configuration and RFC 5861 windows say.
    #[test]
    fn stale_forbidden_by_directives_4_2_4() {
        let cfg = PolicyConfig {
            use_stale: all_stale(),
            ..PolicyConfig::default()
        };
        for d in [
            "must-revalidate, max-age=10, stale-if-error=600, stale-while-revalidate=600",
            "proxy-revalidate, max-age=10, stale-if-error=600",
            "s-maxage=10, stale-while-revalidate=600",
            "no-cache, max-age=10, stale-if-error=600",
        ] {
            let m = meta(&[("cache-control", d)]);
            for why in [
                StaleReason::Error,
                StaleReason::Timeout,
                StaleReason::InvalidHeader,
                StaleReason::Updating,
                StaleReason::Status(503),
            ] {
                assert!(!may_serve_stale(&m, t(20), why, &cfg), "{d} {why:?}");
            }
        }
    }

    /// RFC 5861 §3: stale-while-revalidate honoured without configuration, within its window;
    /// it also caps nginx's `updating`.
    #[test]
    fn stale_while_revalidate_window_rfc5861_3() {
        let off = PolicyConfig::default();
        let on = PolicyConfig {
            use_stale: all_stale(),
            ..PolicyConfig::default()
        };
        let m = meta(&[("cache-control", "max-age=10, stale-while-revalidate=30")]);
        assert!(may_serve_stale(&m, t(40), StaleReason::Updating, &off));
        assert!(!may_serve_stale(&m, t(41), StaleReason::Updating, &off));
        assert!(!may_serve_stale(&m, t(41), StaleReason::Updating, &on));
        // swr says nothing about errors.
        assert!(!may_serve_stale(&m, t(20), StaleReason::Error, &off));
        // Without an origin window, `updating` is unbounded.
        let m = meta(&[("cache-control", "max-age=10")]);
        assert!(may_serve_stale(&m, t(100_000), StaleReason::Updating, &on));
    }

    /// RFC 5861 §4: stale-if-error covers errors, timeouts, invalid headers and 500/502/503/504
    /// within its window, without configuration.
    #[test]
    fn stale_if_error_window_rfc5861_4() {
        let off = PolicyConfig::default();
        let m = meta(&[("cache-control", "max-age=10, stale-if-error=60")]);
        for why in [
            StaleReason::Error,
            StaleReason::Timeout,
            StaleReason::InvalidHeader,
            StaleReason::Status(500),
            StaleReason::Status(502),
            StaleReason::Status(503),
            StaleReason::Status(504),
        ] {
            assert!(may_serve_stale(&m, t(70), why, &off), "{why:?}");
            assert!(!may_serve_stale(&m, t(71), why, &off), "{why:?}");
        }
        assert!(!may_serve_stale(&m, t(20), StaleReason::Status(404), &off));
        assert!(!may_serve_stale(&m, t(20), StaleReason::Updating, &off));
    }

    // --- §4.1 Vary -------------------------------------------------------------------------

    fn vary_meta(vary: &str, req: &[(&str, &str)]) -> EntryMeta {
        let resp = map(&[("cache-control", "max-age=60"), ("vary", vary)]);
        EntryMeta::new(
            &map(req),
            StatusCode::OK,
            &resp,
            t(0),
            t(0),
            &PolicyConfig::default(),
        )
    }

    /// RFC 9111 §4.1: whitespace, line combination and case (for case-insensitive fields) are
    /// normalised before comparing.
    #[test]
    fn vary_normalises_values_4_1() {
        let m = vary_meta("Accept-Encoding", &[("accept-encoding", "gzip,  BR")]);
        assert!(vary_matches(
            &m,
            &map(&[("accept-encoding", " gzip , br ")])
        ));
        assert!(vary_matches(
            &m,
            &map(&[("accept-encoding", "gzip"), ("accept-encoding", "br")])
        ));
        assert!(!vary_matches(&m, &map(&[("accept-encoding", "br, gzip")])));
        assert!(!vary_matches(&m, &map(&[("accept-encoding", "gzip")])));
    }

    /// RFC 9111 §4.1: values of other fields keep their case; whitespace still collapses.
    #[test]
    fn vary_case_sensitive_fields_keep_case_4_1() {
        let m = vary_meta("x-variant", &[("x-variant", "Blue  sky")]);
        assert!(vary_matches(&m, &map(&[("x-variant", "Blue sky")])));
        assert!(!vary_matches(&m, &map(&[("x-variant", "blue sky")])));
    }

    /// RFC 9111 §4.1: an absent field only matches an absent field (not an empty one).
    #[test]
    fn vary_absent_matches_only_absent_4_1() {
        let m = vary_meta("accept-language", &[]);
        assert!(vary_matches(&m, &HeaderMap::new()));
        assert!(!vary_matches(&m, &map(&[("accept-language", "")])));
        let m = vary_meta("accept-language", &[("accept-language", "")]);
        assert!(!vary_matches(&m, &HeaderMap::new()));
    }

    /// RFC 9111 §4.1: the secondary key ignores name order and duplicates, and separates
    /// absent, empty and different values.
    #[test]
    fn secondary_key_order_independent_4_1() {
        let a = HeaderName::from_static("accept-encoding");
        let b = HeaderName::from_static("x-b");
        let req = map(&[("accept-encoding", "GZIP"), ("x-b", "1")]);
        let k1 = secondary_key(&[a.clone(), b.clone()], &req);
        assert_eq!(k1, secondary_key(&[b.clone(), a.clone(), b.clone()], &req));
        let m = vary_meta(
            "x-b, Accept-Encoding",
            &[("accept-encoding", "gzip"), ("x-b", "1")],
        );
        assert_eq!(m.secondary_key(), k1);
        let empty = secondary_key(std::slice::from_ref(&b), &map(&[("x-b", "")]));
        let absent = secondary_key(std::slice::from_ref(&b), &HeaderMap::new());
        assert_ne!(empty, absent);
        assert_eq!(secondary_key(&[], &req), "");
    }

    /// nginx proxy_ignore_headers Vary: the response is stored without variants.
    #[test]
    fn ignored_vary_is_not_used() {
        let cfg = PolicyConfig {
            ignore_headers: parse_ignore_headers(&["Vary".into()]).unwrap(),
            ..PolicyConfig::default()
        };
        let resp = [("cache-control", "max-age=60"), ("vary", "*")];
        assert_eq!(storable_cfg(&[], 200, &resp, &cfg), Ok(()));
        assert!(meta_with(&resp, &cfg).vary.is_empty());
    }

    // --- §4.3 revalidation, §4.4 invalidation ---------------------------------------------

    /// RFC 9111 §4.3.1 with RFC 9110 §8.9: If-None-Match from ETag, If-Modified-Since from
    /// Last-Modified; malformed validators are not used.
    #[test]
    fn conditional_request_from_validators_4_3_1() {
        let lm = date(0);
        let m = meta(&[("etag", "W/\"v1\""), ("last-modified", &lm)]);
        let h = conditional_request_headers(&m);
        assert_eq!(h[header::IF_NONE_MATCH], "W/\"v1\"");
        assert_eq!(h[header::IF_MODIFIED_SINCE], lm.as_str());
        let m = meta(&[("etag", "v1"), ("last-modified", "yesterday")]);
        assert!(conditional_request_headers(&m).is_empty());
    }

    /// RFC 9111 §4.3.4 → §3.2: a 304 replaces stored fields except Content-Length and the like;
    /// hop-by-hop fields are dropped; Date and Age come from the 304.
    #[test]
    fn merge_304_updates_stored_fields_4_3_4() {
        let stored = map(&[
            ("content-length", "1234"),
            ("content-type", "text/html"),
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("x-old", "kept"),
            ("date", &date(0)),
            ("age", "100"),
            ("x-multi", "a"),
        ]);
        let fresh = map(&[
            ("content-length", "0"),
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("date", &date(500)),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("x-multi", "b"),
            ("x-multi", "c"),
        ]);
        let out = merge_304(&stored, &fresh);
        assert_eq!(out["content-length"], "1234");
        assert_eq!(out["cache-control"], "max-age=60");
        assert_eq!(out["x-old"], "kept");
        assert_eq!(out["date"], date(500).as_str());
        assert!(!out.contains_key("age"));
        assert!(!out.contains_key("connection") && !out.contains_key("x-hop"));
        let multi: Vec<_> = out.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["b", "c"]);
    }

    /// RFC 9111 §4.3.4: which stored response a 304 updates (strong/weak ETag, Last-Modified).
    #[test]
    fn validator_selects_stored_response_4_3_4() {
        let stored = map(&[("etag", "\"v1\""), ("last-modified", &date(0))]);
        assert!(validator_matches(&stored, &map(&[("etag", "\"v1\"")])));
        assert!(validator_matches(&stored, &map(&[("etag", "W/\"v1\"")])));
        assert!(!validator_matches(&stored, &map(&[("etag", "\"v2\"")])));
        let weak = map(&[("etag", "W/\"v1\"")]);
        assert!(!validator_matches(&weak, &map(&[("etag", "\"v1\"")])));
        assert!(validator_matches(&weak, &map(&[("etag", "W/\"v1\"")])));
        assert!(validator_matches(
            &stored,
            &map(&[("last-modified", &date(0))])
        ));
        assert!(!validator_matches(
            &stored,
            &map(&[("last-modified", &date(1))])
        ));
        assert!(validator_matches(&stored, &HeaderMap::new()));
    }

    /// RFC 9110 §6.6.1 / RFC 9111 §3.1: stored headers get a Date and lose hop-by-hop fields.
    #[test]
    fn storable_headers_add_date_drop_hop_by_hop_3_1() {
        let h = map(&[
            ("connection", "x-a"),
            ("x-a", "1"),
            ("keep-alive", "5"),
            ("x-b", "2"),
        ]);
        let out = storable_headers(&h, t(7), &PolicyConfig::default());
        assert_eq!(out["date"], date(7).as_str());
        assert_eq!(out["x-b"], "2");
        assert!(!out.contains_key("x-a") && !out.contains_key("keep-alive"));
        let dated = map(&[("date", &date(1))]);
        assert_eq!(
            storable_headers(&dated, t(7), &PolicyConfig::default())["date"],
            date(1).as_str()
        );
    }

    /// RFC 9111 §4.4: unsafe (or unknown) methods with 2xx/3xx invalidate.
    #[test]
    fn unsafe_methods_invalidate_4_4() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        for (m, s, want) in [
            (Method::POST, 200, true),
            (Method::PUT, 201, true),
            (Method::DELETE, 204, true),
            (Method::PATCH, 303, true),
            (purge, 200, true),
            (Method::POST, 404, false),
            (Method::POST, 500, false),
            (Method::GET, 200, false),
            (Method::HEAD, 200, false),
            (Method::OPTIONS, 200, false),
        ] {
            assert_eq!(
                invalidates(&m, StatusCode::from_u16(s).unwrap()),
                want,
                "{m} {s}"
            );
        }
    }

    // --- fuzz entry point ------------------------------------------------------------------

    /// The fuzz invariants hold on hand-written seeds.
    #[test]
    fn fuzz_seeds_hold_invariants() {
        let mut seeds: Vec<Vec<u8>> = vec![format!(
            "\x00\x05\x00\x20max-age=60\n{}\n{}\n3\nAccept-Encoding\n{}\n\"e\"\n\nmax-stale\ngzip",
            date(100),
            date(0),
            date(0)
        )
        .into_bytes()];
        let raw: [&[u8]; 4] = [
            b"\x80\x01\x10\x00must-revalidate, max-age=1, stale-if-error=999\n0\n\n\n\n\n\n\nno-store\n",
            b"\x00\x00\xff\xffno-store\n\n\n\n*\n\n\n\n\n",
            b"\x80\x00\x00\x01\n\n\n\n\n\n\nmax-age=\"9\", s-maxage=5\nmax-age=0\n",
            b"\x00\x00\x01\x00no-cache=\"a,\nWed, 01 Jan 1969 00:00:00 GMT\nSunday, 06-Nov-94 08:49:37 GMT\n-1",
        ];
        seeds.extend(raw.iter().map(|s| s.to_vec()));
        for s in &seeds {
            fuzz_policy(s);
        }
        fuzz_policy(&[]);
    }

    /// The fuzz invariants hold on pseudo-random inputs built from directive fragments.
    #[test]
    fn fuzz_random_inputs_hold_invariants() {
        const FRAGMENTS: [&str; 32] = [
            "max-age=600, ",
            "s-maxage=5, ",
            "stale-if-error=900, ",
            "stale-while-revalidate=900, ",
            "max-stale=100, ",
            "must-revalidate, ",
            "public, ",
            "no-cache, ",
            "max-age=",
            "s-maxage=",
            "no-store",
            "no-cache",
            "private",
            "public",
            "must-revalidate",
            "proxy-revalidate",
            "stale-while-revalidate=",
            "stale-if-error=",
            "max-stale",
            "=",
            "min-fresh=",
            "\"",
            ",",
            " ",
            "10",
            "0",
            "-",
            "\n",
            "*",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "accept-encoding",
            "?0",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut input: Vec<u8> = (next() as u32).to_le_bytes().to_vec();
            for _ in 0..(next() % 24) {
                input.extend_from_slice(FRAGMENTS[(next() % 32) as usize].as_bytes());
            }
            fuzz_policy(&input);
        }
    }
}
