"""Prompt files: the shipped sets load, each protocol builds the prompts its paper uses, errors are clear."""
from __future__ import annotations

import math

import pytest
import torch

from m3bind.errors import DataError
from m3bind.eval.prompts import (
    available_prompt_sets,
    class_phrase,
    empty_prompt_set,
    expert_prompts,
    load_prompt_file,
    load_prompt_set,
    missing_classes,
    naive_prompts,
    presence_pairs,
    presence_probabilities,
    sampled_prompts,
)

# The built-in cohort's classes come first in each built-in set; the public datasets' label sets follow.
EXPECTED_CLASSES = {
    "xray": ["normal", "cardiomegaly", "pleural effusion", "lung nodule", "consolidation", "pneumothorax",
             "atelectasis", "edema", "emphysema", "fibrosis", "infiltration", "mass", "hernia", "pleural thickening",
             "fracture", "lung opacity", "enlarged cardiomediastinum", "pneumonia", "lung lesion", "support devices"],
    "ct": ["normal", "cardiomegaly", "pleural effusion", "lung nodule", "emphysema", "pericardial effusion",
           "atelectasis", "consolidation", "lung opacity", "bronchiectasis", "peribronchial thickening",
           "interlobular septal thickening", "mosaic attenuation pattern", "pulmonary fibrotic sequela",
           "lymphadenopathy", "hiatal hernia", "arterial wall calcification", "coronary artery wall calcification",
           "medical material"],
    "retina": ["normal", "diabetic retinopathy", "glaucoma", "hypertensive retinopathy", "drusen", "cataract",
               "age-related macular degeneration", "pathologic myopia", "macular edema", "retinal vein occlusion"],
    "pathology": ["normal", "adenocarcinoma", "squamous cell carcinoma", "inflammation", "necrosis", "fibrosis",
                  "adipose tissue", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "ecg": ["normal", "atrial fibrillation", "left ventricular hypertrophy", "sinus bradycardia", "st elevation",
            "low qrs voltage", "myocardial infarction", "st/t change", "conduction disturbance", "hypertrophy",
            "right bundle branch block", "left bundle branch block", "first degree av block", "sinus tachycardia",
            "premature ventricular contraction"],
    "chexpert": ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"],
    "flair_odir": ["normal", "pathologic myopia", "cataract"],
}


def _write(tmp_path, text: str):
    path = tmp_path / "my_prompts.yaml"
    path.write_text(text)
    return path


def test_every_shipped_set_loads_with_the_expected_classes():
    assert sorted(available_prompt_sets()) == sorted(EXPECTED_CLASSES)
    for name, classes in EXPECTED_CLASSES.items():
        prompt_set = load_prompt_set(name)
        assert prompt_set.class_names == classes, name
        for cls in classes:
            n = len(prompt_set.classes[cls])
            assert 3 <= n <= 6, (name, cls, n)
            assert len(set(prompt_set.classes[cls])) == n, (name, cls)  # no duplicates
            # every protocol yields prompts for every class
            assert expert_prompts(prompt_set, [cls])[cls]
            assert len(sampled_prompts(prompt_set, [cls], n=5, seed=0)[cls]) >= 3
    builtin = {n: load_prompt_set(n).modality for n in ("xray", "ct", "retina", "pathology", "ecg")}
    assert builtin == {n: n for n in builtin}


def test_attribute_sets_are_chexpert_style():
    for name in ("xray", "chexpert"):
        prompt_set = load_prompt_set(name)
        for cls, lists in prompt_set.attributes.items():
            assert list(lists) == ["severity", "subtype", "location"], (name, cls)
    assert set(load_prompt_set("chexpert").attributes) == set(EXPECTED_CLASSES["chexpert"])
    # The 5x200 protocol needs enough distinct combinations to sample from.
    assert all(len(p) == 20 for p in sampled_prompts(load_prompt_set("chexpert"), EXPECTED_CLASSES["chexpert"],
                                                      n=20, seed=0).values())


def test_naive_prompts_fill_the_template():
    retina = load_prompt_set("retina")
    assert naive_prompts(retina, ["glaucoma", "macular hole"]) == {
        "glaucoma": ["Fundus photograph. Findings: glaucoma."],
        "macular hole": ["Fundus photograph. Findings: macular hole."],  # needs nothing from the file
    }
    assert naive_prompts(load_prompt_set("xray"), ["cardiomegaly"]) == {"cardiomegaly": ["Impression: cardiomegaly."]}
    assert naive_prompts(load_prompt_set("flair_odir"), ["cataract"]) == {"cataract": ["A fundus photograph of cataract"]}


def test_expert_prompts_are_descriptions_plus_class_name(tmp_path):
    prompt_set = load_prompt_file(_write(tmp_path, """
template: "A fundus photograph of {}"
classes:
  glaucoma: ["optic disc cupping", "thin neuroretinal rim"]
  normal: ["healthy", "normal"]
"""))
    assert expert_prompts(prompt_set, ["glaucoma"]) == {"glaucoma": [
        "A fundus photograph of optic disc cupping",
        "A fundus photograph of thin neuroretinal rim",
        "A fundus photograph of glaucoma",
    ]}
    # the class name is not added twice; case-insensitive lookup, keyed by the caller's spelling
    assert expert_prompts(prompt_set, ["Normal"], use_template=False) == {"Normal": ["healthy", "normal"]}


def test_presence_pairs_follow_ct_rate():
    ct = load_prompt_set("ct")
    assert presence_pairs(ct, ["emphysema", "lung nodule"]) == {
        "emphysema": ("Emphysema is present.", "Emphysema is not present."),
        "lung nodule": ("Lung nodule is present.", "Lung nodule is not present."),
    }


def test_presence_pair_override(tmp_path):
    prompt_set = load_prompt_file(_write(tmp_path, """
classes: {effusion: [fluid]}
presence: ["there is {}", "no {}"]
"""))
    assert presence_pairs(prompt_set, ["effusion"]) == {"effusion": ("There is effusion", "No effusion")}


def test_presence_probabilities_are_the_pair_softmax():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.6, 0.8]])  # the second is not unit length
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    probs = presence_probabilities(image, pos, neg, logit_scale=10.0)
    assert probs.shape == (3, 2)
    # image 0 vs finding 0: cos(pos)=1, cos(neg)=0 -> softmax([10, 0])[0]
    assert probs[0, 0].item() == pytest.approx(1 / (1 + math.exp(-10)))
    assert probs[1, 1].item() == pytest.approx(1 / (1 + math.exp(-10)))  # normalised first
    # image 2: cos(pos0)=0.6, cos(neg0)=0.8 -> sigmoid(10 * (0.6 - 0.8))
    assert probs[2, 0].item() == pytest.approx(1 / (1 + math.exp(2.0)))
    assert probs[2, 1].item() == pytest.approx(1 / (1 + math.exp(-2.0)))
    # a larger scale sharpens, never flips, the decision
    sharper = presence_probabilities(image, pos, neg, logit_scale=50.0)
    assert ((sharper > 0.5) == (probs > 0.5)).all()
    assert sharper[2, 0] < probs[2, 0]


