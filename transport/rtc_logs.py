"""Where the rtc SDK's native log records go.

livekit.rtc (1.2.1) starts its FFI with ``capture_logs=True``. The FFI (livekit-ffi) then sets Rust's max log level
to Trace, and its logger forwards every record of every crate, each formatted into a protobuf, through an unbounded
channel to one task that calls into Python once per record; Python keeps INFO and above. A session makes about
14,000 such records (tungstenite's frame traces, libwebrtc's port allocator, ...), nearly all debug or trace. While
the event loop holds the GIL the forwarding task falls behind and the channel grows: gigabytes with 25 rooms joined
and left again and again (``bench/churn.py``), given back only once the daemon idles.

:func:`native_rtc_logs` turns the capture off again: the FFI's own ``env_logger`` then writes records at
``RUST_LOG`` (``warn`` unless the operator set it) and above to stderr (the journal, under systemd), and formats
nothing below that. Those lines do not go through Python logging: they are not redacted (keep ``RUST_LOG`` at
``warn`` or above in production: what the SDK writes below that was not reviewed for secrets), and
``quiet_routine_noise`` does not see them (rtc's "data channel ... closed unexpectedly" shows as an ERROR line
when a room closes).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("transport")


def native_rtc_logs(level: str = "warn") -> bool:
    """Call before anything uses livekit.rtc: the FFI reads ``RUST_LOG`` once, when it starts. False (nothing
    changed) when the SDK's internals are not as expected."""
    os.environ.setdefault("RUST_LOG", level)
    from livekit.rtc import _ffi_client

    callback = getattr(_ffi_client, "ffi_event_callback", None)
    version = getattr(_ffi_client, "__version__", None)
    lib = getattr(_ffi_client.FfiClient.instance, "_ffi_lib", None)  # starts the FFI (capture on), as any rtc use would
    initialize = getattr(lib, "livekit_ffi_initialize", None)
    if initialize is None or callback is None or not isinstance(version, str):
        log.warning("the rtc SDK is not as expected; its native log records still all go through Python")
        return False
    # again, with the same callback and SDK name as livekit.rtc's FfiClient, capture_logs off
    initialize(callback, False, b"python", version.encode("ascii"))
    return True
