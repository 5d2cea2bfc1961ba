"""Black-box tests for meshd-sim-engine's prompt (KV) cache model (--cache on|off|legacy).

Same harness as test_sim_engine.py (SIM_ENGINE_BIN, 127.0.0.1, --port 0). The expected token counts come
from a reference implementation of the sim's stand-in tokenizer: the rendered prompt's UTF-8 in 4-byte chunks.
"""

import json
import threading
import time

import pytest

from test_sim_engine import Sim, sim_factory, sse_events  # noqa: F401 (sim_factory is a fixture)

MODEL = "sim-small"


def render_chat(messages):
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def n_tokens(text):
    return (len(text.encode()) + 3) // 4


def shared_tokens(a, b):
    """Tokens two renderings share: whole 4-byte chunks inside their common byte prefix."""
    x, y = a.encode(), b.encode()
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return n // 4


def chat(system, user, **extra):
    body = {"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": 2}
    body.update(extra)
    return body


def cached(j):
    return j["usage"]["prompt_tokens_details"]["cached_tokens"]


def long_text(seed, words=400):
    return " ".join(f"{seed}{k}" for k in range(words))


def ttft(sim, body):
    """Seconds to the first content chunk of a streamed chat, and the final usage chunk."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    t0 = time.monotonic()
    first = None
    r = sim.post("/v1/chat/completions", body, stream=True)
    chunks = []
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("data: {"):
            c = json.loads(line[len("data: "):])
            if first is None and c["choices"] and c["choices"][0]["delta"].get("content"):
                first = time.monotonic() - t0
            chunks.append(c)
    return first, chunks[-1]


def test_shared_prefix_is_cached_and_faster(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 4000, "--gen-tps", 0, "--slots", 1)
    system = long_text("sys", 500)  # ~3.4 kB: ~850 tokens, ~0.2 s of prefill
    a, b = chat(system, "first question"), chat(system, "second question, longer")
    t_a, fin_a = ttft(s, a)
    t_b, fin_b = ttft(s, b)
    ra, rb = render_chat(a["messages"]), render_chat(b["messages"])
    assert fin_a["usage"]["prompt_tokens"] == n_tokens(ra)
    assert cached(fin_a) == 0 and fin_a["timings"]["cache_n"] == 0 and fin_a["timings"]["prompt_n"] == n_tokens(ra)
    assert fin_b["usage"]["prompt_tokens"] == n_tokens(rb)
    assert cached(fin_b) == shared_tokens(ra, rb) > 800
    assert fin_b["timings"]["prompt_n"] == n_tokens(rb) - cached(fin_b) and fin_b["timings"]["cache_n"] == cached(fin_b)
    assert fin_a["id_slot"] == fin_b["id_slot"] == 0
    assert t_b < t_a * 0.4, (t_a, t_b)
    # The same prompt again reuses all but the one token llama.cpp always evaluates.
    j = s.post("/v1/chat/completions", b).json()
    assert cached(j) == n_tokens(rb) - 1 and j["timings"]["prompt_n"] == 1
    st = s.stats()
    assert st["cached_tokens"] == cached(fin_b) + cached(j)
    assert st["prompt_tokens"] == n_tokens(ra) + 2 * n_tokens(rb)
    assert st["prefilled_tokens"] == st["prompt_tokens"] - st["cached_tokens"]


def test_unrelated_prompts_evict_the_least_recently_used_slot(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0, "--slots", 2)
    bodies = {k: chat(long_text(k), "q") for k in ("alpha", "bravo", "charlie")}
    slots = {k: s.post("/v1/chat/completions", bodies[k]).json()["id_slot"] for k in bodies}
    # As llama-server: among equally old slots the last one, so alpha takes slot 1, bravo slot 0,
    # and charlie the least recently used: alpha's.
    assert slots == {"alpha": 1, "bravo": 0, "charlie": 1}
    # bravo is still cached on slot 0; alpha is gone everywhere (only the "<|system|>\n" header matches).
    m = s.post("/sim/cache/match", bodies["alpha"]).json()
    assert all(slot["cached_tokens"] <= 3 for slot in m["slots"]), m
    j = s.post("/v1/chat/completions", bodies["bravo"]).json()
    assert j["id_slot"] == 0 and cached(j) == j["usage"]["prompt_tokens"] - 1
    j = s.post("/v1/chat/completions", bodies["alpha"]).json()
    assert j["id_slot"] == 1 and cached(j) <= 3  # LRU again: charlie's slot


def test_id_slot_pins_the_slot(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0, "--slots", 2)
    body = chat(long_text("pin"), "q")
    assert s.post("/v1/chat/completions", dict(body, id_slot=1)).json()["id_slot"] == 1
    j = s.post("/v1/chat/completions", dict(body, slot_id=0)).json()  # pinned to the empty slot: nothing cached
    assert j["id_slot"] == 0 and cached(j) == 0
    j = s.post("/v1/chat/completions", dict(body, id_slot=1)).json()
    assert j["id_slot"] == 1 and cached(j) == j["usage"]["prompt_tokens"] - 1
    # A slot that does not exist is ignored (normal choice); -1 means "any".
    assert s.post("/v1/chat/completions", dict(body, id_slot=7)).status_code == 200
    assert s.post("/v1/chat/completions", dict(body, id_slot=-1)).status_code == 200


def test_pinned_request_waits_for_its_busy_slot(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 20, "--slots", 2)
    results = {}

    def send(name, body):
        results[name] = s.fresh_post("/v1/chat/completions", body, timeout=10).json()

    t1 = threading.Thread(target=send, args=("a", chat("a", "q", id_slot=0, max_tokens=10)))
    t1.start()
    s.wait_stats(lambda st: st["in_flight"] == 1)
    t2 = threading.Thread(target=send, args=("b", chat("b", "q", id_slot=0, max_tokens=2)))
    t2.start()
    st = s.wait_stats(lambda st: st["queued"] == 1)
    assert st["in_flight"] == 1  # slot 1 is idle, but b asked for slot 0
    t1.join(10)
    t2.join(10)
    assert results["a"]["id_slot"] == 0 and results["b"]["id_slot"] == 0
    assert s.stats()["max_concurrent"] == 1


def test_no_cache_reuses_nothing(sim_factory):
    s = sim_factory("--no-cache", "--prompt-tps", 0, "--gen-tps", 0)
    body = chat(long_text("nc"), "q")
    n = n_tokens(render_chat(body["messages"]))
    for _ in range(2):
        j = s.post("/v1/chat/completions", body).json()
        assert j["usage"]["prompt_tokens"] == n and cached(j) == 0
        assert j["timings"]["cache_n"] == 0 and j["timings"]["prompt_n"] == n
    gen = {"model": MODEL, "system": "sys ", "prompt": long_text("g"), "stream": False, "options": {"num_predict": 1}}
    for _ in range(2):
        assert s.post("/api/generate", gen).json()["prompt_eval_count"] == n_tokens("sys " + gen["prompt"])
    assert s.stats()["cached_tokens"] == 0
    assert s.get("/sim/control").json()["settings"]["cache"] == "off"


def test_default_legacy_mode_counts_words_and_reuses_nothing(sim_factory):
    s = sim_factory("--prompt-tps", 0, "--gen-tps", 0)
    body = chat("be brief", "hello there general kenobi")
    for _ in range(2):
        j = s.post("/v1/chat/completions", body).json()
        assert j["usage"]["prompt_tokens"] == 6 and cached(j) == 0 and j["id_slot"] == 0
    # Switched on at runtime: the same request is now tokenized and cached.
    assert s.post("/sim/control", {"cache": "on"}).json()["settings"]["cache"] == "on"
    n = n_tokens(render_chat(body["messages"]))
    assert s.post("/v1/chat/completions", body).json()["usage"]["prompt_tokens"] == n
    assert cached(s.post("/v1/chat/completions", body).json()) == n - 1
    assert s.post("/sim/control", {"cache": "sometimes"}).status_code == 400


def test_match_oracle_agrees_with_the_next_request(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0, "--slots", 3)
    shared = long_text("doc", 200)
    history = [chat(shared, "one"), chat(long_text("other"), "x"), chat(shared, "two, a longer question")]
    for b in history:
        assert s.post("/v1/chat/completions", b).status_code == 200
    probes = [
        ("/v1/chat/completions", chat(shared, "two, a longer question and more")),
        ("/v1/completions", {"model": MODEL, "prompt": shared, "max_tokens": 2}),
        ("/api/chat", dict(chat(long_text("other"), "x and y"), stream=False)),
        ("/api/generate", {"model": MODEL, "prompt": render_chat(history[0]["messages"]), "stream": False}),
        ("/v1/chat/completions", chat(long_text("fresh"), "q")),
    ]
    for route, body in probes:
        m = s.post("/sim/cache/match", dict(body, route=route)).json()
        assert [slot["busy"] for slot in m["slots"]] == [False] * 3
        r = s.post(route, body).json()
        if route.startswith("/v1/"):
            assert m["prompt_tokens"] == r["usage"]["prompt_tokens"]
            assert (m["best"]["id"], m["best"]["cached_tokens"]) == (r["id_slot"], cached(r)), (route, m, r)
        else:
            assert r["prompt_eval_count"] == m["prompt_tokens"] - m["best"]["cached_tokens"], (route, m, r)
    # The generate probe rendered exactly like history[0]'s chat: it reused all of it.
    gen = probes[3][1]["prompt"]
    m = s.post("/sim/cache/match", {"model": MODEL, "prompt": gen, "route": "/api/generate"}).json()
    assert m["best"]["cached_tokens"] == n_tokens(gen) - 1
    assert s.post("/sim/cache/match", {"model": MODEL, "prompt": "x", "route": "nope"}).status_code == 400
    assert s.post("/sim/cache/match", {"model": "nope", "messages": []}).status_code == 404


def test_ollama_prompt_eval_count_drops_on_a_cached_prefix(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0, "--slots", 1)
    system = long_text("ol", 300)
    first = {"model": MODEL, "system": system, "prompt": "tell me", "stream": False, "options": {"num_predict": 3}}
    j = s.post("/api/generate", first).json()
    assert j["prompt_eval_count"] == n_tokens(system + "tell me")
    second = dict(first, prompt="tell me more, please")
    j = s.post("/api/generate", second).json()
    full = n_tokens(system + second["prompt"])
    assert j["prompt_eval_count"] == full - shared_tokens(system + "tell me", system + second["prompt"])
    assert j["prompt_eval_count"] < 10 and j["eval_count"] == 3
    msgs = [{"role": "user", "content": long_text("chat", 200)}]
    r = s.post("/api/chat", {"model": MODEL, "messages": msgs, "stream": True, "options": {"num_predict": 2}})
    assert json.loads(r.text.strip().splitlines()[-1])["prompt_eval_count"] == n_tokens(render_chat(msgs))
    msgs2 = msgs + [{"role": "assistant", "content": "tok0 tok1 "}, {"role": "user", "content": "and?"}]
    r = s.post("/api/chat", {"model": MODEL, "messages": msgs2, "stream": True, "options": {"num_predict": 2}})
    assert json.loads(r.text.strip().splitlines()[-1])["prompt_eval_count"] < 20


def test_slots_and_sim_cache_show_each_context(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 20, "--slots", 2, "--context-length", 300)
    body = chat("short system", "short question", max_tokens=3)
    n = n_tokens(render_chat(body["messages"]))
    s.post("/v1/chat/completions", dict(body, id_slot=0))
    s.post("/v1/chat/completions", dict(body, id_slot=1))
    slots = s.get("/slots").json()
    assert [(x["id"], x["n_ctx"], x["is_processing"], x["n_past"]) for x in slots] == [(0, 300, False, n + 3),
                                                                                        (1, 300, False, n + 3)]
    # n_prompt_tokens: what the slot holds (prompt and output), as llama-server's slot.prompt.tokens.
    assert slots[1]["n_prompt_tokens"] == n + 3 and slots[1]["n_prompt_tokens_processed"] == n
    assert slots[1]["n_prompt_tokens_cache"] == 0 and "id_task" in slots[1]
    c = s.get("/sim/cache").json()
    assert c["cache"] == "on" and c["n_ctx"] == 300
    assert [x["n_ctx_used"] for x in c["slots"]] == [n + 3, n + 3]
    assert c["slots"][0]["hash"] == c["slots"][1]["hash"] and len(c["slots"][0]["hash"]) == 16
    # A longer prompt on slot 1: capped at the context length, and the hashes now differ.
    s.post("/v1/chat/completions", chat(long_text("big", 300), "q", id_slot=1, max_tokens=1))
    c = s.get("/sim/cache").json()
    assert c["slots"][1]["n_ctx_used"] == 300 and c["slots"][0]["hash"] != c["slots"][1]["hash"]
    # While a request runs, its slot is processing and already holds the prompt.
    t = threading.Thread(target=lambda: s.fresh_post("/v1/chat/completions", dict(body, id_slot=0, max_tokens=20)))
    t.start()
    s.wait_stats(lambda st: st["in_flight"] == 1)
    slots = s.get("/slots").json()
    assert slots[0]["is_processing"] and not slots[1]["is_processing"]
    assert slots[0]["n_prompt_tokens_cache"] == n - 1
    t.join(5)
    assert s.post("/sim/cache/clear").json() == {"ok": True}
    assert [(x["n_past"], x["n_prompt_tokens"]) for x in s.get("/slots").json()] == [(0, 0), (0, 0)]


# --- host-RAM prompt cache (--cache-ram-tokens, llama-server's --cache-ram) ---


def ram(sim):
    return sim.get("/sim/cache").json()["ram"]


def test_ram_cache_restores_a_prompt_its_slot_lost(sim_factory):
    bodies = {k: chat(long_text(k), "q") for k in ("alpha", "bravo")}
    ra, rb = (render_chat(bodies[k]["messages"]) for k in ("alpha", "bravo"))
    header = shared_tokens(ra, rb)  # "<|system|>\n": the only thing A and B share
    assert header <= 3 and n_tokens(ra) > 500
    for limit, expect in ((100000, n_tokens(ra) - 1), (0, header)):
        s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0, "--slots", 1, "--cache-ram-tokens", limit)
        assert cached(s.post("/v1/chat/completions", bodies["alpha"]).json()) == 0
        assert cached(s.post("/v1/chat/completions", bodies["bravo"]).json()) == header
        j = s.post("/v1/chat/completions", bodies["alpha"]).json()
        assert cached(j) == expect and j["timings"]["cache_n"] == expect, (limit, j)
        assert j["timings"]["prompt_n"] == n_tokens(ra) - expect
        assert s.stats()["cached_tokens"] == header + expect
        assert s.get("/sim/control").json()["settings"]["cache_ram_tokens"] == limit
        # A moved out of RAM into the slot; B (prompt + 2 generated tokens) was saved when A took the slot back.
        assert [e["tokens"] for e in ram(s)["entries"]] == ([n_tokens(rb) + 2] if limit else [])


def test_ram_restore_is_charged_between_a_slot_hit_and_a_full_prefill(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 2000, "--gen-tps", 0, "--slots", 1,
                    "--cache-ram-tokens", 100000, "--cache-ram-restore-tps", 20000)
    a, b = chat(long_text("alpha", 800), "q"), chat(long_text("bravo", 800), "q")
    n = n_tokens(render_chat(a["messages"]))
    assert n > 1500  # a full prefill ~0.8 s, a restore ~0.08 s
    t_full, _ = ttft(s, a)
    ttft(s, b)
    t_restore, fin = ttft(s, a)  # restored from RAM
    t_hit, fin_hit = ttft(s, a)  # still on the slot
    assert cached(fin) == cached(fin_hit) == n - 1
    assert t_hit < t_restore * 0.5, (t_hit, t_restore)
    assert t_restore < t_full * 0.3, (t_restore, t_full)
    # The restore is not prompt processing: prompt_ms covers the one token evaluated.
    assert fin["timings"]["prompt_n"] == 1 and fin["timings"]["prompt_ms"] < t_restore * 1000 * 0.5


def test_ram_limit_evicts_the_oldest_prompt(sim_factory):
    bodies = {k: chat(long_text(k), "q") for k in ("alpha", "bravo", "charlie")}
    sizes = [n_tokens(render_chat(b["messages"])) + 2 for b in bodies.values()]  # prompt + 2 generated tokens
    assert max(sizes) + 50 < 2 * min(sizes)
    # Room for one saved context, then for three. Saving the slot's context makes room before the load, as
    # llama-server's alloc does: with room for one, even the entry saved last is gone by the time alpha comes back.
    for room, reused in ((1, False), (3, True)):
        limit = room * max(sizes) + 50
        s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0, "--slots", 1, "--cache-ram-tokens", limit)
        for k in ("alpha", "bravo", "charlie"):
            s.post("/v1/chat/completions", bodies[k])
        r = ram(s)
        assert r["limit_tokens"] == limit and [e["tokens"] for e in r["entries"]] == sizes[max(0, 2 - room):2], (room, r)
        j = s.post("/v1/chat/completions", bodies["alpha"]).json()
        assert cached(j) == (j["usage"]["prompt_tokens"] - 1 if reused else shared_tokens(
            render_chat(bodies["alpha"]["messages"]), render_chat(bodies["charlie"]["messages"]))), (room, j)
        assert ram(s)["tokens"] <= limit
    # A limit below one context keeps nothing.
    assert s.post("/sim/control", {"cache_ram_tokens": 10}).json()["settings"]["cache_ram_tokens"] == 10
    assert ram(s) == {"limit_tokens": 10, "tokens": 0, "entries": []}
    s.post("/v1/chat/completions", bodies["bravo"])
    assert ram(s)["entries"] == []


def test_ram_match_oracle_predicts_restores_and_idle_slots_are_saved(sim_factory):
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0, "--slots", 2, "--cache-ram-tokens", 100000)
    bodies = {k: chat(long_text(k, 300), "q") for k in ("alpha", "bravo", "charlie")}
    history = []

    def run(k):
        m = s.post("/sim/cache/match", bodies[k]).json()
        before = s.get("/sim/cache").json()
        assert s.post("/sim/cache/match", bodies[k]).json() == m  # the oracle changes nothing
        assert s.get("/sim/cache").json() == before
        j = s.post("/v1/chat/completions", bodies[k]).json()
        assert (m["best"]["id"], m["best"]["cached_tokens"]) == (j["id_slot"], cached(j)), (k, m, j)
        history.append((k, j["id_slot"], cached(j), m["best"]["restored_tokens"], m["slots"][j["id_slot"]]["cached_tokens"]))

    for k in ("alpha", "bravo", "charlie", "alpha"):
        run(k)
    size = {k: n_tokens(render_chat(bodies[k]["messages"])) for k in bodies}
    # alpha takes slot 1, bravo slot 0 (alpha's idle slot is copied to RAM), charlie slot 1 (LRU; bravo's idle slot is
    # copied), then alpha the LRU slot 0: its own context (bravo's) shares only the header, RAM gives alpha back.
    assert [h[:2] for h in history] == [("alpha", 1), ("bravo", 0), ("charlie", 1), ("alpha", 0)]
    assert all(h[2] <= 3 and h[3] == 0 for h in history[:3]), history
    assert history[3][2:] == (size["alpha"] - 1, size["alpha"] + 2, history[3][4]) and history[3][4] <= 3
    # RAM now holds bravo (saved as an idle slot) and charlie (idle after alpha took slot 0).
    c = s.get("/sim/cache").json()
    assert [e["tokens"] for e in c["ram"]["entries"]] == [size["bravo"] + 2, size["charlie"] + 2]
    assert c["ram"]["tokens"] == size["bravo"] + size["charlie"] + 4
    # The idle copy of charlie is the context slot 1 still holds.
    assert c["ram"]["entries"][1]["hash"] == c["slots"][1]["hash"] != c["ram"]["entries"][0]["hash"]
    assert all(len(e["hash"]) == 16 for e in c["ram"]["entries"])
    # Clearing the cache empties RAM too; so does a mode change.
    assert s.post("/sim/cache/clear").json() == {"ok": True}
    assert ram(s)["entries"] == [] and ram(s)["tokens"] == 0
    s.post("/v1/chat/completions", bodies["alpha"])
    s.post("/v1/chat/completions", bodies["bravo"])
    assert ram(s)["entries"] != []
    s.post("/sim/control", {"cache": "off"})
    assert ram(s)["entries"] == []


def test_ram_options_are_validated(sim_factory):
    for flag in ("--cache-ram-tokens=-1", "--cache-ram-restore-tps=-5"):
        with pytest.raises(RuntimeError) as e:
            sim_factory("--cache", "on", flag)
        assert flag.split("=")[0] in str(e.value)
    s = sim_factory("--cache", "on", "--prompt-tps", 0, "--gen-tps", 0)
    assert s.get("/sim/control").json()["settings"]["cache_ram_tokens"] == 0
    for body, field in (({"cache_ram_tokens": -1}, "cache_ram_tokens"), ({"cache_ram_tokens": 1.5}, "cache_ram_tokens"),
                        ({"cache_ram_tokens": "many"}, "cache_ram_tokens"),
                        ({"cache_ram_restore_tps": -1}, "cache_ram_restore_tps")):
        r = s.post("/sim/control", body)
        assert r.status_code == 400 and field in r.text, (body, r.text)
    got = s.post("/sim/control", {"cache_ram_tokens": 5000, "cache_ram_restore_tps": 1e6}).json()["settings"]
    assert got["cache_ram_tokens"] == 5000 and got["cache_ram_restore_tps"] == 1000000
    assert ram(s)["limit_tokens"] == 5000
