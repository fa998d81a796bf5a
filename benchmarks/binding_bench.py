"""What gpu_check.py and mfu.py share: binding runs on synthetic studies, through the library's own
stages and training loop, with per-step clocks and device checks.

Models come the way a user gets them: ``paper_setup`` copies ``configs/paper.yaml`` (or
``configs/paper-tiny.yaml``) into a work folder, writes randomly initialised checkpoints in
the published formats where it points (m3bind.models.adapters.random_checkpoints), and loads
them with ``stages.artifacts.prepare_bound`` (adapters + LoRA + heads, on the config's
``device``, ``auto`` by default). ``demo_setup`` builds the demo's five built-in models. Only
the studies are synthetic: random tensors of each model's preprocessed shape, with report-like
texts, so no cohort has to be rendered at published sizes.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from m3bind.config import BindConfig, parse_config
from m3bind.data.datasets import StudySet
from m3bind.experiment import Experiment
from m3bind.models.binding import BoundModality

REPO = Path(__file__).resolve().parents[1]

# Report-like texts (lengths as in the synthetic cohort, 20-60 words); each study gets one, with
# its index appended so that no two studies share a text.
REPORTS = (
    "Findings: The heart size is normal. The lungs are clear. There is no pleural effusion or pneumothorax. "
    "Impression: No acute cardiopulmonary process.",
    "Findings: Moderate cardiomegaly. Small left pleural effusion with adjacent atelectasis. No pneumothorax. "
    "Impression: Enlarged heart. Small left pleural effusion.",
    "Non-contrast chest CT. Findings: Marked centrilobular emphysema of the upper lobes. There is a solid nodule "
    "in the right lower lobe measuring 9 mm. No pericardial effusion. Impression: Emphysema. Pulmonary nodule.",
    "Colour fundus photograph of the right eye. Moderate non-proliferative diabetic retinopathy with "
    "microaneurysms, dot haemorrhages and hard exudates near the fovea. The optic disc is healthy.",
    "Sinus rhythm at 72 bpm. Normal axis. PR 160 ms, QRS 92 ms, QTc 420 ms. Voltage criteria for left "
    "ventricular hypertrophy with strain. No acute ST elevation.",
    "Atrial fibrillation with rapid ventricular response, rate 132 bpm. Low QRS voltages in the limb leads. "
    "Consider pericardial effusion; clinical correlation recommended.",
    "Microscopic description: sheets of malignant squamous cells with keratin pearls and intercellular bridges "
    "invading a desmoplastic stroma. Diagnosis: moderately differentiated keratinizing squamous cell carcinoma.",
    "Microscopic description: benign lymph node with preserved architecture, reactive follicles and open "
    "sinuses. No metastatic carcinoma is identified in this section.",
)
LABELS = ("normal", "cardiomegaly", "pleural effusion", "emphysema", "nodule")


def synthetic_studies(shape: Sequence[int], n: int, seed: int, texts: Sequence[str] | None = None) -> StudySet:
    """``n`` random studies of ``shape`` with report-like texts (or ``texts``) and labels, held in memory."""
    generator = torch.Generator().manual_seed(seed)
    return StudySet(images=torch.randn(n, *shape, generator=generator),
                    texts=list(texts) if texts is not None else [f"{REPORTS[i % len(REPORTS)]} Study {i}."
                                                                 for i in range(n)],
                    labels=[[LABELS[i % len(LABELS)]] for i in range(n)],
                    patient_ids=[f"P{i:06d}" for i in range(n)], rows=list(range(n)))


@dataclass
class BindingSetup:
    """Bound models ready to bind, their synthetic training studies and the binding settings."""

    name: str
    bound: dict[str, BoundModality]
    train: dict[str, StudySet]
    bind: BindConfig
    heldout: list[str]
    device: torch.device

    def samples_per_step(self) -> int:
        """Image-text pairs (each modality's batch, or its whole set when smaller) + alignment texts."""
        pairs = sum(min(self.bind.image_batch_size, len(studies)) for studies in self.train.values())
        return pairs + self.bind.text_batch_size


def paper_setup(root: Path, config_name: str, sizes, *, image_batch: int | None = None, text_batch: int | None = None,
                ct_studies: int = 8, mixed_precision: str | None = None, device: str | None = None) -> BindingSetup:
    """The modalities of ``configs/<config_name>`` on random checkpoints of ``sizes`` written under ``root``.

    Every modality gets ``image_batch`` studies (the config's ``bind.image_batch_size`` by
    default), CT at most ``ct_studies`` (the paper binds CT-CLIP with 8 per batch).
    """
    from m3bind.models.adapters.random_checkpoints import write_random_checkpoints
    from m3bind.stages.artifacts import prepare_bound

    config_path = root / "configs" / config_name
    config_path.parent.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((REPO / "configs" / config_name).read_text())
    data["bind"].update({key: value for key, value in (("image_batch_size", image_batch),
                                                       ("text_batch_size", text_batch),
                                                       ("mixed_precision", mixed_precision)) if value is not None})
    if device is not None:
        data["device"] = device
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = parse_config(data, str(config_path))
    write_random_checkpoints(cfg, config_path, sizes)
    exp = Experiment(cfg, config_path)
    bound = prepare_bound(exp, exp.modalities)
    batch = cfg.bind.image_batch_size
    train = {m: synthetic_studies(exp.preprocess(m).output_shape(), min(ct_studies, batch) if m == "ct" else batch,
                                  seed=index)
             for index, m in enumerate(exp.modalities)}
    return BindingSetup(config_name, bound, train, cfg.bind, heldout=list(REPORTS), device=exp.device)


def cohort_reports(modality: str, n: int, seed: int) -> list[str]:
    """``n`` reports as the built-in cohort writes them for ``modality`` (0-2 findings each).

    The demo's text towers each have their own small vocabulary, learnt from their modality's
    reports; the alignment term feeds every tower the other modalities' reports too, which its
    vocabulary splits into many more tokens (65 on average, often the 128 limit, against about
    38 for its own reports). Benchmarks of the demo's binding step need such texts to cost what
    the demo's step costs.
    """
    import numpy as np

    from m3bind.cohort.writer import RENDERERS

    writer = RENDERERS[modality]
    rng = np.random.default_rng(seed)
    reports = []
    for _ in range(n):
        chosen = rng.choice(len(writer.FINDINGS), size=int(rng.integers(0, 3)), replace=False)
        findings = {writer.FINDINGS[i]: float(rng.uniform(0.3, 1.0)) for i in chosen}
        reports.append(writer.write_report(findings, rng))
    return reports


def demo_setup(*, device: str = "auto", image_batch: int | None = None, studies_per_modality: int = 256,
               text_backbone: str = "minilm") -> BindingSetup:
    """The demo's five built-in models (untrained: a step costs the same) with the demo's binding
    settings. ``text_backbone``: the demo's frozen MiniLM under a trainable MLP (shared by the five,
    as in a run), or ``scratch`` (small BERTs, each with its own tokenizer learnt from
    ``studies_per_modality`` cohort-like reports)."""
    from m3bind.data.transforms import default_preprocess
    from m3bind.devices import resolve_device
    from m3bind.models.builtin import build_builtin_model, builtin_config
    from m3bind.models.sentence import share_sentence_backbones
    from m3bind.stages.demo import demo_config

    cfg = demo_config(Path("cohort"), Path("out"))
    bind = cfg.bind if image_batch is None else cfg.bind.model_copy(update={"image_batch_size": image_batch})
    target = resolve_device(device)
    bound, train = {}, {}
    for index, modality in enumerate(cfg.modalities):
        spec = default_preprocess(modality, demo=True)
        studies = synthetic_studies(spec.output_shape(), max(studies_per_modality, bind.image_batch_size), seed=index,
                                    texts=cohort_reports(modality, max(studies_per_modality, bind.image_batch_size),
                                                         seed=index))
        config = builtin_config(modality, demo=True, text_backbone=text_backbone)
        model = build_builtin_model(modality, studies.texts, config, seed=cfg.seed, preprocess=spec)
        module = BoundModality(model, cfg.shared_dim, seed=cfg.seed + index)
        module.prepare_for_binding(bind.lora.r, bind.lora.alpha, bind.lora.dropout, text=bind.lora.text,
                                   image=bind.lora.image)
        bound[modality], train[modality] = module.to(target), studies
    if share_sentence_backbones(bound.values()):
        # Fill the shared sentence cache first, as any run has after its first pass over the reports:
        # timed and counted steps then both measure the MLP towers, not when MiniLM first met a text.
        with torch.no_grad():
            for modality, module in bound.items():
                module.encode_texts(list(dict.fromkeys([*train[modality].texts, *REPORTS])))
    return BindingSetup("demo", bound, train, bind, heldout=list(REPORTS), device=target)


class StepClock:
    """The ``progress`` object of the training loop, timing each optimizer step.

    The loop reports a step as done after it finished (optimizer step included); ``marks[s]``
    is the wall-clock time step ``s`` was reported, ``cpu_marks[s]`` this process's CPU time then
    (all its threads; on a shared CPU it leaves out the time other processes had the cores).
    ``at_step`` runs callbacks right after step ``s`` was reported, i.e. right before step
    ``s + 1`` starts.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: dict[int, float] = {}
        self.cpu_marks: dict[int, float] = {}
        self.at_step: dict[int, list[Callable[[], None]]] = {}

    def add_task(self, description: str, total=None, completed: int = 0, **_) -> int:
        return 0

    def update(self, task: int, completed: int | None = None, **_) -> None:
        if completed is None or completed in self.marks:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks[completed] = time.perf_counter()
        self.cpu_marks[completed] = time.process_time()
        for callback in self.at_step.get(completed, []):
            callback()

    def seconds_per_step(self, first: int, last: int, cpu_time: bool = False) -> float:
        """Mean duration of steps ``first + 1 .. last``, wall clock or this process's CPU time."""
        marks = self.cpu_marks if cpu_time else self.marks
        return (marks[last] - marks[first]) / (last - first)


def run_binding(setup: BindingSetup, steps: int, run_dir: Path, clock: StepClock) -> None:
    """``steps`` optimizer steps of the library's binding loop on ``setup`` (one checkpoint, at the end)."""
    from m3bind.train.bind import bind_models

    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = setup.bind.model_copy(update={"steps": steps, "warmup_steps": 0, "checkpoint_every": 10 ** 9})
    bind_models(setup.bound, setup.train, cfg, run_dir, heldout_texts=setup.heldout, progress=clock,
                tensorboard=False)


@dataclass
class DeviceWatch:
    """While active, every module call checks that its own parameters and buffers and its tensor
    inputs are on ``device``; what is not is collected in ``problems``."""

    device: torch.device
    problems: list[str] = field(default_factory=list)
    calls: int = 0
    _handle: object = None

    def _on_device(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == self.device.type and (self.device.index is None or
                                                           tensor.device.index == self.device.index)

    def _check(self, module: nn.Module, inputs) -> None:
        self.calls += 1
        tensors = [("parameter " + name, t) for name, t in module.named_parameters(recurse=False)]
        tensors += [("buffer " + name, t) for name, t in module.named_buffers(recurse=False)]
        tensors += [(f"input {i}", t) for i, t in enumerate(_tensors_in(inputs))]
        for what, tensor in tensors:
            if not self._on_device(tensor):
                problem = f"{type(module).__name__} {what} {tuple(tensor.shape)} on {tensor.device}"
                if problem not in self.problems:
                    self.problems.append(problem)

    def start(self) -> None:
        self._handle = nn.modules.module.register_module_forward_pre_hook(lambda m, i: self._check(m, i))

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def check_parameters(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            for parameter_name, parameter in module.named_parameters():
                if not self._on_device(parameter):
                    self.problems.append(f"{name}.{parameter_name} {tuple(parameter.shape)} on {parameter.device} "
                                         "after binding")


def _tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors_in(item)]
    return []
