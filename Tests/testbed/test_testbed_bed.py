"""The bed itself: two hosts see each other's mDNS services (with TXT) through their own avahi-daemons;
no avahi-daemon runs in the machine's own network namespace before, during or after; the hosts are
isolated from the machine's interfaces, routes and /run."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from meshd_e2e import wait_until
from testbed_helpers import Bed, BedRegistry, netns_of, root_namespace_avahi

HOSTS = 2


def _root_net() -> tuple[str, str]:
    addrs = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True, timeout=10).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, timeout=10).stdout
    return addrs, routes


@pytest.fixture(scope="module")
def before() -> dict[str, object]:
    """The machine as it was before this module's bed (requested ahead of `bed`)."""
    addrs, routes = _root_net()
    return {"avahi": root_namespace_avahi(), "addrs": addrs, "routes": routes}


def test_no_avahi_in_root_namespace_before(before: dict[str, object], bed: Bed) -> None:
    assert before["avahi"] == [], f"an avahi-daemon runs on this machine's own interfaces: {before['avahi']}"


def test_hosts_see_each_others_service_with_txt(before: dict[str, object], bed: Bed) -> None:
    for pub, seer in (("h2", "h1"), ("h1", "h2")):
        name = f"mtb-test-{pub}"
        bed.spawn(pub, "publish", "avahi-publish", "-s", name, "_meshd._tcp", "11436",
                  f"id=node-{pub}", "proto=1", "mesh=11436", "http=11435")
        t0 = time.monotonic()
        svc = wait_until(lambda: bed.browse(seer).get(name), 10, interval=0.1, what=f"{seer} to resolve {name}")
        took = time.monotonic() - t0
        bed.sh("stop", pub, "publish")
        print(f"\n[testbed] {seer} resolved the service {pub} published after {took:.2f}s: {svc}")
        assert svc["address"] == bed.ip(pub) and svc["port"] == 11436 and svc["host"] == f"{pub}.local", svc
        assert svc["txt"] == {"id": f"node-{pub}", "proto": "1", "mesh": "11436", "http": "11435"}, svc


def test_hosts_are_isolated(before: dict[str, object], bed: Bed) -> None:
    me = netns_of(os.getpid())
    for h in bed.hosts:
        assert bed.exec(h, "hostname").stdout.strip() == h
        addrs = bed.exec(h, "ip", "-br", "-4", "addr").stdout
        assert f"{bed.ip(h)}/24" in addrs and "eth0" in addrs, addrs
        # A private /run: the host's own dbus pid file, not the machine's.
        pid = int(bed.exec(h, "cat", "/run/dbus/pid").stdout.strip())
        assert netns_of(pid) not in ("", me), f"{h}'s dbus-daemon runs in the root namespace"
        avahi = int(bed.exec(h, "cat", "/run/avahi-daemon/pid").stdout.strip())
        assert netns_of(avahi) == netns_of(pid), f"{h}'s avahi-daemon is not in {h}'s namespace"
    assert root_namespace_avahi() == before["avahi"]
    addrs, routes = _root_net()
    assert "198.18." not in addrs and (addrs, routes) == (before["addrs"], before["routes"]), (addrs, routes)


def test_cut_hides_a_host_and_heal_restores_it(bed: Bed) -> None:
    def reach() -> bool:
        return bed.exec("h1", "bash", "-c", f"timeout 1 bash -c '</dev/tcp/{bed.ip('h2')}/9' 2>&1; true").stdout.find(
            "refused") >= 0

    assert reach(), "h1 cannot reach h2 (a refused connection is the expected answer)"
    bed.sh("cut", "h2")
    try:
        assert not reach()
    finally:
        bed.sh("heal", "h2")
    wait_until(reach, 5, what="h2 reachable again after heal")


def _marked(prefix: str) -> list[int]:
    """Processes carrying the bed's MTB_BED marker in their environment."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"MTB_BED={prefix}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def test_down_leaves_nothing(before: dict[str, object], bed: Bed) -> None:
    """A second bed of its own, torn down: no namespace, process or file of it is left."""
    beds = BedRegistry()
    b = beds.open_bed(1)
    assert _marked(b.prefix), "the bed's daemons carry MTB_BED"
    beds.close(b)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert f"{b.prefix}-" not in listed, listed
    assert not b.run.exists()
    wait_until(lambda: not _marked(b.prefix), 5, what="the torn-down bed's processes to be gone")
    assert root_namespace_avahi() == before["avahi"]
