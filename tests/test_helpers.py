"""`require`: a missing real part skips a test on a developer's machine and fails it on CI. `free_port`: ports no
process is handed by the kernel."""

import socket

import pytest

from tests.helpers import free_port, require


def test_require_skips_off_ci_and_fails_on_ci(monkeypatch):
    require(True, "never said")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^no bwrap$"):
        require(False, "no bwrap")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="^CI=true, yet no bwrap$"):
        require(False, "no bwrap")


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20 and all(20000 <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))
