"""No traceback from any command on a user's mistake: every command, given bad input, prints one
`error:` line naming the file and the problem and exits with code 2; `m3bind --debug` shows the
traceback instead.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from m3bind.cli import app

runner = CliRunner()

STAGES = ("pretrain", "bind", "distill", "run", "eval", "ablate")


@dataclass(frozen=True)
class BadInputs:
    root: Path
    missing: Path           # a config that does not exist
    folder: Path            # a folder where a file is expected
    malformed: Path         # YAML that does not parse
    binary: Path            # not text at all
    wrong_type: Path        # valid YAML, a value of the wrong type
    bad_manifest: Path      # the manifest lacks the 'text' column
    bad_options: Path       # built-in model options of the wrong type
    unwritable_output: Path  # output_dir is a file
    fresh: Path             # valid, nothing run yet
    damaged_model: Path     # modalities.xray.model.path: a saved built-in model with a truncated tokenizer
    not_a_model: Path       # a folder without m3bind.json
    truncated_model: Path   # m3bind.json cut in half
    a_file: Path            # a plain file where an output folder should go
    manifest: Path          # a valid manifest of .npy studies


def _config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _tiny_builtin_model():
    from m3bind.data.transforms import default_preprocess
    from m3bind.models.builtin import BuiltinModelConfig, build_builtin_model, builtin_config

    config = BuiltinModelConfig.model_validate({**builtin_config("xray").model_dump(), "width": 4, "depth": 1,
                                                "text_hidden_size": 16, "text_layers": 1, "text_heads": 2,
                                                "text_intermediate_size": 32, "native_dim": 8, "vocab_size": 120})
    return build_builtin_model("xray", ["no acute findings", "small pleural effusion"], config,
                               preprocess=default_preprocess("xray", demo=True))


def _damaged_builtin_model(folder: Path) -> Path:
    _tiny_builtin_model().save_pretrained(folder)
    tokenizer = folder / "tokenizer" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:100])
    return folder


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> BadInputs:
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "folder").mkdir()
    studies = root / "studies"
    studies.mkdir()
    rows = ["path,text,labels,split"]
    for i in range(4):
        np.save(studies / f"s{i}.npy", np.random.default_rng(i).random((32, 32), dtype=np.float32))
        rows.append(f"studies/s{i}.npy,report {i},,{'train' if i < 3 else 'test'}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    (root / "no-text.csv").write_text("path,split\nstudies/s0.npy,train\n")
    (root / "malformed.yaml").write_text("modalities: {xray: [unclosed\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x80 not a config")
    (root / "a-file").write_text("not a folder\n")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("hello\n")
    (root / "truncated-model").mkdir()
    (root / "truncated-model" / "m3bind.json").write_text('{"format": 1, "shared_')
    xray = {"manifest": "manifest.csv"}
    return BadInputs(
        root=root, missing=root / "nowhere.yaml", folder=root / "folder", malformed=root / "malformed.yaml",
        binary=root / "binary.yaml",
        wrong_type=_config(root / "wrong-type.yaml", {"bind": {"steps": "many"}}),
        bad_manifest=_config(root / "bad-manifest.yaml", {"modalities": {"xray": {"manifest": "no-text.csv"}}}),
        bad_options=_config(root / "bad-options.yaml",
                            {"modalities": {"xray": {**xray, "model": {"options": {"width": "wide"}}}}}),
        unwritable_output=_config(root / "unwritable.yaml", {"output_dir": "a-file", "modalities": {"xray": xray}}),
        fresh=_config(root / "fresh.yaml", {"output_dir": "fresh-run", "modalities": {"xray": xray}}),
        damaged_model=_config(root / "damaged-model.yaml", {"output_dir": "damaged-run", "modalities": {"xray": {
            **xray, "model": {"path": str(_damaged_builtin_model(root / "damaged-builtin"))}}}}),
        not_a_model=root / "not-a-model", truncated_model=root / "truncated-model", a_file=root / "a-file",
        manifest=manifest)


def _assert_one_error_line(result, *fragments: str) -> None:
    """Exit code 2, exactly one `error:` line (a user error, not an internal one), no traceback,
    and the message names what it is about."""
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "internal error" not in errors[0], output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


def _invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


# --- the config file itself -------------------------------------------------------------------
@pytest.mark.parametrize("command", ("config", *STAGES))
@pytest.mark.parametrize("case, problem", [
    ("missing", "config file does not exist"),
    ("folder", "cannot read the config: is a folder, not a file"),
    ("malformed", "not valid YAML"),
    ("binary", "cannot read the config"),
    ("wrong_type", "bind.steps: Input should be a valid integer"),
])
def test_a_bad_config_file_is_one_line(bad, command, case, problem):
    config = getattr(bad, case)
    _assert_one_error_line(_invoke(command, config), f"{config}: ", problem)


# --- what the config points at ----------------------------------------------------------------
@pytest.mark.parametrize("command", ["config", "pretrain", "run"])
def test_a_manifest_without_its_text_column_is_one_line(bad, command):
    _assert_one_error_line(_invoke(command, bad.bad_manifest), f"{bad.root / 'no-text.csv'}: ",
                           "missing required column(s) text")


def test_builtin_model_options_of_the_wrong_type_are_one_line(bad):
    _assert_one_error_line(_invoke("pretrain", bad.bad_options), f"{bad.bad_options}: modalities.xray.model.options",
                           "width: Input should be a valid integer")


def test_an_output_folder_that_is_a_file_is_one_line(bad):
    _assert_one_error_line(_invoke("pretrain", bad.unwritable_output), str(bad.a_file), "Not a directory")


@pytest.mark.parametrize("command, needs", [
    ("bind", "run `m3bind pretrain` first"), ("eval", "run `m3bind pretrain` first"),
    ("ablate", "run `m3bind pretrain` first"), ("distill", "run `m3bind bind` first"),
])
def test_a_stage_before_the_one_it_needs_is_one_line(bad, command, needs):
    _assert_one_error_line(_invoke(command, bad.fresh), str(bad.root / "fresh-run"), needs)


def test_a_saved_model_with_a_damaged_tokenizer_is_one_line(bad):
    _assert_one_error_line(_invoke("bind", bad.damaged_model), f"{bad.root / 'damaged-builtin' / 'tokenizer'}: ",
                           "cannot load the tokenizer")


def test_an_unknown_ablation_study_is_one_line(bad):
    _assert_one_error_line(_invoke("ablate", bad.fresh, "--study", "bogus"), "unknown ablation study 'bogus'")


# --- model folders, output folders, search indexes --------------------------------------------
@pytest.mark.parametrize("model, problem", [
    ("not_a_model", "m3bind.json: not found"), ("truncated_model", "m3bind.json: not valid JSON"),
    ("missing", "m3bind.json: not found"),
])
def test_extend_from_something_that_is_not_a_model_is_one_line(bad, model, problem):
    folder = getattr(bad, model)
    _assert_one_error_line(_invoke("extend", bad.fresh, "--model", folder, "--modality", "xray",
                                   "--out", bad.root / "extended"), f"{folder}", problem)


@pytest.mark.parametrize("command", [("cohort", "--patients", "10", "--workers", "1"), ("demo", "--patients", "10")])
def test_writing_into_a_file_instead_of_a_folder_is_one_line(bad, command):
    _assert_one_error_line(_invoke(*command, "--out", bad.a_file), str(bad.a_file), "Not a directory")


@pytest.mark.parametrize("model, problem", [
    ("not_a_model", "not a saved M3Bind model"), ("truncated_model", "m3bind.json: not valid JSON"),
    ("missing", "not a saved M3Bind model"),
])
def test_index_with_something_that_is_not_a_model_is_one_line(bad, model, problem):
    folder = getattr(bad, model)
    _assert_one_error_line(_invoke("index", folder, bad.manifest, "--out", bad.root / "index"), str(folder), problem)


@pytest.fixture(scope="module")
def saved_model(bad) -> Path:
    """A valid (untrained) one-modality M3Bind folder."""
    from m3bind.config import StudentConfig
    from m3bind.models.bound import M3Bind
    from m3bind.models.heads import BindingHead
    from m3bind.models.student import build_student

    xray = _tiny_builtin_model()
    return M3Bind({"xray": xray}, {"xray": BindingHead(xray.native_dim, 8)},
                  build_student(StudentConfig(), ["no acute findings"], shared_dim=8)).save_pretrained(bad.root / "model")


@pytest.mark.parametrize("manifest, problem", [("nowhere.csv", "manifest file does not exist"),
                                               ("no-text.csv", "missing required column(s) text")])
def test_index_with_a_bad_manifest_is_one_line(bad, saved_model, manifest, problem):
    _assert_one_error_line(_invoke("index", saved_model, bad.root / manifest, "--modality", "xray",
                                   "--out", bad.root / "index", "--workers", "0"), f"{bad.root / manifest}: ", problem)


def test_index_into_a_file_instead_of_a_folder_is_one_line(bad, saved_model):
    _assert_one_error_line(_invoke("index", saved_model, bad.manifest, "--modality", "xray", "--out", bad.a_file,
                                   "--workers", "0"), str(bad.a_file), "Not a directory")


@pytest.mark.parametrize("arguments", [
    ("search", "{index}", "--model", "{model}", "--text", "effusion"),
    ("serve", "{index}", "--model", "{model}"),
    ("merge-index", "{index}", "--out", "{out}"),
])
@pytest.mark.parametrize("index", ["missing", "folder", "a_file"])
def test_search_commands_on_something_that_is_not_an_index_are_one_line(bad, arguments, index):
    folder = getattr(bad, index)
    values = {"index": folder, "model": bad.truncated_model, "out": bad.root / "merged"}
    _assert_one_error_line(_invoke(*(a.format(**values) for a in arguments)), f"{folder}",
                           "is not an m3bind search index")


# --- typer's own checks of the arguments ------------------------------------------------------
@pytest.mark.parametrize("arguments", [("cohort", "--patients", "3"), ("demo", "--patients", "3"),
                                       ("bind",), ("extend", "x.yaml")])
def test_bad_arguments_are_usage_errors_without_a_traceback(arguments):
    result = _invoke(*arguments)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value" in result.output or "Missing" in result.output, result.output


# --- --debug -------------------------------------------------------------------------------------
def test_debug_shows_the_traceback_the_default_hides(bad):
    def m3bind(*args):
        return subprocess.run([sys.executable, "-m", "m3bind.cli", *args], capture_output=True, text=True,
                              timeout=120)
    plain = m3bind("config", str(bad.malformed))
    assert plain.returncode == 2 and "Traceback" not in plain.stdout + plain.stderr
    errors = [line for line in plain.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{bad.malformed}: not valid YAML" in errors[0], plain.stdout
    debug = m3bind("--debug", "config", str(bad.malformed))
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ConfigError" in debug.stderr and "not valid YAML" in debug.stderr


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 28311552000 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_out_of_memory_is_one_line_that_says_what_to_lower(error):
    """Published-size CT volumes in a batch of 32 need about 28 GB: the user is told which settings
    to lower, not to report an internal error."""
    import typer
    from rich.console import Console

    from m3bind.output import friendly_errors

    console = Console(record=True, width=400)

    @friendly_errors(console)
    def command():
        raise error

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 2
    text = console.export_text()
    assert text.startswith("error: out of memory") and "internal error" not in text
    assert "pretrain.batch_size" in text and "demo_sizes" in text


def test_a_data_error_survives_pickling_with_its_file_row_and_column():
    """Errors cross process boundaries (worker and launched processes) by pickle; a DataError
    built from its message alone would lose its fields or fail to rebuild."""
    import pickle

    from m3bind.errors import DataError

    error = DataError("/data/xray.csv", "no such file", row=3, column="path")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DataError
    assert (copy.path, copy.problem, copy.row, copy.column) == ("/data/xray.csv", "no such file", 3, "path")
    assert str(copy) == str(error) == "/data/xray.csv, row 3, column 'path': no such file"
