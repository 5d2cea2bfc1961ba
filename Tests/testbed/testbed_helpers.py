"""Helpers of the multi-host test bed suite: `Bed` drives tools/testbed.sh (network-namespace hosts
h1..hN on a private bridge, each with its own dbus and avahi-daemon), `BedMesh` puts meshd on the
hosts (a real llama-server on h3, a host with another mesh secret on h4).

Every call into the bed is bounded in time; a bed is always torn down (fixture teardown, and at exit).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from meshd_e2e import Binaries, E2EError, render_config, wait_until
from mesh_helpers import MeshBinaries, make_secret, meshctl
from pytest_harness import PoolRegistry

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "testbed.sh"

MESH_PORT = 11436
HTTP_PORT = 11435
LLAMA_PORT = 8080
SIM_PORT = 8081
MODEL = "meshd-tiny"
OTHER_MODEL = "d-only"


def needs_root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the multi-host test bed (tools/testbed.sh) creates network and mount namespaces"
    return None


class Bed:
    """One test bed of `n` hosts under a unique prefix (tools/testbed.sh --prefix)."""

    def __init__(self, prefix: str, n: int) -> None:
        self.prefix = prefix
        self.n = n
        self.run = Path("/tmp") / prefix
        self.hosts = [f"h{i}" for i in range(1, n + 1)]

    def sh(self, *args: str, timeout: float = 60, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        e = dict(os.environ)
        e.update(env or {})
        res = subprocess.run([str(SCRIPT), "--prefix", self.prefix, *args], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL, env=e)
        if check and res.returncode != 0:
            raise E2EError(f"testbed.sh {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def up(self) -> None:
        self.sh("up", str(self.n), timeout=120)

    def down(self) -> None:
        self.sh("down", timeout=60, check=False)

    close = down

    def exec(self, host: str, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("exec", host, *cmd, timeout=timeout, check=check)

    def dir(self, host: str) -> Path:
        return self.run / host

    @staticmethod
    def ip(host: str) -> str:
        return f"198.18.0.{10 + int(host[1:])}"

    def spawn(self, host: str, name: str, *cmd: str, env: dict[str, str] | None = None) -> None:
        self.sh("spawn", host, name, *cmd, env=env)

    def logs(self) -> list[tuple[str, str]]:
        out = []
        for host in self.hosts:
            for f in sorted(self.dir(host).glob("*.log")):
                try:
                    text = "\n".join(f.read_text(errors="replace").splitlines()[-60:])
                except OSError:
                    continue
                out.append((f"{self.prefix} {host} {f.name}", text))
        return out

    def curl(self, host: str, method: str, path: str, body: Any = None, port: int = HTTP_PORT,
             timeout: float = 60) -> tuple[int, dict[str, str], str]:
        """An HTTP request made on `host` to its own 127.0.0.1:port; (status, lower-cased headers, body)."""
        tag = f"curl-{time.monotonic_ns()}"
        hdr, out = self.dir(host) / f"{tag}.headers", self.dir(host) / f"{tag}.body"
        cmd = ["curl", "-sS", "-m", str(int(timeout)), "-X", method, "-D", str(hdr), "-o", str(out), "-w", "%{http_code}"]
        if body is not None:
            data = self.dir(host) / f"{tag}.json"
            data.write_text(json.dumps(body))
            cmd += ["-H", "content-type: application/json", "--data-binary", f"@{data}"]
        res = self.exec(host, *cmd, f"http://127.0.0.1:{port}{path}", timeout=timeout + 10, check=False)
        try:
            headers = {}
            for line in hdr.read_text(errors="replace").splitlines()[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            return int(res.stdout.strip() or 0), headers, out.read_text(errors="replace")
        except (OSError, ValueError):
            raise E2EError(f"curl on {host} {method} {path} failed: {res.stdout}{res.stderr}") from None
        finally:
            for f in self.dir(host).glob(f"{tag}.*"):
                f.unlink(missing_ok=True)

    def browse(self, host: str, service: str = "_meshd._tcp") -> dict[str, dict[str, Any]]:
        """Resolved mDNS services of `service` that `host`'s avahi-daemon sees, by instance name:
        {"host", "address", "port", "txt": {key: value}}."""
        res = self.exec(host, "timeout", "8", "avahi-browse", "-r", "-t", "-p", service, timeout=15, check=False)
        found: dict[str, dict[str, Any]] = {}
        for line in res.stdout.splitlines():
            f = line.split(";")
            if len(f) >= 10 and f[0] == "=" and f[2] == "IPv4":
                txt = {}
                for item in f[9].split('" "'):
                    item = item.strip('"')
                    if "=" in item:
                        k, v = item.split("=", 1)
                        txt[k] = v
                found[f[3].replace("\\032", " ")] = {"host": f[6], "address": f[7], "port": int(f[8]), "txt": txt}
        return found


def avahi_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "avahi-daemon"], capture_output=True, text=True, timeout=10).stdout
    return [int(p) for p in out.split()]


def netns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def root_namespace_avahi() -> list[int]:
    """avahi-daemons running in the machine's own network namespace (the one pytest runs in)."""
    mine = netns_of(os.getpid())
    return [p for p in avahi_pids() if netns_of(p) == mine]


