import json

import pandas as pd
import pytest

from m3bind.data.manifest import read_manifest, write_manifest
from m3bind.errors import DataError


def _rows(tmp_path, n=3):
    for i in range(n):
        (tmp_path / f"s{i}.npy").write_bytes(b"x")
    return [{"path": f"s{i}.npy", "text": f"report {i}", "labels": "cardiomegaly|pleural effusion" if i else "",
             "split": "train", "patient_id": f"00{i}", "modality": "xray", "site": "A"} for i in range(n)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_all_formats_read_the_same_and_keep_extra_columns(tmp_path, suffix):
    path = write_manifest(pd.DataFrame(_rows(tmp_path)), tmp_path / f"m{suffix}")
    manifest = read_manifest(path, modality="xray")
    assert len(manifest) == 3
    assert manifest.labels(1) == ["cardiomegaly", "pleural effusion"]
    assert manifest.labels(0) == []
    assert manifest.table.at[0, "site"] == "A"
    assert manifest.table.at[2, "patient_id"] == "002"  # leading zeros survive
    assert manifest.absolute_path(0) == tmp_path / "s0.npy"
    assert manifest.label_names() == ["cardiomegaly", "pleural effusion"]


def test_bad_split_names_file_row_and_column(tmp_path):
    rows = _rows(tmp_path)
    rows[1]["split"] = "tran"
    path = write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    with pytest.raises(DataError) as info:
        read_manifest(path)
    err = info.value
    assert (err.row, err.column) == (2, "split")
    assert "m.csv, row 2, column 'split': 'tran' is not a split" in str(err)


def test_missing_file_empty_text_and_missing_columns(tmp_path):
    rows = _rows(tmp_path)
    rows[2]["path"] = "nowhere.npy"
    path = write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    with pytest.raises(DataError, match="row 3, column 'path': file 'nowhere.npy' does not exist"):
        read_manifest(path)
    assert len(read_manifest(path, check_files=False)) == 3

    rows = _rows(tmp_path)
    rows[0]["text"] = ""
    path = write_manifest(pd.DataFrame(rows), tmp_path / "m2.csv")
    with pytest.raises(DataError, match="row 1, column 'text'"):
        read_manifest(path)

    path = tmp_path / "m3.csv"
    pd.DataFrame([{"path": "s0.npy"}]).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing required column"):
        read_manifest(path)


def test_modality_mismatch_and_optional_columns(tmp_path):
    rows = _rows(tmp_path)
    path = write_manifest(pd.DataFrame(rows), tmp_path / "m.jsonl")
    with pytest.raises(DataError, match="row 1, column 'modality'"):
        read_manifest(path, modality="ct")
    minimal = tmp_path / "minimal.csv"
    pd.DataFrame([{"path": "s0.npy", "text": "normal"}]).to_csv(minimal, index=False)
    manifest = read_manifest(minimal, modality="ecg")
    assert manifest.table.at[0, "split"] == "train" and manifest.table.at[0, "modality"] == "ecg"


def test_split_selection_and_unparseable_file(tmp_path):
    rows = _rows(tmp_path)
    rows[0]["split"] = "test"
    manifest = read_manifest(write_manifest(pd.DataFrame(rows), tmp_path / "m.csv"))
    assert len(manifest.split("train")) == 2 and len(manifest.split("test")) == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="broken.jsonl: cannot parse manifest"):
        read_manifest(broken)
    with pytest.raises(DataError, match="unsupported manifest format"):
        read_manifest(tmp_path / "s0.npy")


@pytest.mark.parametrize("cell", ["", "normal", "Normal", "No Finding", "NO_FINDING", "no findings", " | normal |"])
def test_spellings_of_the_normal_class_are_a_normal_study(tmp_path, cell):
    # CheXpert and MIMIC-CXR write "No Finding"; m3bind's normal class is an empty label list, so
    # a user's "No Finding" must not become a second normal class beside the built-in one.
    (tmp_path / "a.png").touch()
    (tmp_path / "b.png").touch()
    (tmp_path / "m.csv").write_text(f"path,text,labels\na.png,clear,{cell}\nb.png,big heart,Cardiomegaly|No Finding\n")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.labels(0) == []
    assert manifest.labels(1) == ["Cardiomegaly"]
    assert manifest.label_names() == ["Cardiomegaly"]


def test_label_key_ignores_spelling():
    from m3bind.data.manifest import label_key

    assert label_key("Pleural_Effusion") == label_key("pleural  effusion") == label_key("PLEURAL EFFUSION")
    assert label_key("pleural effusion") != label_key("pericardial effusion")


