"""Zero-shot prompt sets: loading them, and turning them into the prompts each paper's protocol uses.

A prompt set is a YAML file. The library ships one per built-in modality, plus examples for
real data (``chexpert``, ``flair_odir``), in the folder ``m3bind/eval/prompt_sets/`` next to this
module (:func:`load_prompt_set` by name); users load their own with :func:`load_prompt_file`.

Schema::

    modality: xray                  # optional: which modality the prompts describe
    template: "{}"                  # optional (default "{}"): the naive prompt (pi_naive), with
                                    #   one "{}" for the class name, e.g. "A fundus photograph of {}"
    classes:                        # required: class name -> expert-knowledge descriptions (pi_EK),
      normal: ["lungs are clear", "heart size is normal"]         # at least one each
      cardiomegaly: ["enlarged cardiac silhouette", "the heart is enlarged"]
    aliases:                        # optional: other names datasets give a class (ChestX-ray14's
      pleural effusion: [effusion]  #   "Effusion", PTB-XL's "MI"): a label spelled so finds it
    presence: ["{} is present.", "{} is not present."]  # optional: CT-RATE positive/negative pair
    attributes:                     # optional: GLoRIA / CheXpert 5x200 style attribute lists
      cardiomegaly:                 #   for some classes; a prompt is one value from each list,
        severity: ["", "mild"]      #   in the order written, joined by spaces ("" = leave out)
        subtype: ["cardiomegaly", "enlarged heart"]
        location: ["", "with a cardiothoracic ratio above 0.5"]

Unknown keys are an error, so a typo does not silently drop a section.

Protocols (the caller embeds every prompt and, per class, averages the embeddings; see
:mod:`m3bind.eval.zeroshot`):

- :func:`naive_prompts`: one prompt per class, the template filled with the class name.
- :func:`expert_prompts`: FLAIR's expert knowledge: the class's descriptions, plus its name
  when asked (see :mod:`m3bind.eval.zeroshot` for why that is a choice).
- :func:`sampled_prompts`: CheXpert 5x200 / GLoRIA: n prompts per class sampled from the
  attribute combinations (or from the descriptions when a class has no attributes).
- :func:`presence_pairs` and :func:`presence_probabilities`: CT-RATE's "{} is present." /
  "{} is not present." pair per finding, softmax over the pair.

Class names are matched case-insensitively ("Pleural Effusion" finds "pleural effusion"), then
through ``aliases`` ("Effusion" finds "pleural effusion");
results are keyed by the names the caller asked for. A class the file does not list falls back
to its naive prompt in every protocol (:func:`missing_classes` names them, so a report can say
so): a dataset's labels work without a prompt file entry for each.
"""
from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from m3bind.data.manifest import label_key
from m3bind.errors import DataError

DEFAULT_TEMPLATE = "{}"
DEFAULT_PRESENCE = ("{} is present.", "{} is not present.")
_KNOWN_KEYS = {"modality", "template", "classes", "aliases", "presence", "attributes"}
_PACKAGE_DIR = "prompt_sets"


@dataclass(frozen=True)
class PromptSet:
    """The contents of one prompt file, validated. ``source`` names the file in error messages."""

    source: str
    classes: dict[str, tuple[str, ...]]
    template: str = DEFAULT_TEMPLATE
    presence: tuple[str, str] = DEFAULT_PRESENCE
    attributes: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    modality: str | None = None
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # class -> other names of it

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def find(self, name: str) -> str | None:
        """The file's spelling of class ``name`` (case-insensitive, then through the aliases), or
        None if it has none."""
        wanted = label_key(name)
        return next((known for known in self.classes if label_key(known) == wanted),
                    next((known for known, names in self.aliases.items()
                          if any(label_key(alias) == wanted for alias in names)), None))


def empty_prompt_set(modality: str) -> PromptSet:
    """A prompt set with no class entries (every class gets its naive prompt, the template "{}"):
    what a modality without a shipped set or a prompt file gets."""
    return PromptSet(source=f"<no prompt file for {modality}>", classes={}, modality=modality)


def missing_classes(prompt_set: PromptSet, classes: Sequence[str]) -> list[str]:
    """The classes ``prompt_set`` has no entry for (they fall back to their naive prompt)."""
    return [name for name in classes if prompt_set.find(name) is None]


def available_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with the library (for :func:`load_prompt_set`)."""
    folder = resources.files("m3bind.eval").joinpath(_PACKAGE_DIR)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_prompt_set(name: str) -> PromptSet:
    """A prompt set shipped with the library, by name: a modality ("xray", "ct", "retina", "ecg",
    "pathology") or an example ("chexpert", "flair_odir")."""
    resource = resources.files("m3bind.eval").joinpath(_PACKAGE_DIR, f"{name}.yaml")
    if not resource.is_file():
        raise DataError(None, f"no shipped prompt set named '{name}'; available: "
                              f"{', '.join(available_prompt_sets())}")
    return _parse(resource.read_text(encoding="utf-8"), source=f"m3bind/eval/prompt_sets/{name}.yaml")


def load_prompt_file(path: str | Path) -> PromptSet:
    """A user's prompt file (schema in the module docstring); errors name the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(path, f"cannot read prompt file: {err.strerror or err}") from None
    return _parse(text, source=str(path))


