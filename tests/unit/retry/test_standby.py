"""Where a standby retry process sends operators: the active one's admin address."""

from __future__ import annotations

import socket

from sendqueue.services.retry.standby import admin_url


def test_a_named_listen_is_its_own_address():
    assert admin_url("127.0.0.1:8102") == "http://127.0.0.1:8102"
    assert admin_url("[::1]:8102") == "http://[::1]:8102"


def test_a_wildcard_listen_is_announced_with_the_hosts_name():
    assert admin_url("0.0.0.0:8102") == f"http://{socket.getfqdn()}:8102"
