"""Text-query latency and QPS of the search service over a 100k-vector index, against a bare loop in the same run.

Setting: the embedded recipe's model (``configs/embedded.yaml``: ``tinynet_e`` image tower, 2-layer
128-wide BERT, 160-d embeddings), random init (latency does not depend on the weights), a WordPiece
tokenizer fitted on the captions of a few hundred drawn scenes, saved with ``save_artifact``. The
search corpus is *model-shaped*: the image embeddings of those scenes (rendered at the corpus' 240 px),
grown to ``--vectors`` rows with perturbed copies -- each copy is a base row plus Gaussian noise scaled
per dimension by the base rows' own spread (scale drawn in [0.15, 0.8], cosine to its source ~0.75-0.99),
renormalised -- so the index has the clusters and anisotropy of real embeddings rather than uniform
random vectors. It is written as the version's corpus index, the way ``align index`` writes one (Parquet
items, then the platform's ``index_written_items``): with the recipe's ``index`` settings, 100k vectors
get the ANN index (above ``index.exact_max``), whose recall@10 against exact search is measured and
reported.

- **candidate**: the platform's real path. The artifact is registered in a throwaway SQLite MLflow,
  aliased ``champion`` and deployed with ``components.serving.deploy.deploy`` (Ray Serve, FastAPI,
  ``@serve.batch`` with the recipe's ``serve.batch_size``/``batch_wait_s``, the recipe's
  ``serve.num_replicas`` replicas of ``serve.replica_cpus`` each, or ``--replicas``) on a local Ray
  head started with the recipe's ``ray.env`` (Serve's latency settings; an already-connected Ray is
  reused as it is, as in the integration test). Clients: ``concurrency`` threads, each with its own keep-alive ``httpx.Client``
  (``trust_env=False``), POST ``/v1/search {"text", "k": 10}`` until a fixed number of requests is
  done, after a warm-up. Latency is per request, as the client sees it; QPS = requests / wall time.
  The clients run on the same 2 cores as the proxy and the replica, as a local user's would.
- **baseline**: a bare in-process loop over the same artifact and the same faiss index file the replica
  serves: ``AlignEncoder.encode_texts([q])`` + ``index.search`` one query at a time, and a batched
  variant (``serve.batch_size`` queries per encode + search call; each query's latency is its batch's).
  Measured with 1 and 2 torch/faiss threads; the best one is the baseline (strict against ourselves).
- **breakdown**: per concurrency, the replica's own mean time per request (with one replica; from its ``/metrics``
  histogram: batching wait + encode + search + JSON), its mean search batch size, and the CPU time per
  request of the replica, the proxy, the controller, the clients and the rest of the machine (psutil;
  actor PIDs from Ray's GCS); the background CPU of an idle deployment; and the floor of the Serve +
  HTTP path itself, ``GET /healthz`` (no model work), at concurrency 1 and 8.

Targets (the issue): p50 <= 15 ms (at concurrency 1) and >= 100 QPS (best concurrency), for this small
CPU model on 2 cores. Every setting is measured ``--rounds`` times, alternating baseline and candidate;
the summary is the median over the *quiet* rounds: a round is disturbed when, in any of its serving
runs, processes other than ours used over 15% of the machine's CPU (all rounds count if none is quiet).
Writes bench/results/serving_latency.json with every round, the 1-min load average at each phase and
a ``likely_disturbed`` flag. About 6 minutes on a 2-core machine (3 rounds); ``--smoke`` (2k vectors,
a few requests, concurrency 1 and 2, one round) under a minute, and writes no file unless ``--out``
is given.

    .venv/bin/python bench/serving_latency.py [--vectors 100000] [--requests 500] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

TARGET_P50_MS = 15.0
TARGET_QPS = 100.0
K = 10
APP_NAME = "align-serving-bench"
CORPUS_IMAGE_SIZE = 240  # the embedded corpus' image size; eval preprocessing resizes it down
DEFAULT_OUT = Path(__file__).parent / "results" / "serving_latency.json"
_NOISE_RANGE = (0.15, 0.8)
# A serving run counts as disturbed when processes other than ours (other jobs on a shared machine) used
# more than this share of the machine's CPU during it. Quiet runs measured 2-8% (Ray's raylet and GCS).
DISTURBED_SHARE = 0.15


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _stats(latencies_s: list[float], wall_s: float, requests: int) -> dict:
    ms = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "qps": round(requests / wall_s, 1),
        "requests": requests,
    }


# --- model, corpus, artifact ---------------------------------------------------------------------------


def scenes_and_captions(count: int, seed: int) -> tuple[list, list[str]]:
    from components.data.scenes import describe, sample_scene

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    return scenes, [describe(scene, rng) for scene in scenes]


def build_model(cfg, captions: list[str]):
    """The recipe's model with random weights and a WordPiece vocab fitted on ``captions``."""
    import torch

    from components.model.align import AlignModel
    from components.model.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(captions, cfg.model.text.tokenizer_vocab_size, cfg.model.text.max_length)
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.text.vocab_size = len(tokenizer)
    torch.manual_seed(cfg.seed)
    return AlignModel(model_cfg, load_pretrained=False).eval(), tokenizer


