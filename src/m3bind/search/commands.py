"""The search commands of the ``m3bind`` CLI: ``index``, ``merge-index``, ``search`` and ``serve``.

:func:`register` adds them to the CLI's typer app. Like every command, they are thin: parse
options, call the library, print a summary; library errors become one red line and exit code 2.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from m3bind.errors import ConfigError
from m3bind.output import friendly_errors as friendly_errors_on
from m3bind.output import progress_display, quiet_libraries

_MAX_SKIPS_SHOWN = 10
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer, console: Console) -> None:
    """Add the search commands to ``app``; they print to ``console``."""

    friendly_errors = friendly_errors_on(console)

    def progress_bar():
        return progress_display(console)

    @app.command("index")
    @friendly_errors
    def index_command(
        model: Path = typer.Argument(..., help="The saved bound model folder."),
        manifests: Optional[list[Path]] = typer.Argument(None, help="Manifests (CSV, JSONL, Parquet) of the studies."),
        out: Path = typer.Option(..., "--out", help="The index folder (with --shard: the folder of the shards)."),
        add: bool = typer.Option(False, "--add", help="Add the manifests' new studies to an existing index."),
        remove: Optional[list[int]] = typer.Option(None, "--remove", help="Remove the study with this id (repeatable)."),
        modality: Optional[str] = typer.Option(None, "--modality", "-m",
                                               help="Modality of manifests that have no modality column."),
        index_type: Optional[str] = typer.Option(None, "--index-type",
                                                 help="auto (default), flat (exact), ivf or hnsw."),
        exact_threshold: Optional[int] = typer.Option(None, "--exact-threshold", min=1,
                                                      help="auto: largest index kept exact (default 100000)."),
        nlist: Optional[int] = typer.Option(None, "--nlist", min=1, help="IVF lists (default 4 sqrt(n))."),
        nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, help="IVF lists scanned per query."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Studies embedded per batch (and commit)."),
        workers: int = typer.Option(2, "--workers", min=0, help="Processes reading and preprocessing studies."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unusable studies (listed at the end) "
                                                                "instead of stopping at the first."),
        shard: Optional[str] = typer.Option(None, "--shard", help="Build shard 'i/n' of the studies, or 'auto': "
                                                                  "RANK/WORLD_SIZE from torchrun or accelerate."),
        device: str = typer.Option("auto", "--device", help="auto (cuda:LOCAL_RANK when there is a GPU), cpu, cuda:0..."),
    ) -> None:
        """Embed the studies of manifests into a search index (resumable: run it again after an interruption)."""
        quiet_libraries()  # these load the model: no third-party progress bars in our output
        from m3bind.search.building import build_index, remove_studies
        from m3bind.search.model_identity import SearchModel

        if not manifests and not remove:
            raise ConfigError("give manifests to index, or --remove ID to remove studies")
        shard_record = _shard(shard)
        folder = out / f"shard-{shard_record.index}-of-{shard_record.count}" if shard_record else out
        settings = _vector_settings(folder, index_type=index_type, exact_threshold=exact_threshold, nlist=nlist,
                                    nprobe=nprobe)
        loaded = SearchModel.load(model, device=_device(device))
        if manifests:
            with progress_bar() as bar:
                task = bar.add_task(f"indexing into {folder}", total=None)
                report = build_index(loaded, manifests, folder, add=add, modality=modality,
                                     settings=settings, shard=shard_record, on_error="skip" if skip_bad else "raise",
                                     batch_size=batch_size, workers=workers,
                                     progress=lambda done, total: bar.update(task, completed=done, total=total))
            rate = report.embedded / report.seconds if report.seconds else 0.0
            console.print(f"embedded {report.embedded} studies in {report.seconds:.1f} s ({rate:.1f} studies/s); "
                          f"{report.already_indexed} were already indexed")
            if report.repeated:
                first = report.repeated[0]
                console.print(f"[yellow]{len(report.repeated)} manifest rows name a study an earlier row already "
                              f"named (the first: {escape(first.manifest)}, row {first.row}, as "
                              f"{escape(first.first)}); each study is indexed once, with its first row's report "
                              "and labels[/]", soft_wrap=True)
            if report.skipped:
                console.print(f"[yellow]skipped {len(report.skipped)} unusable studies:[/]")
                for skipped in report.skipped[:_MAX_SKIPS_SHOWN]:
                    console.print(f"  {escape(skipped.problem)}", soft_wrap=True)
                if len(report.skipped) > _MAX_SKIPS_SHOWN:
                    console.print(f"  ... and {len(report.skipped) - _MAX_SKIPS_SHOWN} more")
        if remove:
            report = remove_studies(loaded, folder, remove)
            console.print(f"removed {report.removed} studies")
        console.print(f"index {folder}: {report.total} studies, {report.kind} vector index")

    @app.command("merge-index")
    @friendly_errors
    def merge_command(
        shards: list[Path] = typer.Argument(..., help="The shard folders (all n of a --shard i/n build)."),
        out: Path = typer.Option(..., "--out", help="The merged index folder (new)."),
        index_type: Optional[str] = typer.Option(None, "--index-type", help="auto, flat, ivf or hnsw."),
    ) -> None:
        """Merge shard indexes built in separate processes or machines into one index."""
        from m3bind.search.building import merge_indexes

        settings = _vector_settings(shards[0], index_type=index_type)
        with progress_bar() as bar:
            task = bar.add_task(f"merging into {out}", total=None)
            report = merge_indexes(shards, out, settings=settings,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        console.print(f"index {out}: {report.total} studies from {len(shards)} shards "
                      f"({report.already_indexed} duplicates dropped), {report.kind} vector index")

    @app.command("search")
    @friendly_errors
    def search_command(
        index: Path = typer.Argument(..., help="The index folder."),
        model: Path = typer.Option(..., "--model", help="The model that made the index."),
        text: Optional[str] = typer.Option(None, "--text", help="Search by this text."),
        study: Optional[Path] = typer.Option(None, "--study", help="Search by this study file (or DICOM folder)."),
        modality: Optional[str] = typer.Option(None, "--modality", "-m", help="The modality of --study."),
        k: int = typer.Option(10, "-k", "--k", min=1, help="Number of results."),
        modality_filter: Optional[list[str]] = typer.Option(None, "--modality-filter",
                                                            help="Only results of this modality (repeatable)."),
        label: Optional[list[str]] = typer.Option(None, "--label", help="Only results with this label (repeatable: all)."),
        patient: Optional[str] = typer.Option(None, "--patient", help="Only results of this patient id."),
        per_modality: bool = typer.Option(False, "--per-modality", help="k results of each modality, not k in all."),
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    ) -> None:
        """Search an index by text or by a study of any modality."""
        quiet_libraries()  # these load the model: no third-party progress bars in our output
        from m3bind.search.index import SearchIndex
        from m3bind.search.model_identity import SearchModel
        from m3bind.search.query import search_study, search_text

        if (text is None) == (study is None):
            raise ConfigError("give either --text or --study (with --modality)")
        if study is not None and modality is None:
            raise ConfigError("--study needs --modality (the study's modality)")
        opened = SearchIndex.open(index)
        try:
            loaded = SearchModel.load(model, expected_fingerprint=opened.description.model.fingerprint)
            filters = dict(modalities=modality_filter or None, labels=label or None, patient=patient,
                           per_modality=per_modality)
            hits = (search_text(opened, loaded, text, k, **filters) if text is not None
                    else search_study(opened, loaded, study, modality, k, **filters))
        finally:
            opened.close()
        if as_json:
            console.print(json.dumps({"hits": [hit.to_json() for hit in hits]}), markup=False, highlight=False,
                          soft_wrap=True)
            return
        table = Table(title=f"top {len(hits)} for {text!r}" if text is not None else f"top {len(hits)} like {study}")
        for column in ("#", "score", "modality", "id", "patient", "labels", "report", "path"):
            table.add_column(column, overflow="fold")
        for rank, hit in enumerate(hits, start=1):
            record = hit.study
            report = record.report if len(record.report) <= 80 else record.report[:77] + "..."
            table.add_row(str(rank), f"{hit.score:.3f}", record.modality, str(record.id), record.patient_id,
                          ", ".join(record.labels), escape(report), escape(record.path))
        console.print(table)

    @app.command("serve")
    @friendly_errors
    def serve_command(
        index: Path = typer.Argument(..., help="The index folder."),
        model: Path = typer.Option(..., "--model", help="The model that made the index."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
        port: int = typer.Option(8000, "--port", min=1, max=65535),
        token_file: Optional[Path] = typer.Option(
            None, "--token-file", help="File holding the bearer token (else the M3BIND_SERVE_TOKEN environment "
                                       "variable, if set); never give the token itself on the command line."),
        max_upload_mb: float = typer.Option(256.0, "--max-upload-mb", min=0.001, help="Largest upload."),
        timeout_s: float = typer.Option(60.0, "--timeout-s", min=0.001, help="Longest time one request may work."),
        max_k: int = typer.Option(100, "--max-k", min=1, help="Most results one search may ask for."),
        max_concurrent: int = typer.Option(4, "--max-concurrent", min=1, help="Requests working at once."),
    ) -> None:
        """Serve the index: an HTTP API and a search page (http://HOST:PORT/)."""
        quiet_libraries()  # these load the model: no third-party progress bars in our output
        import uvicorn

        from m3bind.search.limits import ServeSettings, read_token
        from m3bind.search.server import create_app

        token = read_token(token_file)
        settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 2**20), request_timeout_s=timeout_s,
                                 max_k=max_k, max_concurrent=max_concurrent, token=token)
        app_ = create_app(index, model, settings)
        if host not in _LOOPBACK_HOSTS and token is None:
            console.print(f"[yellow]warning:[/] listening on {host} without a token: anyone who can reach this "
                          "machine can search the index and see its reports")
        console.print(f"serving {index} on http://{host}:{port}/ (API description: /docs)"
                      + (" - bearer token required" if token else ""))
        uvicorn.run(app_, host=host, port=port, log_level="info")


