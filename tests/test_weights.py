"""Strict weight loading and validated folder descriptions, on every path that reads saved files.

Every load path (built-in model, M3Bind heads, student head, training-checkpoint resume,
published-checkpoint strict load) must name the file and each missing, unexpected and
misshaped key the same way; truncated files and crafted JSON must give a CheckpointError
naming the file, never a bare traceback or a read outside the saved folder.
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from m3bind.config import StudentConfig
from m3bind.errors import CheckpointError
from m3bind.models.adapters import load_saved_adapter
from m3bind.models.bound import M3Bind
from m3bind.models.builtin import BuiltinCLIP, BuiltinModelConfig, build_builtin_model
from m3bind.models.descriptions import is_plain_name
from m3bind.models.heads import BindingHead
from m3bind.models.student import StudentTextEncoder, build_student
from m3bind.models.weights import check_state, load_state_strict, read_weights, save_weights
from m3bind.train.checkpoint import CheckpointManager
from m3bind.train.loop import LoopSettings, run_loop

TEXTS = ["T2 hyperintense lesion.", "No enhancement.", "Small cyst in the left lobe."]
SHARED_DIM = 12


def _tiny_builtin() -> BuiltinCLIP:
    config = BuiltinModelConfig(modality="mri", kind="image2d", in_channels=1, width=4, depth=2, native_dim=8,
                                text_hidden_size=16, text_layers=1, text_heads=2, text_intermediate_size=32,
                                vocab_size=300, max_length=16)
    return build_builtin_model("mri", TEXTS, config).eval()


@pytest.fixture(scope="module")
def saved_bound(tmp_path_factory) -> Path:
    """A saved M3Bind folder with one built-in modality ("mri") and a built-in student."""
    model = _tiny_builtin()
    heads = {"mri": BindingHead(model.native_dim, SHARED_DIM, torch.Generator().manual_seed(1))}
    # The scratch student: the kind of folder earlier versions wrote (see the bytes test below).
    student = build_student(StudentConfig(type="builtin", backbone="scratch"), TEXTS, shared_dim=SHARED_DIM)
    directory = tmp_path_factory.mktemp("saved") / "bound"
    M3Bind({"mri": model}, heads, student).save_pretrained(directory)
    return directory


@pytest.fixture
def bound_copy(saved_bound, tmp_path) -> Path:
    """A copy of the saved folder that a test may tamper with."""
    return Path(shutil.copytree(saved_bound, tmp_path / "bound"))


# --- the load paths -------------------------------------------------------------------
def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step_fn(step):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        return {"loss": ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()}
    return model, optimizer, step_fn


def _killed_run(run_dir: Path) -> Path:
    """A run stopped after 3 steps; returns its checkpoint's model file."""
    model, optimizer, step_fn = _problem()
    run_loop(model, optimizer, step_fn, LoopSettings(total_steps=6, checkpoint_every=3), run_dir,
             stop_after=3, tensorboard=False)
    return CheckpointManager(run_dir / "checkpoints").latest() / "model.safetensors"


def _resume(run_dir: Path) -> None:
    """Resume the killed run in a new process; total_steps 3 so that it only loads, writing nothing."""
    model, optimizer, step_fn = _problem(seed=1)
    run_loop(model, optimizer, step_fn, LoopSettings(total_steps=3, checkpoint_every=3), run_dir, resume=True,
             tensorboard=False)


def _published_checkpoint(directory: Path) -> tuple[Path, Callable[[], object]]:
    """A state dict as an adapter reads it from a published checkpoint, loaded strictly."""
    def module() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    path = save_weights(module(), directory / "published.safetensors")
    return path, lambda: load_state_strict(module(), read_weights(path), path)


def load_path(name: str, bound: Path, tmp_path: Path) -> tuple[Path, str, Callable[[], object]]:
    """(weights file, one key it holds, the call that loads it) for each load path."""
    if name == "base model":
        return (bound / "modalities" / "mri" / "model.safetensors", "image_encoder.proj.weight",
                lambda: BuiltinCLIP.from_pretrained(bound / "modalities" / "mri"))
    if name == "M3Bind heads":
        return bound / "heads.safetensors", "mri.weight", lambda: M3Bind.from_pretrained(bound)
    if name == "student head":
        return (bound / "student" / "head.safetensors", "weight",
                lambda: StudentTextEncoder.from_pretrained(bound / "student"))
    if name == "checkpoint resume":
        return _killed_run(tmp_path / "run"), "2.weight", lambda: _resume(tmp_path / "run")
    path, load = _published_checkpoint(tmp_path)
    return path, "1.weight", load


LOAD_PATHS = ["base model", "M3Bind heads", "student head", "checkpoint resume", "adapter strict load"]


def _rewrite(path: Path, change: Callable[[dict], None]) -> None:
    tensors = read_weights(path)
    change(tensors)
    save_weights(tensors, path)