def perturbed_corpus(base: np.ndarray, total: int, seed: int) -> np.ndarray:
    """``base`` (unit rows) plus ``total - len(base)`` renormalised perturbed copies of its rows.

    Noise is Gaussian, scaled per dimension by the base rows' standard deviation (the data's own
    anisotropy) and by a per-copy factor in ``_NOISE_RANGE`` relative to a row's length.
    """
    rng = np.random.default_rng(seed)
    base = np.asarray(base, np.float32)
    n_base, dim = base.shape
    if total < n_base:
        raise ValueError(f"--vectors {total} is below the {n_base} base embeddings")
    spread = base.std(axis=0)
    spread = spread / np.linalg.norm(spread)  # noise of unit expected length before the per-copy scale
    out = np.empty((total, dim), np.float32)
    out[:n_base] = base
    for start in range(n_base, total, 50_000):
        stop = min(total, start + 50_000)
        source = rng.integers(0, n_base, stop - start)
        scale = rng.uniform(*_NOISE_RANGE, size=(stop - start, 1)).astype(np.float32)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * spread
        rows = base[source] + scale * noise
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def write_artifact(cfg, artifact_dir: Path, base_images: int, vectors: int, seed: int) -> tuple[dict, np.ndarray, list[str]]:
    """Save the model artifact; returns facts about the corpus, its embeddings and their captions."""
    from components.data.scenes import draw_scene
    from components.model.artifact import AlignEncoder, save_artifact

    scenes, captions = scenes_and_captions(base_images, seed)
    model, tokenizer = build_model(cfg, captions)
    save_artifact(model, tokenizer, artifact_dir)
    started = time.perf_counter()
    base = AlignEncoder(model, tokenizer).encode_images([draw_scene(s, CORPUS_IMAGE_SIZE) for s in scenes])
    encode_s = time.perf_counter() - started
    embeddings = perturbed_corpus(base, vectors, seed + 1)
    pairs = base @ base.T
    off_diagonal = pairs[np.triu_indices(len(base), 1)]
    copies = embeddings[base_images:base_images + 2000]  # a sample of the copies
    nearest = (copies @ base.T).max(axis=1) if len(copies) else np.zeros(0)
    facts = {
        "base_images": base_images,
        "vectors": vectors,
        "dim": int(embeddings.shape[1]),
        "base_image_encode_s": round(encode_s, 2),
        "base_pairwise_cosine_mean": round(float(off_diagonal.mean()), 3),
        "base_pairwise_cosine_std": round(float(off_diagonal.std()), 3),
        "copy_to_nearest_base_cosine_mean": round(float(nearest.mean()), 3) if len(nearest) else None,
        "noise_scale_range": list(_NOISE_RANGE),
    }
    return facts, embeddings, [captions[i % base_images] for i in range(vectors)]


