"""The model store (`models:`): GGUF files in a folder are models meshd serves with llama-servers it
starts on a model's first request and stops when the model is idle or another needs the room, as
Ollama does; files added or removed are seen while it runs. Real llama-server, real clients."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import ollama
import openai
import pytest

from meshd_e2e import Binaries, E2EError, Meshd, ProcessPool, cmdline, processes_with_arg, wait_until


def meshctl(bins: Binaries, m: Meshd, *args: str) -> str:
    exe = Path(os.environ.get("MESHCTL_BIN") or bins.meshd_bin().parent / "meshctl")
    r = subprocess.run([str(exe), *args, "--socket", str(m.admin_socket)], capture_output=True, text=True, timeout=15,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout


def store_node(pool: ProcessPool, bins: Binaries, names: list[str], hardware: dict[str, object] | None = None,
               **models: object) -> tuple[Meshd, Path]:
    try:
        tiny, server = bins.tiny_model(), bins.llama_server_bin()
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)
    store = pool.tmp / "models"
    store.mkdir()
    for n in names:
        shutil.copyfile(tiny, store / f"{n}.gguf")
    settings = {"dir": str(store), "rescan_seconds": 1, "args": ["-t", "1", "-c", "512"], **models}
    # No llama.cpp engine is configured: meshd finds llama-server on PATH.
    env = {"PATH": f"{server.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    extra: dict[str, object] = {"models": settings, **({"hardware": hardware} if hardware else {})}
    m = Meshd(pool, bins.meshd_bin(), [], extra=extra, env=env, expect_ready=False, name="e2e-store")
    return m, store


def servers(m: Meshd) -> dict[str, int]:
    """meshd's llama-server children by the model file they serve."""
    out = {}
    for p in m.engine_children():
        args = cmdline(p)
        if any(a.endswith("llama-server") for a in args[:3]) and "-m" in args:
            out[Path(args[args.index("-m") + 1]).stem] = p
    return out


def tags(m: Meshd) -> set[str]:
    return {x["name"] for x in m.get("/api/tags").json()["models"]}


def ps(m: Meshd) -> set[str]:
    return {x["name"] for x in m.get("/api/ps").json()["models"]}


def openai_chat(m: Meshd, model: str) -> str:
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    raw = oa.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=4, temperature=0)
    r = raw.parse()
    assert r.choices[0].message.content is not None and r.usage and r.usage.completion_tokens > 0
    return raw.headers.get("x-meshd-route", "")


