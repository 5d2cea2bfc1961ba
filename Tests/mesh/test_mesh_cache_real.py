"""Cache-aware routing in front of two real llama-servers (the tiny model, 2 slots of 1,024 tokens each),
each behind its own node; node A decides for every request. Groups of prompts that share a ~170-token
prefix: each group's later prompts go to the engine that holds its prefix, llama.cpp itself reports
reusing it, and meshd's shadow predicted what it reused: once with no host-RAM prompt cache (four
groups, one per slot), once with llama-server's default one (six groups on four slots: prompts are
saved to host RAM and restored from it)."""
from __future__ import annotations

from pathlib import Path

from meshd_e2e import Binaries, E2EError, LlamaServer, ProcessPool
from mesh_helpers import MeshBinaries, MeshNode

MODEL = "meshd-tiny"


def prefix(group: int) -> str:
    return " ".join(f"Rule {i} of handbook {group}: keep the {['red', 'blue', 'green', 'grey', 'white', 'black'][group]} door shut."
                    for i in range(10))


def samples(node: MeshNode, name: str) -> list[float]:
    return [float(l.rsplit(" ", 1)[1]) for l in node.get("/metrics").text.splitlines() if l.startswith(name + "{")]


def test_the_shadow_matches_what_llama_cpp_caches(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    run_groups(mpool, mbins, secret, ["-c", "2048", "-np", "2", "--cache-ram", "0"], groups=4)


def test_the_shadow_follows_llama_cpps_host_ram_prompt_cache(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    """llama-server's defaults (`--cache-ram` 8 GiB, `--cache-idle-slots`): six groups on four slots, so
    prompts leave their slots for host RAM and are restored from there; meshd's shadow predicts those
    restores, and llama.cpp's reported reuse agrees."""
    run_groups(mpool, mbins, secret, ["-c", "2048", "-np", "2"], groups=6)


def run_groups(mpool: ProcessPool, mbins: MeshBinaries, secret: Path, args: list[str], groups: int) -> None:
    paths = Binaries()
    try:
        servers = [LlamaServer(mpool, paths.llama_server_bin(), paths.tiny_model(), args=args) for _ in range(2)]
    except E2EError as e:
        raise AssertionError(f"a real llama-server is required (tools/build-llama.sh, tools/make-tiny-model.sh): {e}")
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[{"kind": "openai", "url": servers[0].url}])
    c = MeshNode(mpool, mbins, "C", secret=secret, engines=[{"kind": "openai", "url": servers[1].url}], peers=[b])
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b, c])
    a.wait_sees({"A": "up", "B": "up", "C": "up"}, timeout=20, models={"B": [MODEL], "C": [MODEL]})

    def ask(group: int, question: str) -> tuple[str, int, int]:
        r = a.post("/v1/chat/completions", timeout=60, json={
            "model": MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": prefix(group)}, {"role": "user", "content": question}]})
        assert r.status_code == 200, r.text
        body = r.json()
        cached = body.get("timings", {}).get("cache_n")
        if cached is None:
            cached = body["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
        return r.headers["x-meshd-node"], body["usage"]["prompt_tokens"], cached

    # One at a time, every engine idle: each new prefix goes to the emptier cache, so the four
    # spread over the two engines' four slots instead of evicting each other on one.
    homes: dict[int, str] = {}
    for g in range(groups):
        homes[g], prompt, cached = ask(g, "What is rule 1?")
        assert cached < prompt / 2, (g, prompt, cached)
    hits = 0
    total = 0
    for round_ in range(3):
        for g in range(groups):
            node, prompt, cached = ask(g, f"What is rule {round_ + 2}?")
            total += 1
            if node == homes[g] and cached >= 0.8 * prompt:
                hits += 1
            homes[g] = node
    assert hits >= total - 2, f"{hits} of {total} follow-ups found their prefix cached (homes {homes})"
    if groups > 4:
        # More groups at home on one engine than it has slots: their hits came from host RAM.
        per_engine = [sum(1 for n in homes.values() if n == name) for name in ("B", "C")]
        assert max(per_engine) >= 3, homes
    # What the shadows predicted against what llama.cpp reported, on the nodes that served.
    predicted = sum(sum(samples(n, "meshd_cache_predicted_tokens_total")) for n in (b, c))
    reported = sum(sum(samples(n, "meshd_cache_reported_tokens_total")) for n in (b, c))
    print(f"\n[cache-real] follow-ups hitting their prefix: {hits}/{total}; predicted {predicted:.0f} "
          f"vs llama.cpp's reported {reported:.0f} cached tokens; homes {homes}")
    assert reported > 0 and 0.8 * reported <= predicted <= 1.1 * reported, (predicted, reported)
    for n in (b, c):
        acc = samples(n, "meshd_cache_accuracy")
        assert acc and min(acc) > 0.85, (n.name, acc)