def write_corpus_index(cfg, version: str, embeddings: np.ndarray, captions: list[str]) -> tuple[str, object]:
    """The version's corpus index, as ``align index`` writes it: Parquet items, then the platform's own
    ``index_written_items`` builds the faiss index the config asks for (ANN above ``index.exact_max``,
    recall@10 measured) and the manifest. Tagged on the version, so replicas load it as in production."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.registry.store import INDEX_TAG
    from components.serving.corpus_index import ITEMS_DIR, index_uri, index_written_items

    uri = index_uri(cfg.storage.indexes_uri, cfg.registry.model_name, version, "synthetic://serving-bench")
    items = Path(uri) / ITEMS_DIR
    items.mkdir(parents=True)
    dim = embeddings.shape[1]
    table = pa.table({
        "id": pa.array([f"img-{i:06d}" for i in range(len(embeddings))]),
        "caption": pa.array(captions),
        "image": pa.array([b""] * len(embeddings), pa.binary()),  # the bench never fetches images
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), dim),
        "error": pa.array([""] * len(embeddings)),
    })
    pq.write_table(table, items / "part-00000.parquet", row_group_size=cfg.index.rows_per_group)
    manifest = index_written_items(cfg.index, uri, cfg.registry.model_name, version, "synthetic://serving-bench")
    mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri).set_model_version_tag(
        cfg.registry.model_name, version, INDEX_TAG, uri)
    return uri, manifest


def register(cfg, artifact_dir: Path, embed_dim: int) -> str:
    """Register the artifact in the config's (throwaway) MLflow and make it the champion."""
    import mlflow

    from components.registry.promotion import PROMOTED_BY_HAND, set_champion
    from components.registry.store import register_model
    from components.runtime.tracking import ensure_experiment, prepare_tracking

    prepare_tracking(cfg.storage)
    experiment_id = ensure_experiment(cfg.storage, cfg.registry.experiment)
    client = mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri)
    run_id = client.create_run(experiment_id, run_name="serving-bench").info.run_id
    version = str(register_model(cfg.storage.tracking_uri, run_id, cfg.registry.model_name, str(artifact_dir),
                                 embed_dim, {"align.bench": "serving_latency"}).version)
    client.set_terminated(run_id)
    set_champion(cfg.storage.tracking_uri, cfg.registry.model_name, version, PROMOTED_BY_HAND, "serving bench")
    return version


# --- baseline -------------------------------------------------------------------------------------------


def bare_loop(encoder, index, queries: list[str], n: int, warmup: int, threads: int, batch: int = 1) -> dict:
    """``encode_texts`` + ``index.search`` (the served faiss index), ``batch`` queries per call, in this process."""
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        def step(i: int) -> tuple[float, float]:
            texts = [queries[(i + j) % len(queries)] for j in range(batch)]
            started = time.perf_counter()
            vectors = encoder.encode_texts(texts)
            encoded = time.perf_counter()
            index.search(vectors, K)
            return encoded - started, time.perf_counter() - encoded

        for i in range(warmup):
            step(i * batch)
        steps = max(1, n // batch)
        latencies, encode, search = [], [], []
        started = time.perf_counter()
        for i in range(steps):
            e, s = step((warmup + i) * batch)
            encode.append(e)
            search.append(s)
            latencies.append(e + s)
        wall = time.perf_counter() - started
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)
    out = _stats(latencies, wall, steps * batch)
    out |= {"threads": threads, "batch": batch,
            "encode_p50_ms": round(float(np.median(encode)) * 1e3, 2),
            "search_p50_ms": round(float(np.median(search)) * 1e3, 2)}
    return out


# --- candidate ------------------------------------------------------------------------------------------


