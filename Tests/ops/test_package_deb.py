"""The Debian package: tools/package-deb.sh, lintian, then a real install and purge on this machine.

The package is built from the already built binaries (MESHD_BIN's directory, default .build/debug)
with `--bin-dir` and `--fast` (gzip -1 instead of xz), so no release build runs here. It needs root
(it installs into /usr, /lib and /etc) and is skipped without it; it refuses to run where meshd is
installed or its files exist, and purges what it installed even when it fails. While it installs,
a policy-rc.d keeps a running systemd from starting the service.

Run: sudo python3 -m pytest Tests/ops/test_package_deb.py
Needs dpkg-dev, lintian, help2man, patchelf and systemd (systemd-analyze); tools/test.sh installs them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "package-deb.sh"
UNIT = "/lib/systemd/system/meshd.service"
CONFFILES = ("/etc/meshd/meshd.yaml", "/etc/meshd/prices.yaml")
ENABLED_LINK = Path("/etc/systemd/system/multi-user.target.wants/meshd.service")
STATE = Path("/var/lib/meshd")
PRIVATE_STATE = Path("/var/lib/private/meshd")
POLICY_RC = Path("/usr/sbin/policy-rc.d")
# Everything the package puts on the machine, or makes there (state, enablement): gone after purge.
# /etc/meshd goes too, unless it holds files of the admin's (mesh.secret, trusted-keys, keys): those stay.
ETC = Path("/etc/meshd")
PACKAGE_PATHS = ("/usr/bin/meshd", "/usr/bin/meshctl", UNIT, *CONFFILES, "/usr/lib/meshd",
                 "/usr/share/meshd", "/usr/share/doc/meshd", "/usr/share/man/man8/meshd.8.gz",
                 "/usr/share/man/man1/meshctl.1.gz", str(ENABLED_LINK), str(STATE), str(PRIVATE_STATE))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs and purges the meshd package: needs root")


def run(*cmd: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    env.pop("LD_LIBRARY_PATH", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)  # type: ignore[call-overload]


def package_state() -> str:
    """dpkg's status of meshd ('ii': installed), '' when it is not installed (nor left configured)."""
    res = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "meshd")
    state = res.stdout.strip() if res.returncode == 0 else ""
    return "" if len(state) < 2 or state[1] == "n" else state


def accounts() -> tuple[str, str]:
    return run("getent", "passwd").stdout, run("getent", "group").stdout