def test_sampled_prompts_combine_attributes(tmp_path):
    prompt_set = load_prompt_file(_write(tmp_path, """
classes:
  effusion: [fluid]
  normal: ["clear lungs", "no effusion", "normal heart", "no nodule"]
attributes:
  effusion:
    severity: ["", "small"]
    subtype: ["effusion"]
    location: ["on the right", "on the left"]
"""))
    every = {"effusion on the right", "effusion on the left", "small effusion on the right",
             "small effusion on the left"}
    sample = sampled_prompts(prompt_set, ["effusion", "normal"], n=3, seed=0)
    assert len(sample["effusion"]) == 3 and set(sample["effusion"]) <= every
    assert len(set(sample["normal"])) == 3 and set(sample["normal"]) <= set(prompt_set.classes["normal"])
    # asking for more than exist gives each once
    assert set(sampled_prompts(prompt_set, ["effusion"], n=10, seed=0)["effusion"]) == every
    # seeded, and independent of which other classes are asked for
    assert sampled_prompts(prompt_set, ["normal"], n=3, seed=0)["normal"] == sample["normal"]
    draws = {tuple(sampled_prompts(prompt_set, ["normal"], n=2, seed=s)["normal"]) for s in range(10)}
    assert len(draws) > 1


def test_a_class_without_an_entry_falls_back_to_its_naive_prompt(tmp_path):
    prompt_set = load_prompt_file(_write(tmp_path, 'template: "Findings: {}."\nclasses: {normal: [healthy]}\n'))
    assert missing_classes(prompt_set, ["Normal", "glaucoma"]) == ["glaucoma"]
    naive = {"glaucoma": ["Findings: glaucoma."]}
    assert expert_prompts(prompt_set, ["glaucoma"]) == naive
    assert expert_prompts(prompt_set, ["glaucoma"], class_name=False) == naive
    assert sampled_prompts(prompt_set, ["glaucoma"], n=2, seed=0, use_template=True) == naive
    # a modality with no prompt file at all: every class is named in the plain "{}" template
    empty = empty_prompt_set("dermatology")
    assert missing_classes(empty, ["melanoma"]) == ["melanoma"]
    assert expert_prompts(empty, ["melanoma"]) == {"melanoma": ["melanoma"]}