def drive(clients: list, send: Callable, n: int, check: Callable, connect_first: bool = True) -> dict:
    """``len(clients)`` threads share ``n`` requests and start together. With ``connect_first`` each first
    sends one untimed request to open its keep-alive connection. Returns latency stats, QPS and failures."""
    lock, counter = threading.Lock(), [0]
    latencies: list[float] = []
    failures: list[str] = []
    barrier = threading.Barrier(len(clients) + 1)

    def worker(w: int) -> None:
        client = clients[w]
        try:
            if connect_first:
                send(client, w)
        except Exception as exc:  # noqa: BLE001 -- counted, reported
            with lock:
                failures.append(f"connect: {exc!r}")
        barrier.wait()
        while True:
            with lock:
                i = counter[0]
                if i >= n:
                    return
                counter[0] += 1
            started = time.perf_counter()
            try:
                response = send(client, i)
                elapsed = time.perf_counter() - started
                problem = check(response)
            except Exception as exc:  # noqa: BLE001
                elapsed, problem = time.perf_counter() - started, repr(exc)
            with lock:
                latencies.append(elapsed)
                if problem:
                    failures.append(problem)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(len(clients))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return _stats(latencies, wall, n) | {"concurrency": len(clients), "failures": len(failures),
                                         "failure_examples": failures[:3]}


def replica_counters(http, url: str) -> dict[str, float]:
    """Sums and counts of the replica's search latency and search batch-size histograms."""
    wanted = {('align_serve_request_seconds_sum', 'endpoint="/v1/search"'): "latency_sum",
              ('align_serve_request_seconds_count', 'endpoint="/v1/search"'): "latency_count",
              ('align_serve_encoder_batch_size_sum', 'modality="search"'): "batch_sum",
              ('align_serve_encoder_batch_size_count', 'modality="search"'): "batch_count"}
    out = dict.fromkeys(wanted.values(), 0.0)
    for line in http.get(f"{url}/metrics").text.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("}")
        key = wanted.get((name, labels))
        if key:
            out[key] = float(value.strip())
    return out


def serve_processes() -> dict[str, list[int]]:
    """PIDs of this cluster's replicas, proxy and controller (best effort: Ray's GCS actor table)."""
    try:
        from ray._private.state import actors

        table = actors(actor_state_name="ALIVE")
    except Exception:  # noqa: BLE001 -- a private API; the CPU breakdown is optional
        return {}
    roles = {"replicas": f"ServeReplica:{APP_NAME}:", "proxy": "ProxyActor", "controller": "ServeController"}
    out: dict[str, list[int]] = {}
    for info in table.values():
        for role, prefix in roles.items():
            if info["ActorClassName"].startswith(prefix) and info["Pid"]:
                out.setdefault(role, []).append(info["Pid"])
    return out


