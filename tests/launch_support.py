"""What the tests that start `accelerate launch` share."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no one listens on now, for the launch's rendezvous: two test sessions on one machine (or one
    suite run beside CI) must not meet at a fixed port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
