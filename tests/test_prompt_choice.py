"""Which prompts a user's modality gets, and how two manifests' findings meet as concepts.

A user names modalities after their datasets ("cxr", "mimic") and keeps the datasets' own label
spellings ("Effusion" in ChestX-ray14, "Pleural effusion" in CT-RATE, "PTX"). Zero-shot should
still find the shipped expert descriptions, and cross-modal concept scores should still see one
finding in both manifests; a modality whose findings the shipped set does not describe
(mammography handled like xray) must not get chest descriptions.
"""
import nibabel as nib
import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from m3bind.cli import app
from m3bind.eval.prompts import load_prompt_set
from m3bind.eval.protocol import (class_prompts, concept_key, manifest_concepts, prompt_set_for, prompt_set_origin)
from m3bind.experiment import Experiment


def _manifest(path, study, rows):
    lines = ["path,text,labels,split,patient_id"]
    lines += [f"{study},report {i},{labels},{split},{patient}" for i, (labels, split, patient) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def _user_dataset(tmp_path):
    """cxr (like xray), mammo (like xray), chestct (like ct) and a plain xray; PNG and NIfTI studies."""
    Image.new("L", (40, 30), 128).save(tmp_path / "a.png")
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 6), np.int16), np.eye(4)), tmp_path / "v.nii.gz")
    _manifest(tmp_path / "cxr.csv", "a.png", [("Effusion|PTX", "train", "t1"), ("SPN", "train", "t2"),
                                             ("CTR>0.5", "val", "t3"), ("No Finding", "test", "t4")])
    _manifest(tmp_path / "mammo.csv", "a.png", [("mass", "train", "m1"), ("calcification", "val", "m2"),
                                               ("architectural distortion", "test", "m3")])
    _manifest(tmp_path / "chestct.csv", "v.nii.gz", [("Pleural_Effusion", "train", "c1"),
                                                    ("pulmonary nodule|Emphysema", "val", "c2"), ("", "test", "c3")])
    _manifest(tmp_path / "xray.csv", "a.png", [("Cardiomegaly", "train", "x1"), ("", "test", "x2")])
    _manifest(tmp_path / "cxr_paired.csv", "a.png", [("Effusion", "val", "p1"), ("Nodule|Effusion", "test", "p2"),
                                                    ("Cardiomegaly", "test", "p3")])
    _manifest(tmp_path / "chestct_paired.csv", "v.nii.gz", [("", "val", "p1"), ("PLEURAL EFFUSION", "test", "p2"),
                                                           ("Lung_Nodule", "test", "p3")])
    config = {"demo_sizes": True,
              "modalities": {"cxr": {"like": "xray", "manifest": "cxr.csv"},
                             "mammo": {"like": "xray", "manifest": "mammo.csv"},
                             "chestct": {"like": "ct", "manifest": "chestct.csv"},
                             "xray": {"manifest": "xray.csv"}},
              "paired_manifests": {"cxr": "cxr_paired.csv", "chestct": "chestct_paired.csv"}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return Experiment.from_file(tmp_path / "exp.yaml")


def test_a_modality_handled_like_a_builtin_one_takes_its_prompts_when_they_describe_its_findings(tmp_path):
    exp = _user_dataset(tmp_path)
    # cxr: Effusion and PTX are X-ray findings (2 of 4, with SPN and CTR>0.5 unknown): the shipped set.
    assert prompt_set_origin(exp, "cxr") == "xray"
    assert prompt_set_origin(exp, "chestct") == "ct"
    assert prompt_set_origin(exp, "xray") == "xray"
    # mammo: only "mass" is a chest X-ray class name, and a lung mass is not a breast mass.
    assert prompt_set_origin(exp, "mammo") is None
    xray = load_prompt_set("xray")
    prompts = class_prompts(exp, "cxr", ["normal", "Effusion", "PTX", "SPN"], style="expert")
    assert prompts["Effusion"][0] == xray.template.format(xray.classes["pleural effusion"][0])
    assert prompts["PTX"][0] == xray.template.format(xray.classes["pneumothorax"][0])
    assert prompts["SPN"] == [xray.template.format("SPN")]  # unknown: its naive prompt, in the set's template
    assert class_prompts(exp, "mammo", ["normal", "mass"], style="expert")["mass"] == ["mass"]
    # A prompt file always wins.
    (tmp_path / "p.yaml").write_text("template: 'Mammogram: {}.'\nclasses:\n  mass: [a spiculated mass]\n")
    exp.cfg.modalities["mammo"].prompts = "p.yaml"
    assert prompt_set_origin(exp, "mammo") == "file"
    assert prompt_set_for(exp, "mammo").classes == {"mass": ("a spiculated mass",)}


def test_paired_findings_meet_as_one_concept_whatever_each_manifest_calls_them(tmp_path):
    exp = _user_dataset(tmp_path)
    assert manifest_concepts(exp, "cxr", "test") == {"pleural effusion", "lung nodule", "cardiomegaly"}
    assert manifest_concepts(exp, "chestct", "test") == {"pleural effusion", "lung nodule"}
    assert manifest_concepts(exp, "chestct", "val") == frozenset()
    # A name the set does not know keeps its spelling-free form.
    assert concept_key(load_prompt_set("ct"), "Tree_In_Bud") == "tree in bud"


def test_config_check_shows_the_prompt_set_of_each_modality_and_the_concepts_of_each_pair(tmp_path):
    _user_dataset(tmp_path)
    result = CliRunner().invoke(app, ["config", str(tmp_path / "exp.yaml")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("│ ").split("│")]
                                              for line in result.output.splitlines() if line.startswith("│"))}
    assert rows["cxr"][:2] == ["shipped 'xray' (handled like xray)", "CTR>0.5, SPN"]
    assert rows["mammo"][:2] == ["none (naive prompts)", "architectural distortion, calcification, mass"]
    assert rows["chestct"][:2] == ["shipped 'ct' (handled like ct)", "none"]
    assert rows["xray"][:2] == ["shipped 'xray'", "none"]
    assert rows["chestct / cxr"] == ["lung nodule, pleural effusion"]