def naive_prompts(prompt_set: PromptSet, classes: Sequence[str]) -> dict[str, list[str]]:
    """One prompt per class: the template filled with the class name (pi_naive).

    Needs nothing else from the file, so any class name works, listed there or not.
    """
    return {name: [prompt_set.template.format(class_phrase(name))] for name in classes}


def expert_prompts(prompt_set: PromptSet, classes: Sequence[str], use_template: bool = True,
                   class_name: bool = True) -> dict[str, list[str]]:
    """FLAIR's expert-knowledge prompts (pi_EK): the class's descriptions, plus the bare class
    name when ``class_name`` (FLAIR adds it; not when a description already is the name).

    As in FLAIR, each one is put into the template ("A fundus photograph of {}") unless
    ``use_template`` is False. The caller embeds them all and averages per class. A class the
    file does not list gets its naive prompt (the name, in the template).
    """
    out = {}
    for name in classes:
        known = prompt_set.find(name)
        phrases = list(prompt_set.classes[known]) if known is not None else [class_phrase(name)]
        if class_name and not any(label_key(p) == label_key(name) for p in phrases):
            phrases.append(class_phrase(name))
        out[name] = [prompt_set.template.format(p) for p in phrases] if use_template else phrases
    return out


def sampled_prompts(prompt_set: PromptSet, classes: Sequence[str], n: int, seed: int = 0,
                    use_template: bool = False) -> dict[str, list[str]]:
    """Up to ``n`` distinct prompts per class, sampled without replacement (CheXpert 5x200 / GLoRIA).

    A class with ``attributes`` samples from every combination of its attribute values (one per
    list, in file order, joined by spaces); otherwise from its descriptions. When fewer than
    ``n`` exist, all of them are returned. Each class is sampled from its own generator, seeded
    by ``seed`` and the class name, so a class's prompts do not change when other classes are
    added or reordered. A class the file does not list gets its naive prompt.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = {}
    for name in classes:
        known = prompt_set.find(name)
        if known is None:
            pool = [class_phrase(name)]
        elif known in prompt_set.attributes:
            pool = _attribute_combinations(prompt_set.attributes[known])
        else:
            pool = list(prompt_set.classes[known])
        rng = np.random.default_rng([seed, zlib.crc32(label_key(known or name).encode("utf-8"))])
        chosen = [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]
        out[name] = [prompt_set.template.format(p) for p in chosen] if use_template else chosen
    return out


def presence_pairs(prompt_set: PromptSet, findings: Sequence[str]) -> dict[str, tuple[str, str]]:
    """CT-RATE's (positive, negative) prompt pair per finding, e.g. ("Emphysema is present.",
    "Emphysema is not present."). The first letter is capitalised, as a report sentence would be.
    Any finding name works, listed in the file or not."""
    positive, negative = prompt_set.presence
    return {name: (_capitalise(positive.format(class_phrase(name))), _capitalise(negative.format(class_phrase(name))))
            for name in findings}


@torch.no_grad()
def presence_probabilities(image_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor,
                           logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Probability that each finding is present in each image, from its prompt pair (CT-RATE).

    Args:
        image_emb: (N, D) image embeddings.
        pos_emb, neg_emb: (F, D) embeddings of each finding's positive and negative prompt.
        logit_scale: the multiplier applied to cosine similarities (the inverse temperature,
            e.g. 1/0.07; open_clip's ``model.logit_scale.exp()``).

    Returns (N, F): softmax over the pair's two logits, positive entry. Embeddings are
    L2-normalised first, so the logits are scaled cosine similarities.
    """
    if pos_emb.shape != neg_emb.shape:
        raise ValueError(f"positive and negative prompt embeddings differ in shape: "
                         f"{tuple(pos_emb.shape)} vs {tuple(neg_emb.shape)}")
    image = F.normalize(image_emb.float(), dim=-1)
    pos_logits = logit_scale * image @ F.normalize(pos_emb.float(), dim=-1).T
    neg_logits = logit_scale * image @ F.normalize(neg_emb.float(), dim=-1).T
    return torch.softmax(torch.stack([pos_logits, neg_logits], dim=-1), dim=-1)[..., 0]


# --- parsing -----------------------------------------------------------------------------------

def _parse(text: str, source: str) -> PromptSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(source, f"not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise DataError(source, "a prompt file must be a mapping with at least a 'classes' section")
    unknown = sorted(set(map(str, data)) - _KNOWN_KEYS)
    if unknown:
        raise DataError(source, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KNOWN_KEYS))}")
    classes = _parse_classes(data.get("classes"), source)
    template = _parse_template(data.get("template", DEFAULT_TEMPLATE), "template", source)
    presence = data.get("presence", list(DEFAULT_PRESENCE))
    if not isinstance(presence, list) or len(presence) != 2:
        raise DataError(source, "'presence' must be a list of two templates: [positive, negative]")
    presence = tuple(_parse_template(p, "presence", source) for p in presence)
    modality = data.get("modality")
    if modality is not None and not isinstance(modality, str):
        raise DataError(source, "'modality' must be a string")
    return PromptSet(source=source, classes=classes, template=template, presence=presence,
                     attributes=_parse_attributes(data.get("attributes") or {}, classes, source),
                     modality=modality, aliases=_parse_aliases(data.get("aliases") or {}, classes, source))


