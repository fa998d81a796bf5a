"""Search at scale: exact (flat) against approximate (IVF, HNSW) vector search on N x D clustered unit vectors.

Reports, as a markdown table: build time and memory of each index, single-query latency
p50/p99, recall@10 of the approximate index against exact search, and the speed-up over the
exact scan. The vectors are random but clustered like embeddings of studies that share
findings (see :class:`ClusteredVectors`); the queries are held-out points of the same
distribution. The indexes are the ones m3bind's search uses
(:mod:`m3bind.search.vectors`), with its default IVF settings unless ``--nlist`` is given.

Optionally (``--cohort`` with ``--model``) it also times indexing a cohort end to end
(reading, preprocessing, embedding, committing, FAISS), in studies per second.

    python benchmarks/search_scale.py                        # 1,000,000 x 512 (a few minutes, ~5 GB RAM)
    python benchmarks/search_scale.py --n 200000 --nprobe 16 32 64
    python benchmarks/search_scale.py --n 100000 --kinds ivf hnsw
    python benchmarks/search_scale.py --n 0 --cohort m3bind-demo/cohort --model m3bind-demo/model
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from m3bind.search.vectors import VectorIndex, VectorIndexSettings, new_vector_index, training_size

CHUNK = 50_000
K = 10


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ClusteredVectors:
    """Deterministic chunks of unit vectors: clusters in a low-dimensional latent space, mapped into D.

    Embeddings of real data lie near a low-dimensional surface of their space, so neighbours
    follow a continuous geometry that crosses any partition of the space (what makes IVF and
    HNSW miss some). Latent points are centre + ``spread`` * noise in ``latent_dim`` dimensions,
    mapped to D by a fixed random matrix, plus a little isotropic noise, then normalised.
    """

    def __init__(self, dim: int, clusters: int, spread: float, seed: int, latent_dim: int = 32, noise: float = 0.05):
        self.dim, self.spread, self.seed, self.noise = dim, spread, seed, noise
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(clusters, latent_dim)).astype(np.float32)
        self.mixing = (rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)).astype(np.float32)

    def chunk(self, start: int, size: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, start])
        latent = self.centres[rng.integers(0, len(self.centres), size)]
        latent = latent + self.spread * rng.normal(size=latent.shape).astype(np.float32)
        points = latent @ self.mixing + self.noise * rng.normal(size=(size, self.dim)).astype(np.float32)
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    def chunks(self, n: int):
        for start in range(0, n, CHUNK):
            yield start, self.chunk(start, min(CHUNK, n - start))


def build(kind: str, data: ClusteredVectors, n: int, settings: VectorIndexSettings) -> tuple[VectorIndex, float, int]:
    """The index over the first n vectors; seconds spent training and adding (not generating); RSS growth."""
    before = _rss_bytes()
    index = new_vector_index(kind, data.dim, n, settings)
    seconds = 0.0
    wanted = training_size(index)
    if wanted:
        # The first vectors are as random as any: train on them, as the index does on a sample.
        sample = np.concatenate([c for _, c in data.chunks(min(n, wanted))])
        start = time.perf_counter()
        index.train(sample)
        seconds += time.perf_counter() - start
        del sample
    for start_row, vectors in data.chunks(n):
        start = time.perf_counter()
        index.add(np.arange(start_row, start_row + len(vectors)), vectors)
        seconds += time.perf_counter() - start
    return index, seconds, _rss_bytes() - before


def latencies(index: VectorIndex, queries: np.ndarray) -> np.ndarray:
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None], K)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / K for t, f in zip(truth, found)]))


def run_vectors(args) -> list[str]:
    data = ClusteredVectors(args.dim, args.clusters, args.spread, args.seed)
    queries = data.chunk(0, args.queries, stream=1)
    rows = ["| index | build (s) | memory (MB) | query p50 (ms) | query p99 (ms) | recall@10 | speed-up vs exact |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    exact, seconds, memory = build("flat", data, args.n, VectorIndexSettings())
    print(f"flat: built in {seconds:.1f} s", file=sys.stderr)
    _, truth = exact.search(queries, K)
    exact_ms = latencies(exact, queries)
    rows.append(f"| exact (flat) | {seconds:.1f} | {memory / 2**20:.0f} | {np.median(exact_ms):.2f} | "
                f"{np.percentile(exact_ms, 99):.2f} | 1.000 | 1.0x |")
    for kind in args.kinds:
        settings = VectorIndexSettings(nlist=args.nlist)
        index, seconds, memory = build(kind, data, args.n, settings)
        print(f"{kind}: built in {seconds:.1f} s", file=sys.stderr)
        variants = ([(f"nprobe {p}", VectorIndexSettings(nlist=args.nlist, nprobe=p)) for p in args.nprobe]
                    if kind == "ivf" and args.nprobe else [("default", settings)])
        for name, variant in variants:
            index.settings = variant
            _, found = index.search(queries, K)
            ms = latencies(index, queries)
            detail = (f"nlist {index.index.nlist}, nprobe {variant.probes_for(index.index.nlist)}" if kind == "ivf"
                      else f"M {variant.hnsw_m}, efSearch {variant.ef_search}")
            rows.append(f"| {kind} ({detail}) | {seconds:.1f} | {memory / 2**20:.0f} | {np.median(ms):.2f} | "
                        f"{np.percentile(ms, 99):.2f} | {recall(truth, found):.3f} | "
                        f"{np.median(exact_ms) / np.median(ms):.1f}x |")
        del index
    return rows


def run_cohort(cohort: Path, model_dir: Path, workers: int) -> str:
    from m3bind.search.building import build_index
    from m3bind.search.model_identity import SearchModel

    manifests = sorted(cohort.glob("*/manifest.csv"))
    model = SearchModel.load(model_dir)
    with tempfile.TemporaryDirectory() as folder:
        report = build_index(model, manifests, Path(folder) / "index", workers=workers)
    return (f"cohort {cohort}: {report.embedded} studies of {len(manifests)} manifests indexed end to end in "
            f"{report.seconds:.1f} s = {report.embedded / report.seconds:.1f} studies/s ({workers} reader workers)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="number of vectors (0: skip)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0,
                        help="cluster spread in the latent space (1: clusters overlap; 0.5: apart, easier)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=["ivf"], choices=["ivf", "hnsw"])
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: m3bind's, 4 sqrt(n))")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[], help="IVF probes to compare (default: m3bind's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cohort", type=Path, help="a cohort folder (<modality>/manifest.csv) to index end to end")
    parser.add_argument("--model", type=Path, help="the saved model for --cohort")
    parser.add_argument("--workers", type=int, default=2, help="reader workers for --cohort")
    args = parser.parse_args()
    print(f"{args.n:,} x {args.dim} vectors, {args.clusters} clusters, {args.queries} single queries, "
          f"{faiss.omp_get_max_threads()} FAISS threads, {os.cpu_count()} CPUs\n")
    if args.n:
        print("\n".join(run_vectors(args)))
    if args.cohort:
        if args.model is None:
            parser.error("--cohort needs --model")
        print("\n" + run_cohort(args.cohort, args.model, args.workers))


if __name__ == "__main__":
    main()