@pytest.mark.parametrize("name", LOAD_PATHS)
def test_every_load_path_names_missing_unexpected_and_misshaped_keys_the_same_way(name, bound_copy, tmp_path):
    path, key, load = load_path(name, bound_copy, tmp_path)
    original = read_weights(path)
    shape = tuple(original[key].shape)
    load()  # untouched, it loads

    _rewrite(path, lambda tensors: tensors.pop(key))
    with pytest.raises(CheckpointError) as error:
        load()
    assert str(error.value).startswith(f"{path}: weights do not fit ")
    assert f"1 missing keys: {key}" in str(error.value) and "unexpected" not in str(error.value)

    save_weights(original, path)
    _rewrite(path, lambda tensors: tensors.__setitem__("extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError) as error:
        load()
    assert str(error.value).startswith(f"{path}: weights do not fit ")
    assert "1 unexpected keys: extra.weight" in str(error.value) and "missing" not in str(error.value)

    save_weights(original, path)
    grown = (shape[0] + 1, *shape[1:])
    _rewrite(path, lambda tensors: tensors.__setitem__(key, torch.zeros(grown)))
    with pytest.raises(CheckpointError) as error:
        load()
    assert str(error.value).startswith(f"{path}: weights do not fit ")
    assert f"1 shape mismatches: {key} (file {grown}, model {shape})" in str(error.value)


@pytest.mark.parametrize("name", LOAD_PATHS)
def test_truncated_or_absent_weights_name_the_file(name, bound_copy, tmp_path):
    path, _, load = load_path(name, bound_copy, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: cannot read safetensors file"):
        load()
    path.unlink()
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: weights file not found"):
        load()


def test_check_state_lists_every_problem_at_once():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1, 4)}
    given = {"b": torch.zeros(3), "c": torch.zeros(4, 1), "d": torch.zeros(1)}
    with pytest.raises(CheckpointError) as error:
        check_state(expected, given, "x.safetensors", target="the heads")
    assert str(error.value) == ("x.safetensors: weights do not fit the heads: 1 missing keys: a; "
                                "1 unexpected keys: d; 1 shape mismatches: c (file (4, 1), model (1, 4))")
    check_state(expected, {k: v.clone() for k, v in expected.items()}, "x.safetensors")  # exact fit passes


# --- strict resume --------------------------------------------------------------------
def test_resume_refuses_a_checkpoint_that_lacks_a_tensor_the_run_trains(tmp_path):
    """A run that saved only the first layer cannot resume one that trains both: the second layer
    would silently keep its fresh weights."""
    model, optimizer, step_fn = _problem()
    first_layer = lambda: {name: p for name, p in model.named_parameters() if name.startswith("0.")}  # noqa: E731
    settings = LoopSettings(total_steps=6, checkpoint_every=3)
    run_loop(model, optimizer, step_fn, settings, tmp_path, checkpoint_state=first_layer, stop_after=3,
             tensorboard=False)
    model, optimizer, step_fn = _problem(seed=1)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not fit .*2 missing keys: "
                                              r"2\.bias, 2\.weight"):
        run_loop(model, optimizer, step_fn, settings, tmp_path, resume=True, tensorboard=False)


def test_resume_restores_exactly_the_saved_subset(tmp_path):
    """Like distillation without update_heads: only the trained tensors are checkpointed, and a
    resumed run ends exactly where an uninterrupted one does."""
    def run(seed: int, run_dir: Path, **kwargs):
        model, optimizer, step_fn = _problem(seed)
        model[2].requires_grad_(False)
        optimizer = torch.optim.AdamW(model[0].parameters(), lr=1e-2)
        subset = lambda: {name: p for name, p in model.state_dict(keep_vars=True).items()  # noqa: E731
                          if name.startswith("0.")}
        run_loop(model, optimizer, step_fn, LoopSettings(total_steps=6, checkpoint_every=3), run_dir,
                 checkpoint_state=subset, tensorboard=False, **kwargs)
        return model
    uninterrupted = run(0, tmp_path / "full")
    run(0, tmp_path / "killed", stop_after=3)
    resumed = run(0, tmp_path / "killed", resume=True)
    for name, tensor in uninterrupted.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


@pytest.mark.parametrize("file, content", [("state.json", '{"step": 3, "sched'), ("optimizer.json", "[]"),
                                           ("state.json", '{"step": -1, "scheduler": null, "rng": {}, "meta": {}}')])
def test_corrupt_checkpoint_json_names_the_file(file, content, tmp_path):
    checkpoint = _killed_run(tmp_path / "run").parent
    (checkpoint / file).write_text(content)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(checkpoint / file))}: "):
        _resume(tmp_path / "run")


