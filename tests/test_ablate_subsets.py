"""Table 4's modality subsets come from the configured modalities, whatever they are called."""
import pytest

from m3bind.config import parse_config
from m3bind.errors import ConfigError
from m3bind.experiment import Experiment
from m3bind.stages.ablate import modality_subsets, run_ablation


def _experiment(modalities: dict) -> Experiment:
    return Experiment(parse_config({"modalities": modalities}))


def test_subsets_grow_in_the_papers_order_of_the_modality_each_one_is():
    paper = _experiment({m: {} for m in ("ct", "pathology", "ecg", "retina", "xray")})
    assert modality_subsets(paper) == [("xray", "ecg"), ("xray", "ecg", "retina"),
                                       ("xray", "ecg", "retina", "pathology"),
                                       ("xray", "ecg", "retina", "pathology", "ct")]
    # A user's names: 'heart' is an ECG, 'cxr' an X-ray (by `like`, or as MGCA's), 'derm' of no
    # built-in kind (an open_clip model told it serves dermatology) comes last.
    mine = _experiment({"derm": {"model": {"type": "open_clip", "path": "m", "options": {"modality": "derm"}}},
                        "heart": {"like": "ecg"}, "chestct": {"like": "ct"},
                        "cxr": {"model": {"type": "mgca", "path": "m.ckpt"}}})
    assert modality_subsets(mine) == [("cxr", "heart"), ("cxr", "heart", "chestct"),
                                      ("cxr", "heart", "chestct", "derm")]


def test_one_modality_has_no_subsets_to_bind_and_says_so():
    single = _experiment({"xray": {}})
    assert modality_subsets(single) == []
    with pytest.raises(ConfigError, match="two or more modalities; this config has 1"):
        run_ablation(single, "subsets", log=lambda _: None)
