"""Writes the seed corpora in this directory.

Envelopes and events from the Python sentry-sdk (captured by a transport that keeps the
serialized envelope), events and envelopes shaped like the errscope agent's
(agent/src/envelope.rs), framing variants, and messages for the normalizer.
The first byte of an `envelope` seed picks the Content-Encoding (see
fuzz_targets/envelope.rs): 0 gzip, 1 deflate, 2 br, 7 identity.

    python3 fuzz/seeds/make.py
"""

import gzip
import json
import logging
import os
import zlib

import sentry_sdk
from sentry_sdk.transport import Transport

HERE = os.path.dirname(os.path.abspath(__file__))
captured = []


class Capture(Transport):
    def capture_envelope(self, envelope):
        captured.append(envelope.serialize())

    def flush(self, timeout, callback=None):
        pass

    def kill(self):
        pass


def neutral_paths(event, _hint):
    """Frames as on a deployed service, not this checkout."""
    for values in (event.get("exception") or {}).get("values", []), (event.get("threads") or {}).get("values", []):
        for v in values:
            for frame in (v.get("stacktrace") or {}).get("frames", []):
                if frame.get("abs_path"):
                    frame["abs_path"] = "/srv/shop/" + os.path.basename(frame["abs_path"])
    return event


def python_envelopes():
    sentry_sdk.init(
        dsn="https://abc123@localhost/1",
        transport=Capture,
        release="shop@1.4.0",
        environment="production",
        server_name="web-1",
        attach_stacktrace=True,
        include_local_variables=False,
        before_send=neutral_paths,
    )

    class OrderError(Exception):
        pass

    def load(order_id):
        return {}[f"order-{order_id}"]

    def place(order_id):
        try:
            load(order_id)
        except KeyError as e:
            raise OrderError(f"order {order_id} failed for bob@example.com") from e

    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", "9f1c")
        scope.set_user({"id": 42, "email": "a@b.c"})
        sentry_sdk.add_breadcrumb(message="GET /orders/7", category="http")
        try:
            place(7)
        except Exception:
            sentry_sdk.capture_exception()
    sentry_sdk.capture_message("payment 123 declined", level="warning")
    logging.getLogger("shop").error("user %s missing", "alice")
    try:
        open("/no/such/file")
    except OSError:
        sentry_sdk.capture_exception()
    try:
        1 / 0
    except ZeroDivisionError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush()
    return captured


def write(path, data):
    with open(os.path.join(HERE, path), "wb") as f:
        f.write(data)


def item(ty, payload):
    return json.dumps({"type": ty, "length": len(payload)}).encode() + b"\n" + payload + b"\n"