def test_public_datasets_split_names_are_read_as_train_val_test(tmp_path):
    # MIMIC-CXR's split file says "validate", CheXpert's folders "valid"; a typo is still an error.
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / f"{name}.png").touch()
    (tmp_path / "m.csv").write_text("path,text,split\na.png,x,Train\nb.png,x,validate\nc.png,x,VALID\n"
                                    "d.png,x,dev\ne.png,x, Test \n")
    assert read_manifest(tmp_path / "m.csv").table["split"].tolist() == ["train", "val", "val", "val", "test"]
    (tmp_path / "bad.csv").write_text("path,text,split\na.png,x,train\nb.png,x,tset\n")
    with pytest.raises(DataError, match=r"bad.csv, row 2, column 'split': 'tset' is not a split"):
        read_manifest(tmp_path / "bad.csv")


def test_patient_ids_match_across_csv_and_jsonl_with_missing_values(tmp_path):
    # A JSONL id column with a gap is read as floats (12.0); the CSV keeps "12" and "007" as text.
    (tmp_path / "a.png").touch()
    pd.DataFrame({"path": ["a.png", "a.png"], "text": ["x", "y"], "patient_id": [12, None]}).to_json(
        tmp_path / "m.jsonl", orient="records", lines=True)
    assert read_manifest(tmp_path / "m.jsonl").table["patient_id"].tolist() == ["12", ""]
    (tmp_path / "m.csv").write_text("path,text,patient_id\na.png,x,12\na.png,y,007\n")
    assert read_manifest(tmp_path / "m.csv").table["patient_id"].tolist() == ["12", "007"]


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_manifest_that_is_not_utf8_names_its_line_and_the_fix(tmp_path, gzipped):
    """Spreadsheet exports are often Latin-1: the error says which line, which byte, and what to do."""
    import gzip

    (tmp_path / "a.png").write_bytes(b"")
    text = "path,text,labels\na.png,Normal heart.,\na.png,Befund: unauffällig.,\n".encode("latin-1")
    path = tmp_path / ("m.csv.gz" if gzipped else "m.csv")
    path.write_bytes(gzip.compress(text) if gzipped else text)
    with pytest.raises(DataError, match=r"m\.csv(\.gz)?: not UTF-8 text: line 3 \(byte 0xe4\); save the manifest as UTF-8"):
        read_manifest(path, "xray", check_files=False)


def test_one_class_per_finding_whatever_its_spelling_in_the_file(tmp_path):
    """Hand-made manifests spell a finding several ways; each finding is one class, named by its
    most frequent spelling, and every study's labels use that name."""
    (tmp_path / "a.png").write_bytes(b"")
    table = pd.DataFrame({"path": ["a.png"] * 6, "text": ["r"] * 6,
                          "labels": ["cataract", " Cataract ", "CATARACT|drusen", "cataract|Drusen|cataract",
                                     "No Finding", "Pleural_Effusion|pleural effusion"]})
    table.to_csv(tmp_path / "m.csv", index=False)
    manifest = read_manifest(tmp_path / "m.csv", "retina")
    # "drusen" and "Drusen" once each: a tie, so the first in sorted order
    assert manifest.label_names() == ["Drusen", "Pleural_Effusion", "cataract"]
    assert [manifest.labels(i) for i in range(6)] == [["cataract"], ["cataract"], ["cataract", "Drusen"],
                                                      ["cataract", "Drusen"], [], ["Pleural_Effusion"]]
    assert manifest.table.at[4, "labels"] == "No Finding"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_findings_as_lists_read_like_separated_cells(tmp_path, suffix):
    """JSONL and Parquet manifests naturally hold findings as arrays: they must be the same
    findings as the '|'-separated CSV cell, not one class named "['effusion', 'edema']"."""
    (tmp_path / "a.png").write_bytes(b"")
    table = pd.DataFrame({"path": ["a.png"] * 4, "text": ["r"] * 4,
                          "labels": [["Effusion", "edema"], [], ["No Finding"], ["effusion"]],
                          "concepts": [["effusion"], [], [], ["effusion", "edema"]]})
    path = tmp_path / f"m{suffix}"
    table.to_json(path, orient="records", lines=True) if suffix == ".jsonl" else table.to_parquet(path)
    manifest = read_manifest(path, "xray")
    assert [manifest.labels(i) for i in range(4)] == [["Effusion", "edema"], [], [], ["Effusion"]]
    assert manifest.label_names() == ["Effusion", "edema"]
    assert manifest.table["concepts"].tolist() == ["effusion", "", "", "effusion|edema"]