def source_version() -> str:
    text = (ROOT / "Sources" / "MeshCore" / "Version.swift").read_text()
    m = re.search(r'static let version = "([^"]+)"', text)
    assert m, "no version in MeshCore/Version.swift"
    return m.group(1)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool, pkg in (("dpkg-shlibdeps", "dpkg-dev"), ("lintian", "lintian"), ("help2man", "help2man"),
                      ("patchelf", "patchelf"), ("systemd-analyze", "systemd"), ("apt-get", "apt")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install {pkg} (tools/test.sh does)", pytrace=False)
    meshd = Path(os.environ.get("MESHD_BIN") or ROOT / ".build" / "debug" / "meshd")
    if not (meshd.is_file() and (meshd.parent / "meshctl").is_file()):
        pytest.fail(f"no meshd and meshctl in {meshd.parent}: run `swift build` or set MESHD_BIN", pytrace=False)
    out = tmp_path_factory.mktemp("deb")
    res = run(str(SCRIPT), "--bin-dir", str(meshd.parent), "--out", str(out), "--fast", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    arch = run("dpkg", "--print-architecture").stdout.strip()
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path == out / f"meshd_{source_version()}_{arch}.deb", res.stdout
    assert path.is_file()
    return path


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    res = run(str(SCRIPT), "--bogus")
    assert res.returncode != 0 and "unknown argument '--bogus'" in res.stderr, res.stderr
    res = run(str(SCRIPT), "--bin-dir", str(tmp_path), "--out", str(tmp_path))
    assert res.returncode != 0 and f"no executable {tmp_path}/meshd" in res.stderr, res.stderr
    assert not list(tmp_path.glob("*.deb"))


def test_lintian_clean(deb: Path) -> None:
    res = run("lintian", "--fail-on", "error,warning", str(deb), timeout=300)
    tags = [l for l in res.stdout.splitlines() if re.match(r"[EW]: ", l)]
    assert res.returncode == 0 and not tags, res.stdout + res.stderr
    # Every override says why, in a comment right above it.
    lines = (ROOT / "tools" / "deb" / "lintian-overrides").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("#"), f"override without a reason: {line}"


def etc_before() -> list[str] | None:
    """The names in /etc/meshd before the test; None if there was no /etc/meshd."""
    return sorted(os.listdir(ETC)) if ETC.is_dir() else None


@pytest.fixture
def clean_machine() -> Iterator[list[str] | None]:
    """Refuses to touch an existing meshd; afterwards purges the package and removes what the test made.
    Yields the names /etc/meshd held before (None: no /etc/meshd)."""
    if package_state():
        pytest.fail(f"the meshd package is on this machine ({package_state()}); the test would replace and "
                    "purge it: run `apt purge meshd` first, or run the test elsewhere", pytrace=False)
    present = [p for p in PACKAGE_PATHS if os.path.lexists(p)]
    if present:
        pytest.fail(f"meshd's files exist already, the test would overwrite or purge them: {present}", pytrace=False)
    own_policy = not POLICY_RC.exists()
    if own_policy:
        POLICY_RC.write_text("#!/bin/sh\n# Tests/ops/test_package_deb.py: start no services during this test\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        yield etc_before()
    finally:
        if package_state():
            run("dpkg", "--purge", "meshd")
        for p in (STATE, PRIVATE_STATE):  # did not exist before (checked above)
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.exists():
                shutil.rmtree(p)
        if own_policy:
            POLICY_RC.unlink(missing_ok=True)


def test_install_check_purge(deb: Path, clean_machine: list[str] | None) -> None:
    before = accounts()
    res = run("apt-get", "install", "-y", "--no-install-recommends", str(deb), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert package_state() == "ii", package_state()

    # The programs run from /usr/bin with what the package brought (no Swift toolchain from the build).
    res = run("/usr/bin/meshd", "--version")
    assert res.returncode == 0 and res.stdout.strip() == source_version(), res.stdout + res.stderr
    res = run("/usr/bin/meshctl", "--version")
    assert res.returncode == 0 and res.stdout.strip() == source_version(), res.stdout + res.stderr
    res = run("/usr/bin/meshctl", "--help")
    assert res.returncode == 0 and "USAGE: meshctl" in res.stdout, res.stdout + res.stderr
    for exe in ("/usr/bin/meshd", "/usr/bin/meshctl"):
        ldd = run("ldd", exe).stdout
        resolved = re.findall(r"=> (\S+)", ldd)
        assert resolved and "not found" not in ldd, ldd
        outside = [p for p in resolved if not re.match(r"/(usr/)?lib/", p)]
        assert not outside, f"{exe} loads libraries from outside the system: {outside}"

    # The unit: the repository's, running /usr/bin/meshd; systemd-analyze has nothing to say about it.
    repo_unit = (ROOT / "systemd" / "meshd.service").read_text()
    assert Path(UNIT).read_text() == repo_unit.replace("/usr/local/bin/", "/usr/bin/")
    assert re.search(r"^ExecStart=/usr/bin/meshd ", Path(UNIT).read_text(), re.M), "ExecStart= is not /usr/bin/meshd"
    res = run("systemd-analyze", "verify", "--man=no", UNIT)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "meshd.service" not in out, out
    # Enabled the Debian way (deb-systemd-helper), also without systemd running.
    assert ENABLED_LINK.is_symlink() and os.readlink(ENABLED_LINK) == UNIT, ENABLED_LINK

    # The configuration is the repository's default, and dpkg treats it as conffiles.
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "meshd").stdout
    for f in CONFFILES:
        assert re.search(rf"^ {re.escape(f)} [0-9a-f]{{32}}$", conffiles, re.M), conffiles
        assert Path(f).read_bytes() == (ROOT / "Config" / Path(f).name).read_bytes(), f
    listed = run("dpkg", "-L", "meshd").stdout.splitlines()
    for f in ("/usr/share/meshd/prometheus/meshd-rules.yml", "/usr/share/meshd/grafana/meshd-dashboard.json",
              "/usr/share/man/man8/meshd.8.gz", "/usr/share/man/man1/meshctl.1.gz", "/usr/share/doc/meshd/copyright"):
        assert f in listed and Path(f).is_file(), f

    # DynamicUser=: no account, and /var/lib/meshd is systemd's to make (StateDirectory=) when meshd starts.
    assert "DynamicUser=yes" in Path(UNIT).read_text()
    assert accounts() == before, "installing meshd changed the user or group database"
    assert run("getent", "passwd", "meshd").returncode != 0
    assert str(STATE) not in listed and not os.path.lexists(STATE)

    # What systemd leaves after meshd ran (the state behind a symlink, as for DynamicUser=), and an
    # edited conffile: purge removes both.
    PRIVATE_STATE.mkdir(parents=True, mode=0o700)
    (PRIVATE_STATE / "ledger.sqlite").write_bytes(b"state")
    STATE.symlink_to("private/meshd")
    with open(CONFFILES[0], "a") as f:
        f.write("# edited by the test\n")
    res = run("apt-get", "purge", "-y", "meshd", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert package_state() == "", package_state()
    left = [p for p in PACKAGE_PATHS if os.path.lexists(p)]
    assert not left, f"left after purge: {left}"
    assert etc_before() == clean_machine, f"/etc/meshd after purge: {etc_before()}, before: {clean_machine}"
    assert not list(Path("/var/lib/dpkg/info").glob("meshd.*"))
    assert accounts() == before