def main():
    for d in ("envelope", "event", "normalize"):
        os.makedirs(os.path.join(HERE, d), exist_ok=True)
    messages = set()
    for i, body in enumerate(python_envelopes()):
        write(f"envelope/python-{i}" + (".gz" if i == 0 else ""),
              b"\x00" + gzip.compress(body) if i == 0 else b"\x07" + body)
        lines = body.split(b"\n")
        length = json.loads(lines[1])["length"]
        payload = body[len(lines[0]) + len(lines[1]) + 2:][:length]
        write(f"event/python-{i}.json", payload)
        event = json.loads(payload)
        for exc in (event.get("exception") or {}).get("values", []):
            messages.add(exc.get("value") or "")
        m = event.get("logentry") or event.get("message")
        messages.add((m.get("formatted") or m.get("message") or "") if isinstance(m, dict) else (m or ""))

    agent_event = {
        "event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "timestamp": 1767225600.25, "level": "error",
        "platform": "native", "release": "shop@1.4.0", "environment": "production", "server_name": "web-1",
        "exception": {"values": [{
            "type": "std::io::Error", "value": "connection reset by peer (os error 104)",
            "mechanism": {"type": "capture_error", "handled": True,
                          "data": {"io_kind": "ConnectionReset", "os_code": 104},
                          "meta": {"errno": {"number": 104, "name": "ECONNRESET"}}},
            "stacktrace": {"frames": [
                {"function": "std::rt::lang_start", "module": "std::rt", "in_app": False},
                {"function": "shop::main::h0123456789abcdef", "module": "shop", "filename": "src/main.rs",
                 "lineno": 10, "in_app": True},
                {"function": "{async_fn#0}", "filename": "src/ldap.rs", "abs_path": "/src/shop/src/ldap.rs",
                 "lineno": 42, "colno": 9, "in_app": True, "instruction_addr": "0x55d0c0de1234"},
                {"function": "tokio::net::TcpStream::read", "module": "tokio::net", "in_app": False}]}}]},
        "tags": {"domain": "GET /orders/:id", "request_id": "7", "retry": 3, "cached": False, "gone": None},
        "contexts": {"domain": {"name": "GET /orders/:id", "tags": {"request_id": "7"}, "data": {}}},
        "breadcrumbs": {"values": [{"timestamp": 1767225599.0, "message": "GET /orders/7"}]},
        "extra": {"capture_location": "src/ldap.rs:42"}, "fingerprint": ["{{ default }}", "ldap"],
    }
    panic_event = {
        "event_id": "0f6d8c0c-43fc-4630-ad85-8e1c8a5f6e3b", "timestamp": "2026-11-22T10:15:00.123+01:00",
        "level": "fatal", "platform": "rust",
        "threads": {"values": [{"crashed": True, "stacktrace": {"frames": [
            {"function": "shop::checkout", "module": "shop", "in_app": True}]}}]},
        "exception": [{"type": "panic", "value": "index 3 out of range for slice of length 2",
                       "mechanism": {"type": "panic", "handled": False,
                                     "data": {"file": "src/cart.rs", "line": 7}}}],
        "tags": [["user", "bob"], ["shard", 2]],
        "logentry": {"message": "cart %s overflow", "formatted": "cart 7 overflow", "params": [7]},
    }
    write("event/agent-io.json", json.dumps(agent_event).encode())
    write("event/agent-panic.json", json.dumps(panic_event).encode())

    counts = {"counts": [{"id": "c" * 32, "event_id": agent_event["event_id"], "count": 41,
                          "start": 1767225600.0, "end": 1767225610.0}]}
    report = {"timestamp": 1767225610.5,
              "discarded_events": [{"reason": "queue_overflow", "category": "error", "quantity": 3}]}
    agent = json.dumps({"event_id": agent_event["event_id"], "dsn": "https://k1@localhost:8000/1"}).encode() + b"\n"
    agent += item("event", json.dumps(agent_event).encode())
    agent += item("errscope.counts", json.dumps(counts).encode())
    agent += item("client_report", json.dumps(report).encode())
    write("envelope/agent", b"\x07" + agent)
    write("envelope/agent.gz", b"\x00" + gzip.compress(agent))
    # Implicit lengths, CRLF, blank lines, an attachment, no trailing newline.
    implicit = b'{}\r\n{"type":"event"}\r\n{"message":"x 1"}\r\n\n{"type":"session"}\n{}'
    write("envelope/implicit", b"\x07" + implicit)
    write("envelope/implicit.zlib", b"\x01" + zlib.compress(implicit))
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    write("envelope/implicit.deflate", b"\x01" + raw.compress(implicit) + raw.flush())
    write("envelope/attachment", b'\x07{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n'
          b'{"type":"attachment","length":10}\n\xef\xbb\xbfHello\r\n\n{"type":"event","length":17}\n{"message":"x 2"}')
    # "hello", brotli quality 11.
    write("envelope/hello.br", bytes([2, 0x0B, 0x02, 0x80, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x03]))

    messages |= {
        "GET https://user:pw@api.example.com/users/42/orders?id=7&page=2#frag failed",
        "peer [2001:db8::1]:443 reset at 2026-11-22T10:15:00Z",
        "connect to 10.0.0.12:5432 refused",
        "order 550e8400-e29b-41d4-a716-446655440000 took 12.5ms, pointer 0x7ffd5e8c commit 3f2a9c1b7e",
        "can't open \"/etc/app.toml\" for `deploy` now; KeyError: 'user_123'",
    }
    for i, m in enumerate(sorted(messages)):
        write(f"normalize/msg-{i}.txt", m.encode())
    for i, n in enumerate(NAMES):
        write(f"normalize/name-{i}.txt", n.encode())


# Native function names for normalize_function: legacy, v0 and DWARF spellings.
NAMES = [
    "_ZN4shop4load28_$u7b$$u7b$closure$u7d$$u7d$17h3ce1fe0fc0f0ab4eE",
    "_RNvMCsbxQjNsTKZZh_4shopINtB2_5CacheNtNtCslNYArtu3iFV_5alloc6string6StringyE3getB2_",
    "<shop::Cache<alloc::string::String, u64>>::get",
    "shop[5f3c2ab1d9e0f412]::block_on::<shop::fetch::{closure#0}>",
    "<&dyn core::ops::function::Fn<(), Output = i32> + core::marker::Sync as core::ops::function::FnOnce<()>>::call_once",
    "core::ops::function::FnOnce::call_once{{vtable.shim}}::h0123456789abcdef",
    "block_on<shop::fetch::{async_fn_env#0}>",
]


if __name__ == "__main__":
    main()