def test_expert_prompts_without_the_class_name(tmp_path):
    prompt_set = load_prompt_file(_write(tmp_path, "classes: {glaucoma: [optic disc cupping, glaucoma]}\n"))
    assert expert_prompts(prompt_set, ["glaucoma"], class_name=False) == {"glaucoma": ["optic disc cupping", "glaucoma"]}
    assert expert_prompts(load_prompt_set("xray"), ["pneumothorax"], class_name=False)["pneumothorax"] == [
        "Impression: " + d + "." for d in load_prompt_set("xray").classes["pneumothorax"]]


@pytest.mark.parametrize("text, message", [
    ("classes:\n  normal: [healthy]\n  glaucoma: []\n", r"class 'glaucoma' has no prompts"),
    ("classes:\n  normal: [healthy]\n  glaucoma:\n", r"class 'glaucoma' has no prompts"),
    ("classes: {normal: [healthy]}\ntemplates: '{}'\n", r"unknown key\(s\) templates"),
    ("classes: {normal: [healthy]}\ntemplate: 'A photo of'\n", r"exactly one '\{\}'"),
    ("classes: {normal: [healthy]}\npresence: ['{} is present.']\n", r"list of two templates"),
    ("classes: {normal: [healthy]}\nattributes: {glaucoma: {severity: [mild]}}\n",
     r"attributes given for class 'glaucoma'"),
    ("classes: {normal: [healthy]}\nattributes: {normal: {severity: ['', '']}}\n",
     r"class 'normal' has no prompts"),
    ("classes: [normal, glaucoma]\n", r"'classes' must map"),
    ("classes: {normal: [healthy\n", r"not valid YAML"),
])
def test_broken_user_file_gives_a_clear_error(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        load_prompt_file(path)
    assert str(path) in str(info.value)


def test_missing_file_and_unknown_shipped_set():
    with pytest.raises(DataError, match="cannot read prompt file"):
        load_prompt_file("/nonexistent/prompts.yaml")
    with pytest.raises(DataError, match="no shipped prompt set named 'mri'.*xray"):
        load_prompt_set("mri")


@pytest.mark.parametrize("label, phrase", [
    ("LUNG_NODULE", "lung nodule"), ("Pleural_Thickening", "Pleural Thickening"), ("ST_ELEVATION", "ST elevation"),
    ("LOW_QRS_VOLTAGE", "low QRS voltage"), ("CARDIOMEGALY", "cardiomegaly"), ("NO_FINDING", "no finding"),
    ("pleural effusion", "pleural effusion"), ("ST elevation", "ST elevation"), ("AF", "AF"),
])
def test_class_phrase_reads_label_codes_as_words(label, phrase):
    assert class_phrase(label) == phrase


def test_coded_label_names_find_their_prompt_file_entry_and_read_as_words():
    # A dataset that writes its labels as codes (ChestX-ray14: "Pleural_Thickening") must get the
    # shipped expert descriptions of the same finding, and naive prompts in words, not in code.
    xray = load_prompt_set("xray")
    classes = ["LUNG_NODULE", "Pleural_Effusion", "PNEUMOMEDIASTINUM"]
    assert missing_classes(xray, classes) == ["PNEUMOMEDIASTINUM"]
    assert naive_prompts(xray, classes)["LUNG_NODULE"] == ["Impression: lung nodule."]
    expert = expert_prompts(xray, classes)
    assert [p for p in expert["LUNG_NODULE"] if p != "Impression: lung nodule."] == \
        [xray.template.format(d) for d in xray.classes["lung nodule"] if d != "lung nodule"]
    assert expert["PNEUMOMEDIASTINUM"] == ["Impression: pneumomediastinum."]
    assert sampled_prompts(xray, ["PNEUMOMEDIASTINUM"], n=3) == {"PNEUMOMEDIASTINUM": ["pneumomediastinum"]}
    assert presence_pairs(xray, ["LUNG_NODULE"])["LUNG_NODULE"][0] == "Lung nodule is present."


@pytest.mark.parametrize(("name", "label", "found"), [
    ("xray", "Effusion", "pleural effusion"),                # ChestX-ray14
    ("xray", "Pleural_Thickening", "pleural thickening"),
    ("xray", "Enlarged Cardiomediastinum", "enlarged cardiomediastinum"),   # CheXpert
    ("ecg", "MI", "myocardial infarction"),                  # PTB-XL superclasses and codes
    ("ecg", "STTC", "st/t change"),
    ("ecg", "NORM", "normal"),
    ("ecg", "AFIB", "atrial fibrillation"),
    ("retina", "AMD", "age-related macular degeneration"),
    ("pathology", "TUM", "colorectal adenocarcinoma epithelium"),   # NCT-CRC-HE-100K
    ("ct", "Lymphadenopathy", "lymphadenopathy"),            # CT-RATE
])
def test_public_dataset_labels_find_expert_descriptions(name, label, found):
    prompt_set = load_prompt_set(name)
    assert prompt_set.find(label) == found
    assert missing_classes(prompt_set, [label]) == []
    assert expert_prompts(prompt_set, [label], class_name=False)[label] == [
        prompt_set.template.format(d) for d in prompt_set.classes[found]]


def test_aliases_are_checked(tmp_path):
    good = _write(tmp_path, "classes:\n  a: [x]\n  b: [y]\naliases:\n  a: [alpha, A1]\n")
    assert load_prompt_file(good).find("ALPHA") == "a" and load_prompt_file(good).find("gamma") is None
    for body, problem in [("aliases:\n  c: [z]\n", "aliases for 'c', which is not one of the classes"),
                          ("aliases:\n  a: [b]\n", "alias 'b' of 'a' is already class 'b'"),
                          ("aliases:\n  a: [z]\n  b: [Z]\n", "alias 'Z' of 'b' is already an alias of 'a'"),
                          ("aliases:\n  a: 3\n", "aliases of 'a' must be a list of non-empty names")]:
        path = _write(tmp_path, "classes:\n  a: [x]\n  b: [y]\n" + body)
        with pytest.raises(DataError, match=problem):
            load_prompt_file(path)