class CpuMeter:
    """CPU seconds used by the serving processes (summed per role), by this (client) process and by the
    whole machine."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        import psutil

        self.psutil = psutil
        self.processes: dict[str, list] = {}
        for role, role_pids in pids.items():
            for pid in role_pids:
                try:
                    self.processes.setdefault(role, []).append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
        self.processes["client"] = [psutil.Process()]

    def snapshot(self) -> dict[str, float]:
        out = {}
        for role, processes in self.processes.items():
            try:
                out[role] = sum(t.user + t.system for t in (process.cpu_times() for process in processes))
            except self.psutil.NoSuchProcess:
                out[role] = float("nan")
        machine = self.psutil.cpu_times()
        out["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return out

    @staticmethod
    def per_request_ms(before: dict, after: dict, requests: int) -> dict[str, float]:
        used = {role: after[role] - before[role] for role in before}
        used["rest_of_machine"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
        return {role: round(1e3 * value / requests, 2) for role, value in used.items()}


def disturbed(cpu_ms_per_request: dict[str, float]) -> bool:
    machine = cpu_ms_per_request.get("machine", 0.0)
    return machine > 0 and cpu_ms_per_request.get("rest_of_machine", 0.0) / machine > DISTURBED_SHARE


def serving_runs(url: str, queries: list[str], concurrencies: list[int], n: int, warmup: int, replicas: int) -> dict:
    """Client-side latency/QPS and CPU per request; the replica's own histograms only with one replica,
    since ``/metrics`` answers from whichever replica Serve picks and two scrapes may come from two."""
    import httpx

    def search(client, i: int):
        return client.post(f"{url}/v1/search", json={"text": queries[i % len(queries)], "k": K})

    def check_search(response) -> str:
        if response.status_code != 200:
            return f"{response.status_code}: {response.text[:200]}"
        if len(response.json()["results"]) != K:
            return f"{len(response.json()['results'])} results instead of {K}"
        return ""

    def healthz(client, i: int):
        return client.get(f"{url}/healthz")

    def check_ok(response) -> str:
        return "" if response.status_code == 200 else f"{response.status_code}: {response.text[:200]}"

    meter = CpuMeter(serve_processes())
    # Background CPU with no traffic (controller loops, metrics pushes, health checks, the champion
    # follower): per request it is this rate divided by the QPS, so it weighs most at concurrency 1.
    idle_s = 3.0 if n >= 100 else 1.0
    before = meter.snapshot()
    time.sleep(idle_s)
    after = meter.snapshot()
    idle = {role: round(1e3 * (after[role] - before[role]) / idle_s, 1) for role in before}
    print(f"  idle CPU ms per second: {idle}", flush=True)
    results: dict = {"search": {}, "healthz": {}, "idle_cpu_ms_per_s": idle}
    with httpx.Client(timeout=30, trust_env=False) as probe:
        for concurrency in concurrencies:
            clients = [httpx.Client(timeout=30, trust_env=False) for _ in range(concurrency)]
            try:
                drive(clients, search, warmup, check_search)
                before = replica_counters(probe, url) if replicas == 1 else {}
                cpu_before = meter.snapshot()
                run = drive(clients, search, n, check_search, connect_first=False)  # warm-up opened them
                cpu_after = meter.snapshot()
                after = replica_counters(probe, url) if replicas == 1 else {}
            finally:
                for client in clients:
                    client.close()
            delta = {key: after[key] - before[key] for key in after}
            run["replica_mean_ms"] = round(1e3 * delta["latency_sum"] / max(1.0, delta["latency_count"]), 2) if delta else None
            run["mean_search_batch"] = round(delta["batch_sum"] / max(1.0, delta["batch_count"]), 2) if delta else None
            run["cpu_ms_per_request"] = meter.per_request_ms(cpu_before, cpu_after, n)
            run["disturbed"] = disturbed(run["cpu_ms_per_request"])
            run["load_1m"] = _load()
            results["search"][str(concurrency)] = run
            print(f"  serve c={concurrency:<3d} p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
                  f"{run['qps']:7.1f} QPS  (in replica {run['replica_mean_ms']} ms, batch {run['mean_search_batch']}, "
                  f"failures {run['failures']}{', DISTURBED' if run['disturbed'] else ''})\n"
                  f"        CPU ms per request: {run['cpu_ms_per_request']}", flush=True)
        for concurrency in sorted({1, min(8, max(concurrencies))}):
            clients = [httpx.Client(timeout=30, trust_env=False) for _ in range(concurrency)]
            try:
                drive(clients, healthz, warmup, check_ok)
                cpu_before = meter.snapshot()
                run = drive(clients, healthz, n, check_ok, connect_first=False)
                run["cpu_ms_per_request"] = meter.per_request_ms(cpu_before, meter.snapshot(), n)
            finally:
                for client in clients:
                    client.close()
            results["healthz"][str(concurrency)] = run
            print(f"  /healthz c={concurrency:<3d} p50 {run['p50_ms']:7.2f} ms  {run['qps']:7.1f} QPS", flush=True)
    return results


# --- orchestration --------------------------------------------------------------------------------------


def _median_runs(runs: list[dict]) -> dict:
    keys = ("p50_ms", "p99_ms", "mean_ms", "qps", "replica_mean_ms", "mean_search_batch", "encode_p50_ms", "search_p50_ms")
    out = {key: round(statistics.median(r[key] for r in runs), 2) for key in keys if runs[0].get(key) is not None}
    if "failures" in runs[0]:
        out["failures"] = sum(r["failures"] for r in runs)
    if "cpu_ms_per_request" in runs[0]:
        out["cpu_ms_per_request"] = {role: round(statistics.median(r["cpu_ms_per_request"][role] for r in runs), 2)
                                     for role in runs[0]["cpu_ms_per_request"]}
    return out


def summarise(all_rounds: list[dict], concurrencies: list[int]) -> dict:
    """Medians over the quiet rounds (no serving run disturbed by other work), or over all rounds if none."""
    quiet = [i for i, r in enumerate(all_rounds) if not any(run.get("disturbed") for run in r["serving"]["search"].values())]
    used = quiet or list(range(len(all_rounds)))
    rounds = [all_rounds[i] for i in used]
    baseline = {name: _median_runs([r["baseline"][name] for r in rounds]) for name in rounds[0]["baseline"]}
    search = {c: _median_runs([r["serving"]["search"][c] for r in rounds]) for c in map(str, concurrencies)}
    healthz = {c: _median_runs([r["serving"]["healthz"][c] for r in rounds]) for c in rounds[0]["serving"]["healthz"]}
    single = {n: v for n, v in baseline.items() if n.startswith("single")}
    best_single = min(single, key=lambda n: single[n]["p50_ms"])
    best_qps = max(baseline, key=lambda n: baseline[n]["qps"])
    p50_c1 = search["1"]["p50_ms"]
    peak = max(search, key=lambda c: search[c]["qps"])
    both = [c for c in search if search[c]["p50_ms"] <= TARGET_P50_MS and search[c]["qps"] >= TARGET_QPS]
    return {
        "summary_rounds": [i + 1 for i in used],
        "summary_basis": "quiet rounds" if quiet else "all rounds (every round was disturbed by other work)",
        "baseline": baseline,
        "serving_search": search,
        "serving_healthz": healthz,
        "baseline_best_single": best_single,
        "baseline_best_qps": best_qps,
        "serving_p50_ms_at_c1": p50_c1,
        "serving_peak_qps": search[peak]["qps"],
        "serving_peak_qps_concurrency": int(peak),
        "serving_p50_ms_at_peak": search[peak]["p50_ms"],
        "ratio_p50_vs_target": round(p50_c1 / TARGET_P50_MS, 3),  # <= 1 meets it
        "ratio_qps_vs_target": round(search[peak]["qps"] / TARGET_QPS, 3),  # >= 1 meets it
        "meets_p50_target": p50_c1 <= TARGET_P50_MS,
        "meets_qps_target": search[peak]["qps"] >= TARGET_QPS,
        "concurrencies_meeting_both": [int(c) for c in both],
        "ratio_p50_vs_bare_single": round(p50_c1 / single[best_single]["p50_ms"], 3),
        "ratio_qps_vs_bare_best": round(search[peak]["qps"] / baseline[best_qps]["qps"], 3),
        "failures": sum(v["failures"] for v in search.values()) + sum(v["failures"] for v in healthz.values()),
    }


def print_table(summary: dict) -> None:
    print(f"\nmedians over rounds {summary['summary_rounds']} ({summary['summary_basis']})")
    print(f"{'path':<44} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8}")
    for name, run in summary["baseline"].items():
        print(f"{'bare ' + name:<44} {run['p50_ms']:8.2f} {run['p99_ms']:8.2f} {run['qps']:8.1f}"
              f"   (encode {run['encode_p50_ms']} ms, search {run['search_p50_ms']} ms per call)")
    for c, run in summary["serving_search"].items():
        print(f"{'serve /v1/search, concurrency ' + c:<44} {run['p50_ms']:8.2f} {run['p99_ms']:8.2f} {run['qps']:8.1f}"
              + (f"   (in replica {run['replica_mean_ms']} ms, search batch {run['mean_search_batch']})"
                 if "replica_mean_ms" in run else ""))
    for c, run in summary["serving_healthz"].items():
        print(f"{'serve /healthz (no model work), concurrency ' + c:<44} {run['p50_ms']:8.2f} {run['p99_ms']:8.2f} {run['qps']:8.1f}")
    print("\nCPU ms per request (median over rounds):")
    for name, runs in (("/v1/search", summary["serving_search"]), ("/healthz", summary["serving_healthz"])):
        for c, run in runs.items():
            print(f"  {name} c={c}: {run.get('cpu_ms_per_request')}")
    print(f"\np50 at concurrency 1: {summary['serving_p50_ms_at_c1']} ms (target <= {TARGET_P50_MS}; "
          f"ratio {summary['ratio_p50_vs_target']}) -> {'met' if summary['meets_p50_target'] else 'MISSED'}")
    print(f"peak QPS: {summary['serving_peak_qps']} at concurrency {summary['serving_peak_qps_concurrency']} "
          f"(target >= {TARGET_QPS}; ratio {summary['ratio_qps_vs_target']}) -> "
          f"{'met' if summary['meets_qps_target'] else 'MISSED'}")
    print(f"vs bare loop: p50 x{summary['ratio_p50_vs_bare_single']} ({summary['baseline_best_single']}), "
          f"QPS x{summary['ratio_qps_vs_bare_best']} ({summary['baseline_best_qps']})", flush=True)


def _connect(cfg) -> bool:
    """Connect to Ray; True when this process connected (and so must disconnect and stop the local head).

    An already-connected Ray (the integration tests' session head) is reused as it is. Otherwise this is
    ``components.runtime.ray_cluster.connect``'s local head, joined without ``log_to_driver``: Serve logs
    every request, and streaming those lines into this process would take CPU from the clients.
    """
    import logging

    import ray

    from components.runtime.ray_cluster import ensure_local_head, stop_local_head

    if ray.is_initialized():
        return False
    address = ensure_local_head(cfg)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except BaseException:
        stop_local_head(cfg.storage.home)  # e.g. RAY_AUTH_MODE=token was not set before Ray was imported
        raise
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000, help="index rows (base embeddings + perturbed copies)")
    parser.add_argument("--base-images", type=int, default=400, help="drawn scenes whose embeddings seed the corpus")
    parser.add_argument("--requests", type=int, default=500, help="timed requests per concurrency and per baseline")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client concurrencies")
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/serving rounds; median reported")
    parser.add_argument("--replicas", type=int, default=0, help="serving replicas (default: the recipe's serve.num_replicas)")
    parser.add_argument("--smoke", action="store_true", help="tiny corpus, few requests, concurrency 1,2 (< 60 s)")
    parser.add_argument("--out", default=None, help=f"results JSON (default {DEFAULT_OUT}; none with --smoke)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vectors, args.base_images, args.requests, args.warmup = 2000, 40, 20, 4
        args.concurrency, args.rounds = "1,2", 1
    concurrencies = sorted({int(c) for c in args.concurrency.split(",")} | {1})
    out = Path(args.out) if args.out else (None if args.smoke else DEFAULT_OUT)
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_AUTH_MODE": "token"}.items():
        os.environ.setdefault(key, value)

    phases: dict[str, float] = {}
    clock = [time.perf_counter()]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(phases.get(name, 0.0) + now - clock[0], 1)
        clock[0] = now

    started = clock[0]
    from components.config import load_config
    from components.model.artifact import load_encoder
    from components.runtime.ray_cluster import free_port, stop_local_head
    from components.serving.ann import load_index
    from components.serving.corpus_index import INDEX_FILE
    from components.serving.deploy import deploy

    phase("imports")
    loads = {"start": _load()}
    with tempfile.TemporaryDirectory(prefix="align-serving-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = load_config(None, overrides=[f"storage.home={tmp / 'home'}"])
        artifact_dir = tmp / "artifact"
        corpus, embeddings, captions = write_artifact(cfg, artifact_dir, args.base_images, args.vectors, cfg.seed)
        _, queries = scenes_and_captions(256, cfg.seed + 1000)  # unseen captions of new scenes
        encoder = load_encoder(artifact_dir)
        print(f"corpus: {corpus}", flush=True)
        phase("model_and_corpus")
        version = register(cfg, artifact_dir, corpus["dim"])
        phase("register")
        index_location, manifest = write_corpus_index(cfg, version, embeddings, captions)
        index = load_index(Path(index_location) / INDEX_FILE)  # the very index the replica serves
        corpus |= {"index": manifest.spec, "index_recall_at_10": manifest.recall_at_10,
                   "index_build_s": manifest.build_s}
        print(f"index: {manifest.spec}, recall@10 vs exact {manifest.recall_at_10}, built in {manifest.build_s} s",
              flush=True)
        phase("index")
        serve_cfg = cfg.serve.model_copy(update={"port": free_port(), "app_name": APP_NAME, "ready_timeout_s": 300.0,
                                                 "num_replicas": args.replicas or cfg.serve.num_replicas})

        from ray import serve

        owns_ray = _connect(cfg)
        phase("connect_ray")
        try:
            url = deploy(serve_cfg, cfg.registry, cfg.storage.tracking_uri, expect_version=version)
            phase("deploy")
            loads["after_setup"] = _load()
            print(f"deployed version {version} at {url} in {phases['deploy']}s", flush=True)
            rounds = []
            for r in range(args.rounds):
                baseline = {}
                for threads in (1, 2):
                    baseline[f"single, {threads} thread{'s' * (threads > 1)}"] = bare_loop(
                        encoder, index, queries, args.requests, args.warmup, threads)
                    baseline[f"batched {serve_cfg.batch_size}, {threads} thread{'s' * (threads > 1)}"] = bare_loop(
                        encoder, index, queries, args.requests, max(1, args.warmup // serve_cfg.batch_size),
                        threads, batch=serve_cfg.batch_size)
                for name, run in baseline.items():
                    print(f"  round {r + 1} bare {name}: p50 {run['p50_ms']} ms, {run['qps']} QPS "
                          f"(encode {run['encode_p50_ms']} ms, search {run['search_p50_ms']} ms)", flush=True)
                load_baseline = _load()
                serving = serving_runs(url, queries, concurrencies, args.requests, args.warmup, serve_cfg.num_replicas)
                rounds.append({"baseline": baseline, "serving": serving,
                               "load_1m": {"after_baseline": load_baseline, "after_serving": _load()}})
            phase("measure")
        finally:
            try:
                serve.shutdown()
            finally:
                if owns_ray:
                    import ray

                    ray.shutdown()
                    stop_local_head(cfg.storage.home)
    phase("shutdown")

    summary = summarise(rounds, concurrencies)
    loads["end"] = _load()
    all_loads = [v for v in loads.values()] + [v for r in rounds for v in r["load_1m"].values()]
    result = {
        "setting": {
            "model": {"image_tower": cfg.model.image_tower, "eval_preprocess": cfg.model.eval_preprocess,
                      "text": cfg.model.text.model_dump(include={"hidden_size", "num_layers", "num_heads", "max_length"}),
                      "weights": "random init"},
            "corpus": corpus,
            "k": K,
            "serve": serve_cfg.model_dump(include={"batch_size", "batch_wait_s", "replica_cpus", "num_replicas"}),
            # Ray sets OMP_NUM_THREADS = max(1, floor(num_cpus)) in an actor, so torch and faiss run 1 thread.
            "replica_threads": max(1, int(serve_cfg.replica_cpus)),
            "concurrencies": concurrencies,
            "requests_per_setting": args.requests,
            "warmup_requests": args.warmup,
            "rounds": args.rounds,
            "cpu_count": os.cpu_count(),
            "smoke": args.smoke,
        },
        "phases_s": phases,
        "wall_s": round(time.perf_counter() - started, 1),
        "rounds": rounds,
        **summary,
        "targets": {"p50_ms_at_concurrency_1": TARGET_P50_MS, "qps": TARGET_QPS},
        "load_average_1m": loads,
        # True when no round was quiet (see DISTURBED_SHARE): the summary then includes others' work. The
        # 1-min load is reported too, but our own serving phase alone keeps it near 3 on 2 cores.
        "likely_disturbed": summary["summary_basis"] != "quiet rounds",
        "max_load_1m": max(all_loads),
    }
    print_table(summary)
    print(f"1-min load average: {loads} (per round: {[r['load_1m'] for r in rounds]})", flush=True)
    print(f"phases (s): {phases}, wall {result['wall_s']} s", flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