def _parse_aliases(section: Any, classes: Mapping[str, Any], source: str) -> dict[str, tuple[str, ...]]:
    """class -> its other names; each name must be new (not a class, not another class's alias)."""
    if not isinstance(section, Mapping):
        raise DataError(source, "'aliases' must map a class to a list of other names for it")
    taken = {label_key(name): f"class '{name}'" for name in classes}
    aliases = {}
    for name, others in section.items():
        if str(name) not in classes:
            raise DataError(source, f"aliases for '{name}', which is not one of the classes")
        others = [others] if isinstance(others, str) else others
        if not isinstance(others, list) or not all(isinstance(o, str) and o.strip() for o in others):
            raise DataError(source, f"aliases of '{name}' must be a list of non-empty names")
        for other in others:
            if label_key(other) in taken:
                raise DataError(source, f"alias '{other}' of '{name}' is already {taken[label_key(other)]}")
            taken[label_key(other)] = f"an alias of '{name}'"
        aliases[str(name)] = tuple(o.strip() for o in others)
    return aliases


def _parse_classes(section: Any, source: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(section, Mapping) or not section:
        raise DataError(source, "'classes' must map each class name to a list of descriptions")
    classes = {}
    for name, descriptions in section.items():
        if isinstance(descriptions, str):
            descriptions = [descriptions]
        if not isinstance(descriptions, list) or not descriptions:
            raise DataError(source, f"class '{name}' has no prompts: give it a list of descriptions")
        if not all(isinstance(d, str) and d.strip() for d in descriptions):
            raise DataError(source, f"class '{name}': every description must be a non-empty string")
        classes[str(name)] = tuple(d.strip() for d in descriptions)
    return classes


def _parse_template(template: Any, key: str, source: str) -> str:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise DataError(source, f"'{key}' template {template!r} must be a string with exactly one '{{}}'")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        raise DataError(source, f"'{key}' template {template!r} has stray braces; write literal braces "
                                f"as '{{{{' and '}}}}'") from None
    return template


def _parse_attributes(section: Any, classes: Mapping[str, Any], source: str) -> dict[str, dict[str, tuple[str, ...]]]:
    if not isinstance(section, Mapping):
        raise DataError(source, "'attributes' must map class names to {attribute: [values]}")
    attributes = {}
    for name, lists in section.items():
        if name not in classes:
            raise DataError(source, f"attributes given for class '{name}', which is not under 'classes'")
        if not isinstance(lists, Mapping) or not lists:
            raise DataError(source, f"attributes of class '{name}' must map attribute names to lists of values")
        parsed = {}
        for attribute, values in lists.items():
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise DataError(source, f"attribute '{attribute}' of class '{name}' must be a non-empty "
                                        f"list of strings (\"\" leaves it out of a prompt)")
            parsed[str(attribute)] = tuple(values)
        if not _attribute_combinations(parsed):
            raise DataError(source, f"class '{name}' has no prompts: its attribute values are all empty")
        attributes[str(name)] = parsed
    return attributes


def _attribute_combinations(lists: Mapping[str, Sequence[str]]) -> list[str]:
    """Every prompt from one value per attribute list, empty values dropped, duplicates removed."""
    prompts = (" ".join(part.strip() for part in combo if part.strip())
               for combo in itertools.product(*lists.values()))
    return list(dict.fromkeys(p for p in prompts if p))


# Short words of an all-capitals label that are English, not acronyms ("NO FINDING").
_SHORT_WORDS = frozenset({"a", "air", "all", "an", "and", "any", "arm", "at", "big", "by", "dry", "ear", "eye", "fat",
                          "for", "hip", "in", "jaw", "leg", "low", "mid", "new", "no", "non", "not", "of", "old", "on",
                          "one", "or", "rib", "the", "to", "two", "wet", "with"})


def class_phrase(name: str) -> str:
    """How a label name reads inside a prompt.

    Labels are often codes: "LUNG_NODULE", "Pleural_Thickening" (ChestX-ray14), "ST_ELEVATION".
    A text encoder was trained on sentences, so underscores become spaces, and an all-capitals
    label is lower-cased except for its short words that are acronyms ("ST elevation", "low QRS
    voltage"). Any other label is kept as written, so "pleural effusion" is unchanged.
    """
    words = name.replace("_", " ").split()
    if name.upper() == name and any(ch.isalpha() for ch in name):
        words = [w if len(w) <= 3 and w.casefold() not in _SHORT_WORDS else w.lower() for w in words]
    return " ".join(words)


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]