def test_latest_pointer_must_name_a_folder_inside_the_run(tmp_path):
    _killed_run(tmp_path / "run")
    pointer = tmp_path / "run" / "checkpoints" / "latest"
    pointer.write_text("../../elsewhere\n")
    with pytest.raises(CheckpointError, match="'../../elsewhere' is not the name of a checkpoint folder"):
        CheckpointManager(tmp_path / "run" / "checkpoints").latest()


# --- descriptions ---------------------------------------------------------------------
def test_descriptions_keep_the_bytes_earlier_versions_wrote(saved_bound):
    assert (saved_bound / "m3bind.json").read_text() == json.dumps(
        {"format": 1, "shared_dim": SHARED_DIM, "modalities": {"mri": {"type": "builtin", "native_dim": 8}}},
        indent=2)
    assert (saved_bound / "student" / "student.json").read_text() == json.dumps(
        {"pooling": "cls", "max_length": 128, "shared_dim": SHARED_DIM, "pooler": False}, indent=2)
    config = json.loads((saved_bound / "modalities" / "mri" / "config.json").read_text())
    assert (saved_bound / "modalities" / "mri" / "config.json").read_text() == json.dumps(config, indent=2) + "\n"
    assert list(config) == ["format_version", "model_type", "model", "preprocess"]


DESCRIPTIONS = {"m3bind.json": lambda bound: M3Bind.from_pretrained(bound),
                "student/student.json": lambda bound: StudentTextEncoder.from_pretrained(bound / "student"),
                "modalities/mri/config.json": lambda bound: BuiltinCLIP.from_pretrained(bound / "modalities" / "mri")}


@pytest.mark.parametrize("name", list(DESCRIPTIONS))
def test_truncated_or_invalid_descriptions_name_the_file(name, bound_copy):
    path, load = bound_copy / name, DESCRIPTIONS[name]
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: not valid JSON"):
        load(bound_copy)
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: expected a JSON object, found list"):
        load(bound_copy)
    description = json.loads(text)
    description.pop(next(key for key in ("shared_dim", "model") if key in description))
    path.write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match=f"(?s)^{re.escape(str(path))}: does not describe .*(shared_dim|model)"):
        load(bound_copy)
    path.unlink()
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: not found"):
        load(bound_copy)


def test_m3bind_json_fields_are_validated(bound_copy):
    path = bound_copy / "m3bind.json"
    description = json.loads(path.read_text())
    for change, message in [({"format": 2}, "format 2 is not supported"),
                            ({"shared_dim": "wide"}, "shared_dim"),
                            ({"modalities": {"mri": {"type": "builtin"}}}, "native_dim"),
                            ({"modalities": {"mri": {"type": "medclip", "native_dim": 8}}},
                             r"unknown model types \{'mri': 'medclip'\}"),
                            ({"colour": "blue"}, "colour")]:
        path.write_text(json.dumps({**description, **change}))
        with pytest.raises(CheckpointError, match=f"(?s)^{re.escape(str(path))}: .*{message}"):
            M3Bind.from_pretrained(bound_copy)


def test_modality_name_that_leaves_the_folder_is_refused(bound_copy):
    # A complete model where "../../x" would lead: without the check it would be loaded.
    outside = bound_copy.parent / "x"
    shutil.copytree(bound_copy / "modalities" / "mri", outside)
    path = bound_copy / "m3bind.json"
    description = json.loads(path.read_text())
    description["modalities"] = {"../../x": description["modalities"]["mri"]}
    path.write_text(json.dumps(description))
    assert (bound_copy / "modalities" / "../../x").resolve() == outside.resolve()
    with pytest.raises(CheckpointError, match=r"'\.\./\.\./x' is not a plain name"):
        M3Bind.from_pretrained(bound_copy)


def test_adapter_option_paths_must_stay_inside_the_saved_folder(tmp_path):
    (tmp_path / "adapter.json").write_text(json.dumps(
        {"format_version": 1, "type": "flair", "options": {"text_model": "../../bert"}, "preprocess": None}))
    with pytest.raises(CheckpointError, match=r"adapter\.json: options\.text_model '\.\./\.\./bert' is not a plain"):
        load_saved_adapter("flair", tmp_path)


def test_plain_names():
    assert all(is_plain_name(name) for name in ["xray", "ct", "mri-t1", "step_0000010", "tokenizer", "v1.2"])
    assert not any(is_plain_name(name) for name in ["", "..", "../x", "a/b", "a\\b", "/abs", ".hidden",
                                                    "-flag", "a..b", "x\n"])


def test_builtin_is_in_the_registry(saved_bound):
    rebuilt = load_saved_adapter("builtin", saved_bound / "modalities" / "mri")
    direct = BuiltinCLIP.from_pretrained(saved_bound / "modalities" / "mri")
    assert type(rebuilt) is BuiltinCLIP and not rebuilt.training
    images = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_image(images), direct.encode_image(images))