_bed_numbers = itertools.count(1)


class BedRegistry(PoolRegistry):
    """Beds still up, as PoolRegistry keeps process pools: `close` tears one down, the rest go at exit,
    and their hosts' logs go into failure reports (a Bed has the `close()` and `logs()` of a pool)."""

    @staticmethod
    def down_orphans() -> list[str]:
        """Tears down beds of earlier sessions that died without tearing down theirs (prefix
        mtb<pid>x<k> whose pid is gone); beds of live sessions are left alone."""
        gone = []
        for d in Path("/tmp").glob("mtb*x*"):
            pid = d.name[3:].split("x", 1)[0]
            if (d / ".mtb-bed").exists() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                Bed(d.name, 0).down()
                gone.append(d.name)
        return gone

    def open_bed(self, n: int) -> Bed:
        bed = Bed(f"mtb{os.getpid()}x{next(_bed_numbers)}", n)
        self.pools.append(bed)  # type: ignore[arg-type]
        try:
            bed.up()
        except (E2EError, subprocess.TimeoutExpired) as e:
            self.close(bed)  # type: ignore[arg-type]
            raise E2EError(f"the test bed did not come up: {e}") from None
        return bed


# MARK: meshd on the bed


class BedNode:
    """meshd on one host of the bed: HTTP on the host's 127.0.0.1:11435, mesh on its eth0 address."""

    def __init__(self, bed: Bed, bins: MeshBinaries, host: str, secret: Path, *, mdns: bool,
                 peers: list[str], engines: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        self.bed, self.bins, self.host = bed, bins, host
        d = bed.dir(host)
        self.secret = d / "mesh.secret"
        shutil.copy(secret, self.secret)
        self.secret.chmod(0o600)
        self.admin_socket = d / "admin.sock"
        cfg = {
            "node": {"name": host},
            "state_dir": str(d / "state"),
            "http": {"listen": f"127.0.0.1:{HTTP_PORT}", "shutdown_grace_seconds": 2},
            "admin": {"socket": str(self.admin_socket)},
            "mesh": {"listen": f"{bed.ip(host)}:{MESH_PORT}", "peers": [f"{bed.ip(p)}:{MESH_PORT}" for p in peers],
                     "heartbeat_ms": 1000, "dead_after_missed": 3, "secret_file": str(self.secret),
                     "node_key_file": str(d / "state" / "node.key")},
            "discovery": {"mdns": mdns},
            "engine_poll": {"interval_ms": 200},
            "timeouts": {"connect_ms": 1000},
            "engines": engines,
            **(extra or {}),
        }
        self.config_path = d / "meshd.yaml"
        self.config_path.write_text(render_config(cfg))

    def start(self) -> None:
        self.admin_socket.unlink(missing_ok=True)
        self.bed.sh("start-meshd", self.host, str(self.config_path), env={"MESHD_BIN": str(self.bins.meshd)})

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(lambda: self.admin_socket.exists() and self.nodes() is not None, timeout, interval=0.02,
                   what=f"meshd on {self.host} (admin socket {self.admin_socket})")

    def log(self) -> str:
        try:
            return (self.bed.dir(self.host) / "meshd.log").read_text(errors="replace")
        except OSError:
            return ""

    def admin_get(self, path: str, timeout: float = 5) -> Any:
        """GET `path` on the admin socket; the decoded JSON answer."""
        transport = httpx.HTTPTransport(uds=str(self.admin_socket))
        with httpx.Client(transport=transport, base_url="http://meshd", timeout=timeout, trust_env=False) as c:
            r = c.get(path)
            r.raise_for_status()
            return r.json()

    def nodes(self, timeout: float = 5) -> dict[str, dict[str, Any]]:
        """GET /v1/nodes on the admin socket (what `meshctl nodes --json` prints), by node name."""
        return {n["name"]: n for n in self.admin_get("/v1/nodes", timeout)}

    def meshctl_nodes(self) -> dict[str, dict[str, Any]]:
        res = meshctl(self.bins, self.admin_socket, "nodes", "--json")
        assert res.returncode == 0, f"meshctl nodes on {self.host} failed: {res.stdout}{res.stderr}"
        return {n["name"]: n for n in json.loads(res.stdout)}

    def safe_nodes(self) -> Any:
        try:
            return self.nodes()
        except Exception as e:  # noqa: BLE001
            return repr(e)


def chat(model: str = MODEL, max_tokens: int = 8) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": max_tokens}


def up_with(view: dict[str, dict[str, Any]], names: list[str], models: dict[str, list[str]]) -> bool:
    return all(view.get(n, {}).get("state") == "up" for n in names) and all(
        set(ms) <= set(view[n].get("models", [])) for n, ms in models.items())


def gone(view: dict[str, dict[str, Any]], name: str) -> bool:
    """`name` is `down` in this view, or no longer listed."""
    return view.get(name, {"state": "down"})["state"] == "down"


class BedMesh:
    """meshd on h1..h4: h1 and h2 without engines, h3 with a real llama-server (the tiny model),
    h4 with another mesh secret and a simulated engine serving a model only it has. With `mdns` the
    nodes find each other by mDNS alone; otherwise every member lists the others as static peers
    and h4 lists h1."""

    MEMBERS = ["h1", "h2", "h3"]

    def __init__(self, bed: Bed, bins: MeshBinaries, *, mdns: bool) -> None:
        self.bed, self.bins = bed, bins
        paths = Binaries()
        llama, model = paths.llama_server_bin(), paths.tiny_model()
        secret = make_secret(bins, bed.run / "mesh.secret")
        other = make_secret(bins, bed.run / "other.secret")
        bed.spawn("h3", "llama", str(llama), "-m", str(model), "--host", "127.0.0.1", "--port", str(LLAMA_PORT),
                  "-t", "1", "-c", "512", "--alias", MODEL)
        bed.spawn("h4", "sim", str(bins.sim), "--host", "127.0.0.1", "--port", str(SIM_PORT), "--models", OTHER_MODEL)
        wait_until(lambda: bed.curl("h3", "GET", "/health", port=LLAMA_PORT, timeout=5)[0] == 200, 60, interval=0.2,
                   what="llama-server on h3")
        wait_until(lambda: bed.curl("h4", "GET", "/sim/stats", port=SIM_PORT, timeout=5)[0] == 200, 20, interval=0.1,
                   what="sim engine on h4")

        def peers(h: str) -> list[str]:
            if mdns:
                return []
            return ["h1"] if h == "h4" else [p for p in self.MEMBERS if p != h]

        def engines(h: str) -> list[dict[str, Any]]:
            return {"h3": [{"kind": "openai", "url": f"http://127.0.0.1:{LLAMA_PORT}"}],
                    "h4": [{"kind": "openai", "url": f"http://127.0.0.1:{SIM_PORT}"}]}.get(h, [])

        self.nodes = {h: BedNode(bed, bins, h, other if h == "h4" else secret, mdns=mdns, peers=peers(h),
                                 engines=engines(h)) for h in ["h1", "h2", "h3", "h4"]}
        self.t_launch = time.monotonic()
        for n in self.nodes.values():
            n.start()
        for n in self.nodes.values():
            n.wait_ready()
        self.t_ready = time.monotonic()

    def member(self, h: str) -> BedNode:
        return self.nodes[h]

    def wait_all(self, pred: Callable[[BedNode, dict[str, dict[str, Any]]], bool], watchers: list[str],
                 timeout: float, what: str) -> float:
        """Polls the admin views of `watchers` until `pred(node, view)` holds for each; returns when
        (time.monotonic()) it did."""

        def ok() -> float | None:
            for h in watchers:
                if not pred(self.nodes[h], self.nodes[h].nodes()):
                    return None
            return time.monotonic()

        try:
            return wait_until(ok, timeout, interval=0.02, what=what)
        except E2EError as e:
            views = {h: self.nodes[h].safe_nodes() for h in watchers}
            raise E2EError(f"{e}; views: {json.dumps(views, default=str)[:4000]}") from None

    def wait_formed(self, timeout: float) -> float:
        return self.wait_all(lambda n, v: up_with(v, self.MEMBERS, {"h3": [MODEL]}), self.MEMBERS, timeout,
                             "h1..h3 to see each other up, h3 with the model")

    def request_served_by_h3(self, via: str = "h1") -> float:
        """A chat request on `via`, answered by the llama-server on h3; returns its duration."""
        t0 = time.monotonic()
        status, headers, body = self.bed.curl(via, "POST", "/v1/chat/completions", chat())
        took = time.monotonic() - t0
        assert status == 200, (status, body[:500])
        assert headers.get("x-meshd-node") == "h3", headers
        if via != "h3":
            assert headers.get("x-meshd-via") == via, headers
        r = json.loads(body)
        assert r["choices"][0]["message"]["content"] and r["usage"]["completion_tokens"] > 0, r
        return took

    def other_secret_isolated(self) -> None:
        """h4 (another secret) is in no member's view and sees only itself; its model is unknown to the
        mesh and its engine never got a request."""
        for h in self.MEMBERS:
            view = self.nodes[h].meshctl_nodes()
            assert "h4" not in view, (h, view)
        assert set(self.nodes["h4"].meshctl_nodes()) == {"h4"}
        status, _, body = self.bed.curl("h1", "POST", "/v1/chat/completions", chat(OTHER_MODEL))
        assert status in (404, 503), (status, body[:300])
        status, _, body = self.bed.curl("h4", "POST", "/v1/chat/completions", chat(MODEL))
        assert status in (404, 503), (status, body[:300])
        status, _, stats = self.bed.curl("h4", "GET", "/sim/stats", port=SIM_PORT, timeout=5)
        assert status == 200 and json.loads(stats)["requests"] == 0, stats

    def kill_and_revive(self, host: str, label: str) -> tuple[float, float]:
        """kill -9 of everything on `host`: every other member shows it down (or drops it) within 3 s;
        after `revive` all see it up again with its models. Returns (leave, return) seconds."""
        others = [h for h in self.MEMBERS if h != host]
        self.wait_formed(10)
        t_kill = time.monotonic()
        self.bed.sh("kill", host)
        t_gone = self.wait_all(lambda n, v: gone(v, host), others, 10, f"{others} to drop {host}")
        left = t_gone - t_kill
        for h in others:
            assert gone(self.nodes[h].meshctl_nodes(), host)
        t_revive = time.monotonic()
        self.bed.sh("revive", host)
        t_back = self.wait_formed(30)
        back = t_back - t_revive
        print(f"\n[testbed] {label}: killed {host} gone from {others} after {left:.2f}s; revived {host} "
              f"back (up, with models) after {back:.2f}s")
        assert left <= 3.0, f"{host} still listed up {left:.2f}s after kill -9"
        return left, back

    def cut_and_heal(self, host: str, label: str) -> tuple[float, float]:
        """The link of `host` is cut: the others drop it and it drops them; after heal all are up again."""
        others = [h for h in self.MEMBERS if h != host]
        self.wait_formed(10)
        t_cut = time.monotonic()
        self.bed.sh("cut", host)
        try:
            t_gone = self.wait_all(lambda n, v: gone(v, host) if n.host != host else all(gone(v, o) for o in others),
                                   self.MEMBERS, 15, f"the cut to separate {host}")
        finally:
            t_heal = time.monotonic()
            self.bed.sh("heal", host)
        t_back = self.wait_formed(30)
        print(f"\n[testbed] {label}: link of {host} cut, separated after {t_gone - t_cut:.2f}s; healed, mesh whole "
              f"again after {t_back - t_heal:.2f}s")
        return t_gone - t_cut, t_back - t_heal
