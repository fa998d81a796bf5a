"""A bounded load test of the search server on 127.0.0.1: throughput, latency p50/p99 and errors.

It starts the server itself (uvicorn, a free loopback port) over an existing index, then sends
a fixed number of mixed requests at each concurrency level: text searches and searches by an
uploaded study (files of the index itself; a WFDB record goes as a zip, as a user would send
it). Every level stops after its requests, or after ``--max-seconds``, whichever comes first;
nothing is sent anywhere but the loopback interface.

    python benchmarks/serve_load.py --index m3bind-demo/index --model m3bind-demo/model
    python benchmarks/serve_load.py --index INDEX --model MODEL --requests 200 --concurrency 1 8 --upload-share 0.5
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import random
import socket
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

QUERIES = ["large left pleural effusion", "moderate cardiomegaly", "atrial fibrillation with rapid ventricular rate",
           "ST elevation in the inferior leads", "pulmonary nodule in the right upper lobe", "emphysema",
           "proliferative diabetic retinopathy", "glaucomatous optic disc cupping", "necrosis in the tumour",
           "adenocarcinoma with glandular architecture", "no acute cardiopulmonary process", "pericardial effusion"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, model: Path, max_concurrent: int):
    import uvicorn

    from m3bind.search.limits import ServeSettings
    from m3bind.search.server import create_app

    app = create_app(index, model, ServeSettings(max_concurrent=max_concurrent))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    return server, thread, port


def upload_samples(index: Path, per_modality: int) -> list[tuple[str, str, bytes]]:
    """(file name, modality, bytes) of a few studies of the index, zipped when they are several files."""
    from m3bind.search.index import SearchIndex

    opened = SearchIndex.open(index)
    samples = []
    try:
        for modality in opened.modalities:
            ids = opened.store.filter_ids(modalities=[modality])[:per_modality].tolist()
            for record in opened.store.records(ids).values():
                path = Path(record.path)
                if path.suffix.lower() in (".hea", ".dat"):
                    buffer = io.BytesIO()
                    with zipfile.ZipFile(buffer, "w") as bundle:
                        for part in (path.with_suffix(".hea"), path.with_suffix(".dat")):
                            bundle.write(part, part.name)
                    samples.append((f"{path.stem}.zip", modality, buffer.getvalue()))
                elif path.is_file():
                    samples.append((path.name, modality, path.read_bytes()))
    finally:
        opened.close()
    return samples


def _multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self.local, "connection", None) is None:
            self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return self.local.connection

    def post(self, path: str, body: bytes, content_type: str) -> int:
        connection = self._connection()
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            self.local.connection = None
            return 0


def run_level(client: Client, concurrency: int, requests: int, upload_share: float, samples, k: int,
              max_seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    plan = ["upload" if samples and rng.random() < upload_share else "text" for _ in range(requests)]
    results: list[tuple[str, float, int]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + max_seconds

    def one(i: int) -> None:
        if time.perf_counter() > stop_at:
            return
        if plan[i] == "text":
            body = json.dumps({"text": QUERIES[i % len(QUERIES)], "k": k}).encode()
            start = time.perf_counter()
            status = client.post("/api/search/text", body, "application/json")
        else:
            name, modality, content = samples[i % len(samples)]
            body, content_type = _multipart({"modality": modality, "k": str(k)}, name, content)
            start = time.perf_counter()
            status = client.post("/api/search/study", body, content_type)
        with lock:
            results.append((plan[i], time.perf_counter() - start, status))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - start
    latencies = np.array([seconds for _, seconds, _ in results]) * 1000
    by_kind = {kind: np.array([s for t, s, _ in results if t == kind]) * 1000 for kind in ("text", "upload")}
    return {"concurrency": concurrency, "sent": len(results), "seconds": elapsed,
            "throughput": len(results) / elapsed, "p50": float(np.median(latencies)),
            "p99": float(np.percentile(latencies, 99)), "errors": sum(status != 200 for _, _, status in results),
            "text_p50": float(np.median(by_kind["text"])) if len(by_kind["text"]) else float("nan"),
            "upload_p50": float(np.median(by_kind["upload"])) if len(by_kind["upload"]) else float("nan"),
            "uploads": len(by_kind["upload"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=700, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--upload-share", type=float, default=0.25, help="share of study-upload requests")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-concurrent", type=int, default=4, help="the server's work slots")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time limit per level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    samples = upload_samples(args.index, per_modality=4)
    server, thread, port = start_server(args.index, args.model, args.max_concurrent)
    client = Client(port)
    try:
        client.post("/api/search/text", json.dumps({"text": "warm-up", "k": 1}).encode(), "application/json")
        rows = [run_level(client, c, args.requests, args.upload_share, samples, args.k, args.max_seconds, args.seed + c)
                for c in args.concurrency]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    print(f"server on 127.0.0.1 with {args.max_concurrent} work slots; {args.requests} requests per level, "
          f"{args.upload_share:.0%} uploads ({len(samples)} sample studies), k={args.k}\n")
    print("| clients | requests (uploads) | seconds | throughput (req/s) | p50 (ms) | p99 (ms) | "
          "text p50 (ms) | upload p50 (ms) | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['concurrency']} | {row['sent']} ({row['uploads']}) | {row['seconds']:.1f} | "
              f"{row['throughput']:.1f} | {row['p50']:.1f} | {row['p99']:.1f} | {row['text_p50']:.1f} | "
              f"{row['upload_p50']:.1f} | {row['errors']} |")


if __name__ == "__main__":
    main()