def test_a_list_where_one_value_belongs_names_row_and_column(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    pd.DataFrame({"path": ["a.png", "a.png"], "text": ["fine", ["two", "reports"]]}).to_json(
        tmp_path / "m.jsonl", orient="records", lines=True)
    with pytest.raises(DataError, match=r"m\.jsonl, row 2, column 'text': a list \(\['two', 'reports'\]\) where one value"):
        read_manifest(tmp_path / "m.jsonl", "xray")


def test_a_manifest_written_on_windows_finds_its_files(tmp_path):
    (tmp_path / "images" / "p1").mkdir(parents=True)
    (tmp_path / "images" / "p1" / "s1.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text("path,text\nimages\\p1\\s1.png,Normal.\n")
    manifest = read_manifest(tmp_path / "m.csv", "xray")
    assert manifest.table.at[0, "path"] == "images/p1/s1.png"
    assert manifest.absolute_path(0) == tmp_path / "images" / "p1" / "s1.png"
    # with a '/' anywhere the path is taken literally, so a missing file is still named as written
    (tmp_path / "n.csv").write_text("path,text\nimages/p1\\s1.png,Normal.\n")
    with pytest.raises(DataError, match=r"row 1, column 'path': file 'images/p1\\s1\.png' does not exist"):
        read_manifest(tmp_path / "n.csv", "xray")


def test_one_table_for_several_modalities_gives_each_its_own_rows_with_their_file_rows(tmp_path):
    """A dataset exported as one table with a modality column: each modality of the config reads
    its rows (any case), labels are spelled one way per modality, split rows and errors keep the
    row numbers of the file; a file of one other modality is still the wrong file, and a table of
    several with a row naming none is refused at that row."""
    for i in range(6):
        (tmp_path / f"s{i}.npy").write_bytes(b"x")
    rows = [{"path": f"s{i}.npy", "text": f"report {i}", "labels": label, "split": split, "modality": modality,
             "patient_id": f"p{i}"}
            for i, (label, split, modality) in enumerate([("Effusion", "train", "xray"), ("LVH", "train", "ECG"),
                                                           ("effusion", "test", "xray"), ("", "test", "ecg"),
                                                           ("EFFUSION", "test", "Xray"), ("", "val", "mri")])]
    path = write_manifest(pd.DataFrame(rows), tmp_path / "all.csv")
    xray = read_manifest(path, "xray", select_modality=True)
    assert xray.table["text"].tolist() == ["report 0", "report 2", "report 4"]
    assert set(xray.table["modality"]) == {"xray"} and xray.label_names() == ["EFFUSION"]  # one spelling (ties: sorted first)
    assert [xray.file_row(i) for i in range(3)] == [1, 3, 5]
    test = xray.split("test")
    assert [test.file_row(i) for i in range(len(test))] == [3, 5]
    ecg = read_manifest(path, "ecg", select_modality=True)
    assert [ecg.file_row(i) for i in range(len(ecg))] == [2, 4] and ecg.label_names() == ["LVH"]
    with pytest.raises(DataError, match="all.csv, column 'modality': no rows of modality 'ct'; its 'modality' "
                                        "column names ECG, Xray, ecg, mri, xray"):
        read_manifest(path, "ct", select_modality=True)
    with pytest.raises(DataError, match="row 2, column 'modality'"):  # without select_modality: one modality per file
        read_manifest(path, "xray")
    (tmp_path / "s3.npy").unlink()
    with pytest.raises(DataError, match=r"all.csv, row 4, column 'path': file 's3.npy' does not exist"):
        read_manifest(path, "ecg", select_modality=True)
    rows[3]["modality"] = ""
    (tmp_path / "s3.npy").write_bytes(b"x")
    with pytest.raises(DataError, match="row 4, column 'modality': no modality, in a manifest holding several"):
        read_manifest(write_manifest(pd.DataFrame(rows), tmp_path / "all.csv"), "xray", select_modality=True)
    only_ct = write_manifest(pd.DataFrame([{**rows[0], "modality": "ct"}]), tmp_path / "ct.csv")
    with pytest.raises(DataError, match="row 1, column 'modality': modality 'ct' but this manifest is used for 'xray'"):
        read_manifest(only_ct, "xray", select_modality=True)


def test_spreadsheet_exports_read_whatever_their_separator(tmp_path):
    """Excel writes ';' between columns where ';' is the list separator, and a BOM; a tab-separated
    export is .tsv. A report holding the other separator stays one cell."""
    (tmp_path / "s0.npy").write_bytes(b"x")
    rows = ["path;text;labels;split", 's0.npy;"Effusion, small";Effusion|Edema;train', "s0.npy;Clear, no effusion.;;test"]
    (tmp_path / "semi.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    (tmp_path / "tabs.tsv").write_text("\n".join(r.replace(";", "\t") for r in rows) + "\n")
    for name in ("semi.csv", "tabs.tsv"):
        manifest = read_manifest(tmp_path / name)
        assert list(manifest.table.columns)[:4] == ["path", "text", "labels", "split"], name
        assert manifest.table["text"].tolist() == ["Effusion, small", "Clear, no effusion."], name
        assert manifest.labels(0) == ["Effusion", "Edema"] and manifest.table["split"].tolist() == ["train", "test"]


def test_a_table_of_many_other_columns_gets_a_short_error(tmp_path):
    path = tmp_path / "wide.csv"
    pd.DataFrame({f"c{i}": [1] for i in range(100)}).to_csv(path, index=False)
    with pytest.raises(DataError) as error:
        read_manifest(path)
    assert str(error.value).endswith("missing required column(s) path, text; found columns c0, c1, c2, c3, c4, c5, "
                                     "c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, ... (80 more)")


def test_hand_written_and_capitalised_headers_read_as_the_documented_columns(tmp_path):
    """A header typed as "path, text, labels" and a quoted cell after ", " (pandas would read the
    quote as text and split the cell), and spreadsheet headers such as "Path" or "Patient ID"."""
    (tmp_path / "s0.npy").write_bytes(b"x")
    (tmp_path / "spaces.csv").write_text('path, text, labels, split\ns0.npy, "Effusion, small", Effusion|Edema, train\n'
                                         's0.npy, Clear., , test\n')
    (tmp_path / "caps.csv").write_text("Path,Text,Labels,Split,Patient ID\ns0.npy,\"Effusion, small\",Effusion|Edema,"
                                       "Train,007\ns0.npy,Clear.,,TEST,008\n")
    for name in ("spaces.csv", "caps.csv"):
        manifest = read_manifest(tmp_path / name, "xray")
        assert manifest.table["text"].tolist() == ["Effusion, small", "Clear."], name
        assert manifest.labels(0) == ["Effusion", "Edema"] and manifest.labels(1) == [], name
        assert manifest.table["split"].tolist() == ["train", "test"], name
    assert read_manifest(tmp_path / "caps.csv").table["patient_id"].tolist() == ["007", "008"]
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text(json.dumps({"Path": "s0.npy", "TEXT": "Clear.", "Labels": ["Edema"]}) + "\n")
    assert read_manifest(jsonl, "xray").labels(0) == ["Edema"]


def test_headers_that_would_collide_are_not_guessed(tmp_path):
    """'path' is read as written, 'Path' beside it stays another column; "Text" and "text " would
    both become 'text', so neither is renamed and the error names what was found."""
    (tmp_path / "s0.npy").write_bytes(b"x")
    (tmp_path / "both.csv").write_text("path,Path,text\ns0.npy,other.npy,Clear.\n")
    manifest = read_manifest(tmp_path / "both.csv", "xray")
    assert manifest.table["path"].tolist() == ["s0.npy"] and manifest.table["Path"].tolist() == ["other.npy"]
    (tmp_path / "twice.csv").write_text("path,Text,TEXT\ns0.npy,a,b\n")
    with pytest.raises(DataError, match="missing required column\\(s\\) text; found columns path, Text, TEXT"):
        read_manifest(tmp_path / "twice.csv", "xray")


def test_a_csv_cell_holding_a_list_literal_is_that_list_of_findings(tmp_path):
    """pandas' to_csv writes a list column as "['Effusion', 'Edema']": the findings, not one class
    named by the brackets. Cells that only look alike stay as written."""
    (tmp_path / "a.png").write_bytes(b"")
    table = pd.DataFrame({"path": ["a.png"] * 5, "text": ["r"] * 5,
                          "labels": [["Effusion", "edema"], [], ["N"], "[not a list", "['x', 3]"]})
    table.to_csv(tmp_path / "m.csv", index=False)
    manifest = read_manifest(tmp_path / "m.csv", "xray")
    assert [manifest.labels(i) for i in range(3)] == [["Effusion", "edema"], [], ["N"]]
    assert manifest.table["labels"].tolist()[3:] == ["[not a list", "['x', 3]"]


@pytest.mark.parametrize("cells, separator", [(["Effusion, Edema", "", "Edema"], ","),
                                              (["Effusion;Edema", "Edema"], ";"),
                                              (["Effusion|Edema", "Atelectasis, plate-like"], None),
                                              (["Effusion", "Edema"], None)])
def test_labels_listed_with_another_separator_are_named_not_guessed(tmp_path, cells, separator):
    (tmp_path / "a.png").write_bytes(b"")
    pd.DataFrame({"path": ["a.png"] * len(cells), "text": ["r"] * len(cells), "labels": cells}).to_csv(
        tmp_path / "m.csv", index=False)
    manifest = read_manifest(tmp_path / "m.csv", "xray")
    assert manifest.other_label_separator == separator
    assert manifest.labels(0) == ([cells[0]] if separator else cells[0].split("|"))  # read as documented
    if separator:
        note = manifest.label_separator_note()
        assert f"contain '{separator}' (e.g. '{cells[0]}')" in note and "ONE finding" in note
        assert manifest.split("train").other_label_separator == separator
