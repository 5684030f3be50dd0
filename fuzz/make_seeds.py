#!/usr/bin/env python3
"""Writes the named seed inputs under fuzz/seeds/<target>/ (run from anywhere; idempotent).

The seeds are committed; this script documents how the binary ones are built. Formats:
see muxgate::fuzzing (src/fuzzing.rs) and src/cache/policy.rs::fuzz_policy.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- fuzz_header_translate: flags, 4 address bytes, then `name:value` lines -----------------

def fields(flags, ip, lines):
    return bytes([flags]) + bytes(ip) + "\n".join(lines).encode()


write("fuzz_header_translate", "hop-by-hop-all", fields(1, [10, 0, 0, 9], [
    "Connection: keep-alive, X-Secret, TE",
    "X-Secret: 1",
    "Keep-Alive: timeout=5",
    "Proxy-Connection: keep-alive",
    "Transfer-Encoding: chunked",
    "Upgrade: h2c",
    "HTTP2-Settings: AAMAAABkAAQAAP__",
    "TE: gzip, trailers",
    "Host: a.test",
    "Expect: 100-continue",
    "X-Forwarded-For: 10.0.0.1",
    "X-End-To-End: kept",
]))
write("fuzz_header_translate", "xff-multi-ipv6", fields(2, [0, 1, 0, 2], [
    "x-forwarded-for: 10.0.0.1",
    "x-forwarded-for: 10.0.0.2, 10.0.0.3",
    "x-forwarded-proto: ftp",
    "accept: */*",
]))
write("fuzz_header_translate", "response-date-server", fields(0, [127, 0, 0, 1], [
    "date: Tue, 01 Jan 2030 00:00:00 GMT",
    "server: origin/1",
    "connection: close, x-hop",
    "x-hop: 1",
    "set-cookie: a=1",
    "set-cookie: b=2",
]))
# --- fuzz_config: TOML files -------------------------------------------------------------------

write("fuzz_config", "minimal.toml", """listen = ["127.0.0.1:8080"]
[admin]
listen = "127.0.0.1:9901"
[[origins]]
name = "app"
hosts = ["*"]
url = "https://127.0.0.1:8443"
""")
write("fuzz_config", "two-origins-cache.toml", """listen = ["127.0.0.1:8080", "[::1]:8080"]
log_format = "json"
[client]
max_connections = 100
header_timeout = "5s"
max_header_size = "16KiB"
max_headers = 50
max_body_size = "1MB"
drain_timeout = 3
[cache]
enabled = true
max_size = "64MiB"
max_object_size = "1MiB"
key = "$scheme://$host$uri$args"
use_stale = ["error", "timeout", "updating"]
background_update = true
methods = ["GET"]
ignore_headers = ["Set-Cookie"]
targeted_field = "cdn-cache-control"
[cache.valid]
"200" = "10m"
"404" = "1m"
any = 30
[[origins]]
name = "api.v1"
hosts = ["api.example.com", "*.api.example.com"]
url = "https://api-origin.internal:8443"
servers = ["10.0.0.1:8443", "[fd00::1]:8443"]
tls_server_name = "api.example.com"
alpn = ["h2"]
host_header = "api.internal:8443"
min_connections = 2
max_connections = 8
initial_max_streams = 50
pending_timeout = "2s"
max_connection_age = "0s"
keepalive_interval = "15s"
stream_window = "1MiB"
connection_window = 16777216
retry_buffer = "128KiB"
retry_idempotent = true
[[origins]]
name = "legacy"
hosts = ["Legacy.Example.COM"]
url = "http://legacy.internal"
cache = false
h1_max_connections = 10
h1_max_idle = 2
""")
write("fuzz_config", "bad-window.toml", """[[origins]]
name = "x"
hosts = ["*"]
url = "https://x"
stream_window = "1KiB"
""")
write("fuzz_config", "unknown-key.toml", """[admin]
listen = "127.0.0.1:1"
bogus = 1
""")

# --- fuzz_cache_policy: 4 knob bytes, then `\n`-separated field values ------------------------
# (the seeds of policy.rs's `fuzz_seeds_hold_invariants`)

DATE0 = "Thu, 01 Jan 1970 00:00:00 GMT"
DATE100 = "Thu, 01 Jan 1970 00:01:40 GMT"
write("fuzz_cache_policy", "max-age-vary",
      f"\x00\x05\x00\x20max-age=60\n{DATE100}\n{DATE0}\n3\nAccept-Encoding\n{DATE0}\n\"e\"\n\nmax-stale\ngzip")
write("fuzz_cache_policy", "must-revalidate-stale-if-error",
      b"\x80\x01\x10\x00must-revalidate, max-age=1, stale-if-error=999\n0\n\n\n\n\n\n\nno-store\n")
write("fuzz_cache_policy", "no-store-vary-star", b"\x00\x00\xff\xffno-store\n\n\n\n*\n\n\n\n\n")
write("fuzz_cache_policy", "cdn-cache-control",
      b"\x80\x00\x00\x01\n\n\n\n\n\n\nmax-age=\"9\", s-maxage=5\nmax-age=0\n")
write("fuzz_cache_policy", "bad-dates",
      b"\x00\x00\x01\x00no-cache=\"a,\nWed, 01 Jan 1969 00:00:00 GMT\nSunday, 06-Nov-94 08:49:37 GMT\n-1")

# --- fuzz_upstream_frames: g0 g1, then per connection: flags and ops --------------------------

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 1, 1, 4
REFUSED_STREAM = 7

# HPACK (RFC 7541 Appendix A): static index 8 is `:status: 200`; 28 is content-length (a literal
# without indexing with an indexed name: 0x0f 0x0d), 13 is `:status: 500`... kept to the basics.
STATUS_200 = b"\x88"


def content_length(n):
    v = str(n).encode()
    return b"\x0f\x0d" + bytes([len(v)]) + v


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def W(data):
    return b"W" + struct.pack(">H", len(data)) + data


QUIET = b"RS\x01"  # wait for the gateway to write, then until it is quiescent
H2 = 0b010  # conn flags: h2 with a server preface first
SETTINGS_ACK = frame(SETTINGS, ACK, 0)


NO_PING = 0b00100000  # g0: no keepalive PINGs (a script cannot answer them in time)


def response(stream, body=b"hello", end=True):
    return (frame(HEADERS, END_HEADERS, stream, STATUS_200 + content_length(len(body)))
            + frame(DATA, END_STREAM if end else 0, stream, body))


write("fuzz_upstream_frames", "settings-headers-data",
      bytes([NO_PING, 0, H2]) + QUIET + W(SETTINGS_ACK + response(1)))
write("fuzz_upstream_frames", "goaway-then-second-connection",
      bytes([NO_PING, 0, H2]) + QUIET + W(SETTINGS_ACK + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))) + b"N"
      + bytes([H2]) + QUIET + W(SETTINGS_ACK + response(1)))
write("fuzz_upstream_frames", "refused-stream-retried",
      bytes([NO_PING, 0, H2]) + QUIET + W(SETTINGS_ACK + frame(RST_STREAM, 0, 1, struct.pack(">I", REFUSED_STREAM)))
      + QUIET + W(response(3)))
write("fuzz_upstream_frames", "four-requests-one-stream",
      bytes([NO_PING | 0b11, 0, H2]) + QUIET
      + W(SETTINGS_ACK + frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 1)))
      + QUIET + W(response(1)) + QUIET + W(response(3)) + QUIET + W(response(5)) + QUIET + W(response(7)))
write("fuzz_upstream_frames", "post-streamed-trailers",
      bytes([NO_PING | 0b11000001, 0b11, H2]) + QUIET
      + W(SETTINGS_ACK + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)))
      + QUIET + W(response(1) + response(3, b"second")))
write("fuzz_upstream_frames", "ping-and-continuation",
      bytes([NO_PING, 0, H2]) + QUIET
      + W(SETTINGS_ACK + frame(PING, 0, 0, b"12345678")
          + frame(HEADERS, 0, 1, STATUS_200) + frame(CONTINUATION, END_HEADERS, 1, content_length(2))
          + frame(DATA, END_STREAM, 1, b"ok")))
write("fuzz_upstream_frames", "body-never-ends",
      bytes([NO_PING, 0, H2]) + QUIET + W(SETTINGS_ACK + response(1, b"partial", end=False)) + b"S\xff")
write("fuzz_upstream_frames", "close-mid-response",
      bytes([NO_PING | 0b00010000, 0, H2]) + QUIET
      + W(SETTINGS_ACK + frame(HEADERS, END_HEADERS, 1, STATUS_200 + content_length(10))) + b"C"
      + bytes([H2]) + QUIET + W(SETTINGS_ACK + response(1)))
write("fuzz_upstream_frames", "ping-timeout-mid-body",
      bytes([0, 0, H2]) + QUIET + W(SETTINGS_ACK + response(1, b"partial", end=False)))
write("fuzz_upstream_frames", "alpn-http1",
      bytes([0, 0, 0b001]) + QUIET + W(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"))
write("fuzz_upstream_frames", "raw-garbage",
      bytes([0, 0, 0b100]) + b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\x00\x00\x04")
write("fuzz_upstream_frames", "silent-origin", bytes([0b00100000, 0, 0]))

# --- fuzz_downstream_h1: flags, then the client's bytes ---------------------------------------

write("fuzz_downstream_h1", "get", b"\x00GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
write("fuzz_downstream_h1", "chunked-with-trailers",
      b"\x00POST /trailers HTTP/1.1\r\nHost: www.a.test\r\nTransfer-Encoding: chunked\r\n"
      b"TE: trailers\r\nConnection: TE, x-secret\r\nx-secret: 1\r\n\r\n"
      b"5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n")
write("fuzz_downstream_h1", "pipelined-three-origins",
      b"\x00GET /cache HTTP/1.1\r\nHost: a.test\r\n\r\n"
      b"GET /cache HTTP/1.1\r\nHost: A.TEST.:80\r\n\r\n"
      b"GET /x HTTP/1.1\r\nHost: other.example\r\nKeep-Alive: 5\r\n\r\n"
      b"GET /reset HTTP/1.1\r\nHost: c.test\r\n\r\n"
      b"GET /goaway HTTP/1.1\r\nHost: c.test\r\n\r\n"
      b"GET /after HTTP/1.1\r\nHost: c.test\r\n\r\n")
write("fuzz_downstream_h1", "absolute-form-upgrade",
      b"\x02GET http://c.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
      b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nProxy-Connection: keep-alive\r\n\r\n")
write("fuzz_downstream_h1", "expect-continue-buffered",
      b"\x00PUT /up HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
write("fuzz_downstream_h1", "streamed-body-slow-origin",
      b"\x00POST /slow HTTP/1.1\r\nHost: c.test\r\nContent-Length: 3000\r\n\r\n" + b"x" * 3000)
write("fuzz_downstream_h1", "keep-open-partial-body",
      b"\x01POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5000\r\n\r\nonly-this")

# --- fuzz_h2_guard: control rate, reset rate, then segments [len, dt_ms, bytes…] ---------------


def h2frame(kind, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def segments(stream, size, dt):
    out = b""
    for i in range(0, len(stream), size):
        c = stream[i:i + size]
        out += bytes([len(c), dt]) + c
    return out


write("fuzz_h2_guard", "ping-flood",
      bytes([9, 9]) + segments(b"".join(h2frame(6, 0, 0, b"\0" * 8) for _ in range(120)), 37, 0))
write("fuzz_h2_guard", "rapid-reset",
      bytes([63, 15]) + segments(b"".join(
          h2frame(1, 5, 2 * i + 1, b"\x82\x87\x84") + h2frame(3, 0, 2 * i + 1, b"\0\0\0\x08")
          for i in range(80)), 50, 3))
write("fuzz_h2_guard", "legit-post",
      bytes([0, 0]) + segments(
          h2frame(4, 0, 0, b"") + h2frame(4, 1, 0, b"") + h2frame(1, 4, 1, b"\x83\x87\x84")
          + h2frame(0, 0, 1, b"x" * 100) + h2frame(0, 1, 1, b""), 11, 200))