def test_other_names_of_normal_in_the_prompt_set_are_normal_studies_not_a_second_normal_class(tmp_path):
    """PTB-XL calls every normal ECG "NORM" (and its rhythm statement "SR" is sinus rhythm). As a
    class of its own, "NORM" would get the same prompts as "normal" and zero-shot could never tell
    them apart; the ECG prompt set names both as aliases of normal, so they are read as normal.
    In pathology "NORM" is NCT-CRC-HE's normal colon mucosa, a tissue class, and stays one."""
    from m3bind.eval.protocol import modality_classes

    for name in ("e.hea", "t.png"):
        (tmp_path / name).write_bytes(b"x")
    _manifest(tmp_path / "ptbxl.csv", "e.hea", [("NORM", "train", "a"), ("SR|LVH", "train", "b"),
                                               ("MI|norm", "val", "c"), ("SR", "test", "d")])
    _manifest(tmp_path / "crc.csv", "t.png", [("NORM", "train", "a"), ("TUM", "test", "b")])
    config = {"modalities": {"ecg": {"manifest": "ptbxl.csv"}, "heart": {"like": "ecg", "manifest": "ptbxl.csv"},
                             "pathology": {"manifest": "crc.csv"}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    exp = Experiment.from_file(tmp_path / "exp.yaml")
    for m in ("ecg", "heart"):
        manifest = exp.manifest(m)
        assert modality_classes(exp, m) == ["normal", "LVH", "MI"], m
        assert [manifest.labels(i) for i in range(4)] == [[], ["LVH"], ["MI"], []]
        assert manifest.read_as_normal == ("NORM", "SR", "norm")
    assert modality_classes(exp, "pathology") == ["normal", "NORM", "TUM"]
    assert exp.manifest("pathology").read_as_normal == ()
    # A prompt file of the user's names its own aliases of normal.
    (tmp_path / "p.yaml").write_text("classes:\n  normal: [no abnormality]\n  MI: [infarct]\naliases:\n  normal: [SR]\n")
    config["modalities"]["ecg"]["prompts"] = "p.yaml"
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    exp = Experiment.from_file(tmp_path / "exp.yaml")
    assert modality_classes(exp, "ecg") == ["normal", "LVH", "MI", "NORM"]
    assert exp.manifest("ecg").read_as_normal == ("SR",)


def test_odir_one_letter_labels_of_a_fundus_manifest_meet_the_shipped_retina_prompts(tmp_path):
    """ODIR-5K labels fundus images N, D, G, C, A, H, M, O. In a fundus manifest N is a normal
    study and the others find the retina set's expert descriptions; O (other) gets naive prompts."""
    from m3bind.eval.protocol import modality_classes

    Image.new("RGB", (40, 30), (120, 40, 20)).save(tmp_path / "f.png")
    _manifest(tmp_path / "odir.csv", "f.png", [("N", "train", "a"), ("D|H", "train", "b"), ("G", "train", "c"),
                                               ("C|A", "val", "d"), ("M", "val", "e"), ("O", "test", "f")])
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(
        {"modalities": {"fundus": {"like": "retina", "manifest": "odir.csv"}}}))
    exp = Experiment.from_file(tmp_path / "exp.yaml")
    assert prompt_set_origin(exp, "fundus") == "retina"  # shipped, not naive prompts
    assert exp.manifest("fundus").labels(0) == []  # N: a normal study, not a class named 'N'
    classes = modality_classes(exp, "fundus")
    assert classes == ["normal", "A", "C", "D", "G", "H", "M", "O"]
    prompts = class_prompts(exp, "fundus", classes, "expert")
    retina = load_prompt_set("retina")
    for letter, name in [("D", "diabetic retinopathy"), ("G", "glaucoma"), ("C", "cataract"), ("H", "hypertensive retinopathy"),
                         ("A", "age-related macular degeneration"), ("M", "pathologic myopia")]:
        assert all(any(description in prompt for prompt in prompts[letter])
                   for description in retina.classes[name]), letter
    assert not any(description in " ".join(prompts["O"]) for descriptions in retina.classes.values()
                   for description in descriptions)


def test_a_published_model_under_another_name_takes_the_prompts_of_the_modality_it_serves(tmp_path):
    """MGCA is an X-ray model: named 'cxr' without `like`, its findings still meet the X-ray
    prompts; an open_clip model told it serves 'retina' takes the fundus prompts."""
    (tmp_path / "a.png").write_bytes(b"x")
    _manifest(tmp_path / "cxr.csv", "a.png", [("Effusion|PTX", "train", "a"), ("", "test", "b")])
    _manifest(tmp_path / "eye.csv", "a.png", [("DR", "train", "a"), ("glaucoma", "test", "b")])
    config = {"modalities": {"cxr": {"model": {"type": "mgca", "path": "m.ckpt"}, "manifest": "cxr.csv"},
                             "eye": {"model": {"type": "open_clip", "path": "o", "options": {"modality": "retina"}},
                                     "manifest": "eye.csv"},
                             "other": {"model": {"type": "open_clip", "path": "o"}, "manifest": "eye.csv"}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    exp = Experiment.from_file(tmp_path / "exp.yaml")
    assert (exp.known_as("cxr"), exp.known_as("eye"), exp.known_as("other")) == ("xray", "retina", "pathology")
    assert prompt_set_origin(exp, "cxr") == "xray" and prompt_set_origin(exp, "eye") == "retina"
    assert prompt_set_origin(exp, "other") is None  # DR and glaucoma are not pathology findings


def test_labels_with_another_separator_are_named_by_m3bind_config_and_in_the_report_notes(tmp_path):
    from typer.testing import CliRunner

    from m3bind.cli import app
    from m3bind.stages.evaluate import _prompt_notes

    Image.new("L", (40, 30), 128).save(tmp_path / "a.png")
    (tmp_path / "cxr.csv").write_text('path,text,labels,split\na.png,r,"Effusion;Edema",train\n'
                                      "a.png,r,Edema,test\n")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"modalities": {"cxr": {"like": "xray", "manifest": "cxr.csv"}}}))
    result = CliRunner().invoke(app, ["config", str(tmp_path / "exp.yaml")], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    expected = "cxr: labels in cxr.csv contain ';' (e.g. 'Effusion;Edema') and none contains '|'"
    assert expected in " ".join(result.output.split())
    notes = _prompt_notes(Experiment.from_file(tmp_path / "exp.yaml"), ["cxr"])
    assert any(note.startswith(expected) and "ONE finding" in note for note in notes)