def _shard(value: str | None):
    """A ShardRecord from 'i/n', or from RANK and WORLD_SIZE (set by torchrun and accelerate launch) for 'auto'."""
    from m3bind.search.layout import ShardRecord

    if value is None:
        return None
    if value == "auto":
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            raise ConfigError("--shard auto needs RANK and WORLD_SIZE in the environment (start the command with "
                              "torchrun or accelerate launch), or give --shard i/n")
        value = f"{rank}/{world}"
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit()) or int(index) >= int(count):
        raise ConfigError(f"--shard {value!r}: expected 'i/n' with 0 <= i < n, e.g. 0/4")
    return ShardRecord(index=int(index), count=int(count))


def _vector_settings(folder: Path, **overrides):
    """The vector index settings: the existing index's (or the defaults) with the options given; None when none were."""
    from m3bind.search.layout import DESCRIPTION_FILE, read_index_description
    from m3bind.search.vectors import VectorIndexSettings

    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return None
    base = (read_index_description(folder).vectors if (folder / DESCRIPTION_FILE).is_file()
            else VectorIndexSettings())
    if "index_type" in given:
        given["type"] = given.pop("index_type")
    try:
        return VectorIndexSettings.model_validate({**base.model_dump(), **given})
    except ValueError as error:
        raise ConfigError(f"vector index options: {error}") from error


def _device(value: str) -> str:
    if value != "auto":
        return value
    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
