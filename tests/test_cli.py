"""The command line: clean one-line errors, and the commands on a tiny cohort."""
import yaml
from typer.testing import CliRunner

from m3bind.cli import app

runner = CliRunner()


def test_bad_config_is_one_clear_line_and_exit_code_2(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"bind": {"lamda_text": 1}}))
    result = runner.invoke(app, ["config", str(config)])
    assert result.exit_code == 2
    assert "bind.lamda_text: unknown key (did you mean 'lambda_text'?)" in result.output
    assert "Traceback" not in result.output


def test_missing_manifest_and_missing_phase_one_are_clean_errors(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"modalities": {"xray": {"manifest": "nowhere.csv"}}}))
    result = runner.invoke(app, ["pretrain", str(config)])
    assert result.exit_code == 2 and "nowhere.csv: manifest file does not exist" in result.output


def test_cohort_command_writes_manifests_and_preview(tmp_path):
    out = tmp_path / "cohort"
    result = runner.invoke(app, ["cohort", "--out", str(out), "--patients", "30", "--preview", "--workers", "1"])
    assert result.exit_code == 0, result.output
    for modality in ("xray", "ct", "retina", "ecg", "pathology"):
        assert (out / modality / "manifest.csv").exists()
    assert (out / "preview.png").stat().st_size > 10_000
    assert "xray" in result.output and "train" in result.output


def test_config_reads_the_manifests_it_names_and_shows_their_splits(tmp_path):
    """`m3bind config` is the dry run before a long job: a missing study file, or a first study
    that cannot be decoded, is found there, named with its row, and a good config shows each
    manifest's splits, classes and the preprocessed shape of its first study."""
    from PIL import Image

    Image.new("L", (40, 30), 128).save(tmp_path / "a.png")
    (tmp_path / "xray.csv").write_text("path,text,labels,split,patient_id\n"
                                       "a.png,Enlarged heart.,Cardiomegaly,train,p1\n"
                                       "a.png,Clear lungs.,,val,p2\n"
                                       "a.png,Effusion.,Pleural Effusion,test,p3\n")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"modalities": {"xray": {"manifest": "xray.csv"}}, "demo_sizes": False}))
    result = runner.invoke(app, ["config", str(config)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ xray"))
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[:6] == ["xray", "training", "1", "1", "1", "3"]
    assert cells[7] == "3x224x224"  # the published X-ray preprocessing (demo_sizes off, as the file says)
    assert "Cardiom" in cells[6]  # the classes (the column wraps in a narrow terminal)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "xray.csv").write_text("path,text\nbad.png,Unreadable.\n")
    unreadable = runner.invoke(app, ["config", str(config)])
    assert unreadable.exit_code == 2 and "bad.png" in unreadable.output and "row 1" in unreadable.output
    (tmp_path / "xray.csv").write_text("path,text\na.png,Fine.\nb.png,Missing file.\n")
    missing = runner.invoke(app, ["config", str(config)])
    assert missing.exit_code == 2 and "xray.csv, row 2, column 'path': file 'b.png' does not exist" in missing.output
    assert runner.invoke(app, ["config", str(config), "--no-data"]).exit_code == 0


def test_a_misspelt_modality_in_another_section_is_named(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"modalities": {"xray": {"manifest": "x.csv"}, "ecg": {"manifest": "e.csv"}},
                                      "paired_manifests": {"xr": "p.csv", "ecg": "q.csv"}}, sort_keys=False))
    result = runner.invoke(app, ["config", str(config), "--no-data"])
    assert result.exit_code == 2
    assert "paired_manifests names 'xr', which is not under modalities (xray, ecg); did you mean 'xray'?" in result.output


def test_config_refuses_a_paired_set_that_run_would_refuse(tmp_path):
    from PIL import Image

    Image.new("L", (40, 30), 128).save(tmp_path / "a.png")
    for m in ("xray", "ecg"):
        (tmp_path / f"{m}.csv").write_text("path,text,split,patient_id\na.png,r,train,t1\na.png,r,test,q1\n")
    (tmp_path / "px.csv").write_text("path,text,split,patient_id\na.png,r,val,p1\na.png,r,test,p1\n")
    (tmp_path / "pe.csv").write_text("path,text,split,patient_id\na.png,r,val,p1\na.png,r,test,p2\n")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"modalities": {"xray": {"manifest": "xray.csv"}, "ecg": {"manifest": "ecg.csv"}},
                                      "paired_manifests": {"xray": "px.csv", "ecg": "pe.csv"}}))
    result = runner.invoke(app, ["config", str(config)])
    assert result.exit_code == 2
    assert "patient(s) of the paired set are on both the 'val' and the 'test' split (e.g. 'p1'" in result.output


def test_config_reads_one_table_shared_by_several_modalities_and_names_rows_nobody_reads(tmp_path):
    from PIL import Image

    Image.new("L", (40, 30), 128).save(tmp_path / "a.png")
    Image.new("RGB", (40, 40), (120, 30, 30)).save(tmp_path / "f.png")
    (tmp_path / "all.csv").write_text("path,text,labels,split,patient_id,modality\n"
                                      "a.png,Enlarged heart.,Cardiomegaly,train,p1,xray\n"
                                      "f.png,Cupped disc.,Glaucoma,train,p1,retina\n"
                                      "a.png,Clear.,,test,p2,XRAY\n"
                                      "f.png,Clear.,,test,p2,retina\n"
                                      "f.png,Clear.,,val,p3,retina\n"
                                      "a.png,Brain.,,train,p4,mri\n")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"demo_sizes": True, "modalities": {"xray": {"manifest": "all.csv"},
                                                                         "retina": {"manifest": "all.csv"}}}))
    result = runner.invoke(app, ["config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in result.output.splitlines()
            if line.startswith("│ ")]
    rows = {cells[0]: cells[1:] for cells in reversed(rows)}  # the manifests table (the first) wins
    assert rows["xray"][:5] == ["training", "1", "0", "1", "2"]
    assert rows["retina"][:5] == ["training", "1", "1", "1", "3"]
    assert "rows not read (1 of 'mri'): no modality of the config by that name uses this file" in result.output
    (tmp_path / "all.csv").write_text((tmp_path / "all.csv").read_text().replace("Glaucoma", '"Glaucoma, Cataract"'))
    result = runner.invoke(app, ["config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert ("retina: 1 classes hold ',' or ';' (e.g. 'Glaucoma, Cataract'); findings are separated by '|'"
            in result.output)
    assert "xray: 1 classes hold" not in result.output


def test_config_names_the_text_backbone_of_each_built_in_model_and_of_the_student(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "modalities": {"xray": {}, "ecg": {"model": {"type": "builtin", "options": {"text_backbone": "scratch"}}}},
        "distill": {"student": {"backbone": "scratch"}}}))
    result = runner.invoke(app, ["config", str(config), "--no-data"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "built-in text towers: ecg small BERT from scratch, xray frozen all-MiniLM-L6-v2 + trainable layers" in result.output
    assert "student: built-in, small BERT from scratch" in result.output