def test_stored_models_load_on_demand_make_room_unload_when_idle_and_follow_the_folder(pool: ProcessPool, bins: Binaries) -> None:
    m, store = store_node(pool, bins, ["alpha", "beta"], keep_alive="3s", max_loaded=1)
    # Both are listed at once, neither is loaded, and no llama-server runs yet.
    wait_until(lambda: tags(m) >= {"alpha", "beta"}, 10, what="the stored models in /api/tags")
    assert ps(m) == set() and servers(m) == {}
    models = {x["name"]: x for x in m.admin("/v1/models").json()}
    assert models["alpha"]["loaded"] is False, models

    # Before any load: /api/show describes it from its GGUF file, meshctl route counts its cold load.
    shown = m.post("/api/show", json={"model": "alpha:latest"}).json()
    assert shown["model_info"]["general.architecture"] == "llama" and shown["model_info"]["llama.context_length"] > 0, shown
    assert shown["details"]["format"] == "gguf" and "completion" in shown["capabilities"], shown
    plan = json.loads(meshctl(bins, m, "route", "alpha", "--json"))
    assert plan["engine"] == "store:alpha" and plan["loaded"] is False and "available, not loaded" in plan["reason"], plan

    # The first request loads the model (routing said so: a cold load), then it serves; name:latest is the same model.
    route = openai_chat(m, "alpha:latest")
    assert "available, not loaded" in route, route
    assert set(servers(m)) == {"alpha"} and ps(m) == {"alpha"}
    assert "model loaded" in openai_chat(m, "alpha")
    first = servers(m)["alpha"]
    # /api/ps says when it will be unloaded: its keep-alive (3 s) after its last use.
    exp = next(x for x in m.get("/api/ps").json()["models"] if x["name"] == "alpha")["expires_at"]
    left = datetime.fromisoformat(exp.replace("Z", "+00:00")).timestamp() - time.time()
    assert 0 < left <= 3.5, (exp, left)
    # meshctl models: where each model is (this node's name), its size.
    text = meshctl(bins, m, "models")
    models_table, nodes_table = text.split("\n\n")
    rows = {line.split()[0]: line.split() for line in models_table.splitlines()[1:]}
    assert rows["alpha"][1:] == ["16", "MiB", "e2e-store", "-", "-"], rows
    assert rows["beta"][1:] == ["16", "MiB", "-", "-", "e2e-store"], rows
    # What each node could load now: the models on its disk that fit the memory it offers.
    node_row = nodes_table.splitlines()[1].split()
    assert node_row[0] == "e2e-store" and node_row[-1] == "beta", nodes_table
    listed = {x["name"]: x for x in json.loads(meshctl(bins, m, "models", "--json"))}
    assert listed["beta"]["where"] == [{"node": "e2e-store", "engine": "store:beta", "kind": "llama.cpp", "state": "available",
                                        "size_bytes": (store / "beta.gguf").stat().st_size, "split": False}], listed

    # Another model with max_loaded 1: the idle one is stopped to make room.
    ol = ollama.Client(host=m.url, timeout=60, trust_env=False)
    c = ol.chat(model="beta", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4, "temperature": 0})
    assert c.done and (c.eval_count or 0) > 0
    assert set(servers(m)) == {"beta"} and ps(m) == {"beta"}
    assert first not in m.engine_children()

    # Idle past models.keep_alive: unloaded, still listed.
    t0 = time.monotonic()
    wait_until(lambda: servers(m) == {} and ps(m) == set(), 15, interval=0.2, what="the idle model to be unloaded")
    assert time.monotonic() - t0 >= 1.5, "unloaded before its keep-alive ran out"
    assert tags(m) >= {"alpha", "beta"}

    # Open WebUI's load and unload: an empty generate loads the model without generating, an empty chat
    # with keep_alive 0 unloads it, both answered in Ollama's shape; a request's own keep_alive 0 unloads
    # the model as soon as its answer is done.
    r = m.post("/api/generate", json={"model": "beta"})
    assert r.status_code == 200 and r.json()["done_reason"] == "load" and r.json()["response"] == "", r.text
    assert set(servers(m)) == {"beta"}
    r = m.post("/api/chat", json={"model": "beta", "messages": [], "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload" and r.json()["message"]["content"] == "", r.text
    assert servers(m) == {} and ps(m) == set()
    c = ol.generate(model="beta", prompt="hi", options={"num_predict": 2}, keep_alive="0s")
    assert c.done
    wait_until(lambda: servers(m) == {}, 5, interval=0.1, what="keep_alive 0 to unload the model after its answer")
    bad = m.post("/api/generate", json={"model": "beta", "prompt": "x", "keep_alive": "soon"})
    assert bad.status_code == 400 and "keep_alive" in bad.json()["error"], bad.text
    assert servers(m) == {}, "a refused request loads nothing"

    # Concurrent requests to a cold model share one start.
    errors: list[BaseException] = []

    def one() -> None:
        try:
            openai_chat(m, "alpha")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    launched = [p for p in m.engine_children() if "alpha.gguf" in " ".join(cmdline(p))]
    assert len(launched) == 1, [cmdline(p) for p in launched]
    assert "llama-server" in m.proc.log() and m.proc.log().count("started llama-server") == 5, \
        "alpha, beta, beta twice more (load, keep_alive 0), then alpha once: one start for the three concurrent requests"

    # A file added while meshd runs is served; one removed is no longer listed (its server stops).
    shutil.copyfile(store / "beta.gguf", store / "gamma.gguf.partial")
    os.rename(store / "gamma.gguf.partial", store / "gamma.gguf")
    wait_until(lambda: "gamma" in tags(m), 10, what="the new file in /api/tags")
    # A file still being copied in is read again once it changes (its size, then its GGUF facts, current).
    data = (store / "beta.gguf").read_bytes()
    with (store / "delta.gguf").open("wb") as f:
        f.write(data[: len(data) // 2])
    size_of = lambda: next((x["size"] for x in m.get("/api/tags").json()["models"] if x["name"] == "delta"), None)  # noqa: E731
    wait_until(lambda: size_of() == len(data) // 2, 10, what="the half-written file in /api/tags")
    with (store / "delta.gguf").open("ab") as f:
        f.write(data[len(data) // 2:])
    wait_until(lambda: size_of() == len(data), 10, what="the finished file's size in /api/tags")
    openai_chat(m, "delta")
    (store / "alpha.gguf").unlink()
    wait_until(lambda: "alpha" not in tags(m) and "alpha" not in servers(m), 10, what="the removed file to leave /api/tags")
    openai_chat(m, "gamma")
    assert set(servers(m)) == {"gamma"}, servers(m)
    gone = m.post("/v1/chat/completions", json={"model": "alpha", "messages": [{"role": "user", "content": "x"}]})
    assert gone.status_code == 404 and "alpha" in gone.json()["error"]["message"], gone.text

    # meshctl models rm --all: gone from the store (and the folder).
    out = meshctl(bins, m, "models", "rm", "gamma", "--all")
    assert "e2e-store: deleted" in out and not (store / "gamma.gguf").exists(), out
    wait_until(lambda: "gamma" not in tags(m) and servers(m) == {}, 10, what="the removed model to leave and its server to stop")

    # meshd stops the llama-servers it started for the store when it stops.
    openai_chat(m, "beta")
    assert m.proc.stop() == 0
    assert processes_with_arg(str(store)) == []


def test_a_stored_model_larger_than_the_offer_is_refused_with_the_reason(pool: ProcessPool, bins: Binaries) -> None:
    # The tiny model is ~17 MiB; offer 8 MiB.
    m2, _ = store_node(pool, bins, ["alpha"], hardware={"offer_bytes": 8 << 20}, keep_alive="1m")
    wait_until(lambda: "alpha" in tags(m2), 10, what="the stored model in /api/tags")
    r = m2.post("/v1/chat/completions", json={"model": "alpha", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 503, r.text
    msg = r.json()["error"]["message"]
    assert "needs 16 MiB" in msg and "offers 8 MiB" in msg, msg
    assert servers(m2) == {}
    # What meshd makes only through an Ollama engine (create, blobs, push) is a clear 501 in Ollama's shape
    # on a node without one; a copy of a model that is nowhere is a 404.
    for method, path in (("POST", "/api/create"), ("POST", "/api/push"), ("HEAD", "/api/blobs/sha256:" + "0" * 64),
                         ("POST", "/api/blobs/sha256:" + "0" * 64)):
        r = m2.request(method, path, json={"model": "m"})
        assert r.status_code == 501, (method, path, r.status_code, r.text)
        if method != "HEAD":
            assert "through an Ollama engine" in r.json()["error"] and "models.dir" in r.json()["error"], r.text
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=m2.url, timeout=10, trust_env=False).copy("nowhere", "x")
    assert e.value.status_code == 404
    # Ollama's dialect says the same in its own shape.
    o = m2.post("/api/chat", json={"model": "alpha", "messages": [{"role": "user", "content": "x"}], "stream": False})
    assert o.status_code == 503 and "offers 8 MiB" in o.json()["error"], o.text


def test_when_memory_is_short_the_least_recently_used_model_makes_room(pool: ProcessPool, bins: Binaries) -> None:
    """Two of the three stored models fit the memory the node offers (hardware.offer_bytes): loading the
    third unloads the least recently used one, not the other."""
    size = bins.tiny_model().stat().st_size
    m, _ = store_node(pool, bins, ["alpha", "beta", "gamma"], hardware={"offer_bytes": size * 5 // 2}, keep_alive="1h")
    wait_until(lambda: tags(m) >= {"alpha", "beta", "gamma"}, 10, what="the stored models in /api/tags")
    openai_chat(m, "alpha")
    openai_chat(m, "beta")
    assert set(servers(m)) == {"alpha", "beta"}
    openai_chat(m, "alpha")          # beta is now the least recently used
    openai_chat(m, "gamma")
    assert set(servers(m)) == {"alpha", "gamma"} and ps(m) == {"alpha", "gamma"}
    assert "unloading a stored model to make room" in m.proc.log() and "model=beta" in m.proc.log()
