"""The search commands (index, merge-index, search) on a typer app of their own."""
from __future__ import annotations

import json

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from m3bind.search.commands import register
from m3bind.search.index import SearchIndex
from m3bind.search.model_identity import SearchModel
from m3bind.search.query import search_study, search_text

from test_search_support import world  # noqa: F401  (fixture)

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    register(app, Console(width=200))
    return app


@pytest.fixture(scope="module")
def built(app, world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "index"
    result = runner.invoke(app, ["index", str(world.model), str(world.manifest), "--out", str(folder), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "embedded 15 studies" in result.output and "15 studies, flat vector index" in result.output
    return folder


def _json(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["hits"]  # stderr carries library progress bars


def test_search_json_is_the_library_answer(app, world, built):
    hits = _json(runner.invoke(app, ["search", str(built), "--model", str(world.model), "--text", "pleural effusion",
                                     "-k", "5", "--modality-filter", "ct", "--modality-filter", "xray", "--json"]))
    index = SearchIndex.open(built)
    try:
        model = SearchModel.load(world.model)
        expected = search_text(index, model, "pleural effusion", 5, modalities=["ct", "xray"])
        study = world.root / "studies" / "retina" / "P1_retina.png"
        by_study = _json(runner.invoke(app, ["search", str(built), "--model", str(world.model), "--study", str(study),
                                             "--modality", "retina", "--patient", "P2", "-k", "1", "--per-modality",
                                             "--json"]))
        expected_by_study = search_study(index, model, study, "retina", 1, patient="P2", per_modality=True)
    finally:
        index.close()
    assert hits == [hit.to_json() for hit in expected] and len(hits) == 5
    assert by_study == [hit.to_json() for hit in expected_by_study] and len(by_study) == 5


def test_search_table_shows_ranked_results(app, world, built):
    result = runner.invoke(app, ["search", str(built), "--model", str(world.model), "--text", "glaucoma", "-k", "3",
                                 "--label", "glaucoma"])
    assert result.exit_code == 0, result.output
    assert "top 1 for 'glaucoma'" in result.output and "P1_retina.png" in result.output


@pytest.mark.parametrize("arguments, message", [
    (["--text", "x", "--study", "a.dcm", "--modality", "xray"], "give either --text or --study"),
    ([], "give either --text or --study"),
    (["--study", "a.dcm"], "--study needs --modality"),
    (["--text", "x", "--modality-filter", "mri"], "unknown modality mri"),
])
def test_bad_search_options_are_one_line_and_exit_code_2(app, world, built, arguments, message):
    result = runner.invoke(app, ["search", str(built), "--model", str(world.model), *arguments])
    assert result.exit_code == 2 and message in result.stdout, result.output
    assert "Traceback" not in result.output and len(result.stdout.strip().splitlines()) == 1


def test_another_model_is_refused_with_one_line(app, world, built):
    result = runner.invoke(app, ["search", str(built), "--model", str(world.other_model), "--text", "x"])
    assert result.exit_code == 2 and "did not make the index" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_add_and_remove(app, world, built, tmp_path):
    import shutil

    folder = shutil.copytree(built, tmp_path / "index")
    again = runner.invoke(app, ["index", str(world.model), str(world.manifest), "--out", str(folder)])
    assert again.exit_code == 2 and "--add" in again.output
    added = runner.invoke(app, ["index", str(world.model), str(world.extra_manifest), "--out", str(folder), "--add",
                                "--workers", "0"])
    assert added.exit_code == 0 and "20 studies" in added.output, added.output
    removed = runner.invoke(app, ["index", str(world.model), "--out", str(folder), "--remove", "1", "--remove", "2"])
    assert removed.exit_code == 0 and "removed 2 studies" in removed.output and "18 studies" in removed.output
    missing = runner.invoke(app, ["index", str(world.model), "--out", str(folder), "--remove", "1"])
    assert missing.exit_code == 2 and "no studies with id 1" in missing.output


def test_shards_from_the_launcher_environment_and_merge(app, world, tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        result = runner.invoke(app, ["index", str(world.model), str(world.manifest), "--out", str(shards),
                                     "--shard", "auto", "--workers", "0", "--device", "cpu"])
        assert result.exit_code == 0, result.output
    folders = sorted(shards.iterdir())
    assert [f.name for f in folders] == ["shard-0-of-2", "shard-1-of-2"]
    merged = runner.invoke(app, ["merge-index", *map(str, folders), "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0 and "15 studies from 2 shards" in merged.output, merged.output
    bad = runner.invoke(app, ["index", str(world.model), str(world.manifest), "--out", str(shards), "--shard", "2/2"])
    assert bad.exit_code == 2 and "expected 'i/n'" in bad.output


def test_index_type_option_is_validated_and_kept(app, world, tmp_path):
    folder = tmp_path / "index"
    bad = runner.invoke(app, ["index", str(world.model), str(world.manifest), "--out", str(folder),
                              "--index-type", "annoy"])
    assert bad.exit_code == 2 and "vector index options" in bad.output and not folder.exists()
    result = runner.invoke(app, ["index", str(world.model), str(world.manifest), "--out", str(folder),
                                 "--index-type", "hnsw", "--workers", "0"])
    assert result.exit_code == 0 and "hnsw vector index" in result.output, result.output
    added = runner.invoke(app, ["index", str(world.model), str(world.extra_manifest), "--out", str(folder), "--add",
                                "--workers", "0"])
    assert "hnsw vector index" in added.output, added.output


def test_serve_binds_to_loopback_and_reads_the_token_from_a_file(app, world, built, tmp_path, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **options: started.update(app=app_, **options))
    token = tmp_path / "token"
    token.write_text("file-token\n")
    result = runner.invoke(app, ["serve", str(built), "--model", str(world.model), "--token-file", str(token),
                                 "--max-k", "7"])
    assert result.exit_code == 0, result.output
    assert started["host"] == "127.0.0.1" and started["port"] == 8000 and "file-token" not in result.output
    with TestClient(started["app"]) as client:
        assert client.post("/api/search/text", json={"text": "x"}).status_code == 401
        headers = {"Authorization": "Bearer file-token"}
        assert client.post("/api/search/text", json={"text": "x", "k": 8}, headers=headers).status_code == 422
        assert client.post("/api/search/text", json={"text": "x", "k": 7}, headers=headers).status_code == 200
    refused = runner.invoke(app, ["serve", str(built), "--model", str(world.other_model)])
    assert refused.exit_code == 2 and "did not make the index" in refused.stdout
