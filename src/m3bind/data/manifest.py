"""Manifests: one table per dataset, one row per study (the project's data interface).

Columns: ``path`` (relative to the manifest's folder), ``text``, ``labels`` ('|'-separated, or a
JSON/Parquet list; empty, "normal" or "No Finding" for a normal study), ``split`` (train/val/test; "validate",
"valid", "validation" and "dev" also mean val, in any case), ``patient_id`` (optional; equal ids
across two modalities' manifests make a cross-modal pair), ``modality`` (optional when the
caller says which modality it expects). Extra columns are kept untouched. CSV, JSONL and
Parquet are read; every validation error names the file, the data row (1-based, header
excluded) and the column.
"""
from __future__ import annotations

import ast
import re
import zlib
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from m3bind.errors import DataError, listed

REQUIRED_COLUMNS = ("path", "text")
OPTIONAL_COLUMNS = ("labels", "split", "patient_id", "modality")
SPLITS = ("train", "val", "test")
# How public datasets name their splits (MIMIC-CXR: "validate", CheXpert: "valid"); any case.
SPLIT_SPELLINGS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                   "validation": "val", "dev": "val", "test": "test", "testing": "test"}
LABEL_SEPARATOR = "|"
# Columns of findings, which JSONL and Parquet manifests may hold as lists (CSV: as list literals).
LIST_COLUMNS = ("labels", "concepts")


@dataclass
class Manifest:
    """A validated manifest. ``table`` keeps every column of the file; ``root`` is its folder."""

    source: Path
    table: pd.DataFrame
    modality: str | None = None
    skipped: list[DataError] = field(default_factory=list)
    # Each table row's 1-based data row in ``source`` (None: the table is the whole file, in
    # order). A split keeps them, so an error on its 3rd study names the row a user can find.
    source_rows: np.ndarray | None = None
    # Labels of the file read as the normal class (other spellings of it the caller named, such
    # as PTB-XL's "NORM"), for the reports to say so.
    read_as_normal: tuple[str, ...] = ()
    # ',' or ';' when label cells hold one and none holds '|': probably findings listed with another
    # separator, read as one class each ("Effusion, Edema"); said by `m3bind config` and the report.
    other_label_separator: str | None = None

    @property
    def root(self) -> Path:
        return self.source.parent

    def __len__(self) -> int:
        return len(self.table)

    def file_row(self, i: int) -> int:
        """The 1-based data row of ``source`` that table row ``i`` came from (for messages)."""
        return int(self.source_rows[i]) if self.source_rows is not None else i + 1

    def split(self, name: str) -> "Manifest":
        """The rows of one split (a new Manifest sharing the source)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; expected one of {', '.join(SPLITS)}")
        mask = (self.table["split"] == name).to_numpy()
        rows = self.table[mask].reset_index(drop=True)
        source_rows = np.arange(1, len(self.table) + 1) if self.source_rows is None else self.source_rows
        return Manifest(self.source, rows, self.modality, source_rows=source_rows[mask],
                        read_as_normal=self.read_as_normal, other_label_separator=self.other_label_separator)

    def absolute_path(self, i: int) -> Path:
        return self.root / str(self.table.at[i, "path"])

    def labels(self, i: int) -> list[str]:
        return parse_labels(self.table.at[i, "labels"])

    def texts(self) -> list[str]:
        return self.table["text"].astype(str).tolist()

    def label_separator_note(self) -> str:
        """What ``other_label_separator`` means for this file, for `m3bind config` and the report."""
        sep = self.other_label_separator
        example = next((f" (e.g. '{cell}')" for cell in self.table["labels"].astype(str) if sep in cell), "")
        return (f"labels in {self.source.name} contain '{sep}'{example} and none contains '|', the "
                f"separator between findings: each such cell is read as ONE finding. If they list several, "
                f"write them '|'-separated (or as a list in JSONL or Parquet).")

    def label_names(self) -> list[str]:
        """All distinct labels in this manifest, sorted."""
        names = {label for raw in self.table["labels"] for label in parse_labels(raw)}
        return sorted(names)


# Labels that mean "no finding". Datasets spell the normal class differently (CheXpert and
# MIMIC-CXR: "No Finding"); m3bind's normal class is an empty label list, so these are read as one.
NORMAL_LABELS = frozenset({"normal", "no finding", "no findings"})


def label_key(label: str) -> str:
    """A label's spelling-free form (case, underscores and spacing ignored): "Pleural_Effusion",
    "pleural effusion" and "PLEURAL EFFUSION" are one finding when two manifests are compared."""
    return " ".join(label.replace("_", " ").casefold().split())


def is_normal_label(label: str) -> bool:
    """Whether ``label`` names the normal class (:data:`NORMAL_LABELS`, in any spelling)."""
    return label_key(label) in NORMAL_LABELS


def parse_labels(raw: object) -> list[str]:
    """The findings of one ``labels`` cell; spellings of the normal class (:data:`NORMAL_LABELS`)
    are left out, so "No Finding", "normal" and an empty cell all mean a normal study."""
    if raw is None or (isinstance(raw, float) and pd.isna(raw)):
        return []
    cells = raw if _is_list_cell(raw) else str(raw).split(LABEL_SEPARATOR)
    parts = (str(part).strip() for part in cells)
    return [part for part in parts if part and not is_normal_label(part)]


# What pandas and pyarrow raise for unparsable, truncated or corrupt-gzip tables.
_TABLE_ERRORS = (ValueError, OSError, EOFError, zlib.error, pa.ArrowException)


def _where_not_utf8(path: Path) -> str:
    """'line N (byte 0xe4)' of the first byte that is not UTF-8, in the file as decompressed."""
    import gzip

    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"line {line} (byte 0x{data[exc.start]:02x})"
    return "somewhere in the file"


def _read_table(path: Path) -> pd.DataFrame:
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.endswith(".gz") else path.suffix.lower()
    try:
        if suffix in (".csv", ".csv.gz", ".tsv", ".tsv.gz"):
            # Everything as text: ids like "00123" must not lose their zeros.
            # skipinitialspace: a hand-written "path, text" header and a quoted cell after ", " read
            # as the columns and cells they mean (the quote would otherwise be text, splitting the cell).
            table = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if ".tsv" in suffix else ",",
                                skipinitialspace=True)
            header = str(table.columns[0]) if len(table.columns) == 1 else ""
            # A spreadsheet saved where ';' is the list separator (much of Europe) writes ';' between
            # columns; one column whose name holds the separator is that, not a one-column table.
            separator = next((sep for sep in (";", "\t") if sep in header), None)
            if separator:
                table = pd.read_csv(path, dtype=str, keep_default_na=False, sep=separator, skipinitialspace=True)
            return _standard_column_names(table)
        if suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
            return _standard_column_names(pd.read_json(path, lines=True, dtype=False))
        if suffix in (".parquet", ".pq"):
            return _standard_column_names(pd.read_parquet(path))
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: {_where_not_utf8(path)}; save the manifest as UTF-8 "
                              "(spreadsheet exports often use Latin-1 or Windows-1252)") from exc
    except _TABLE_ERRORS as exc:
        raise DataError(path, f"cannot parse manifest: {exc}") from exc
    raise DataError(path, f"unsupported manifest format '{suffix}'; use .csv (or .tsv), .jsonl or .parquet")


def _standard_column_names(table: pd.DataFrame) -> pd.DataFrame:
    """``Path``, `` Text`` or ``Patient ID`` as the documented ``path``, ``text``, ``patient_id``
    (spreadsheets capitalise headers). A name already present as documented wins, and two headers
    that would both become one name are left as they are, so nothing is read from a guess."""
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *LIST_COLUMNS, "severity")
    wanted = {column: re.sub(r"[\s-]+", "_", str(column).strip()).casefold() for column in table.columns}
    counts = Counter(wanted.values())
    renames = {column: name for column, name in wanted.items()
               if name in known and name != column and name not in table.columns and counts[name] == 1}
    return table.rename(columns=renames) if renames else table


def read_manifest(path: str | Path, modality: str | None = None, check_files: bool = True,
                  select_modality: bool = False, normal_labels: Collection[str] = ()) -> Manifest:
    """Read and validate a manifest.

    ``modality``: when given, rows whose ``modality`` column says otherwise are an error, and a
    missing column is filled with it; with ``select_modality``, a file whose ``modality`` column
    names several modalities is one table for all of them, and only ``modality``'s rows are read
    (keeping their row numbers in the file for messages). ``check_files``: every ``path`` must
    exist on disk. ``normal_labels``: more spellings of the normal class than
    :data:`NORMAL_LABELS` (a modality's prompt set's aliases of 'normal'); they are read as normal.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "manifest file does not exist")
    table = _read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(path, f"missing required column(s) {', '.join(missing)}; "
                              f"found columns {listed(map(str, table.columns))}")
    if len(table) == 0:
        raise DataError(path, "manifest has no rows")
    table = table.copy()
    if "labels" not in table.columns:
        table["labels"] = ""
    if "split" not in table.columns:
        table["split"] = "train"
    if "patient_id" not in table.columns:
        table["patient_id"] = ""
    if "modality" not in table.columns or modality is not None and (table["modality"].astype(str) == "").all():
        table["modality"] = modality or ""
    for column in LIST_COLUMNS:
        if column in table.columns:  # a JSONL array or Parquet list cell: ["effusion", "edema"]
            table[column] = table[column].map(_joined_list_cell)
    for column in ("path", "text", "labels", "split", "patient_id", "modality"):
        _refuse_list_cells(path, table, column)
        table[column] = table[column].map(_cell_text)
    table["split"] = table["split"].map(lambda v: SPLIT_SPELLINGS.get(v.strip().casefold(), v))
    table["path"] = table["path"].map(_posix_path)
    source_rows = None
    if select_modality and modality is not None:
        table, source_rows = _rows_of_modality(path, table, modality)
    read_as_normal: tuple[str, ...] = ()
    if normal_labels:
        table["labels"], read_as_normal = _without_labels(table["labels"], normal_labels)
    table["labels"] = one_spelling_per_label(table["labels"])

    for i, record in enumerate(table.itertuples(index=False)):
        row = i + 1 if source_rows is None else int(source_rows[i])
        _validate_row(path, row, record._asdict(), modality, check_files)
    return Manifest(path, table.reset_index(drop=True), modality, source_rows=source_rows,
                    read_as_normal=read_as_normal, other_label_separator=other_label_separator(table["labels"]))


def other_label_separator(cells: pd.Series) -> str | None:
    """',' or ';' if label cells use it and none uses the documented '|' (see :class:`Manifest`)."""
    cells = cells.astype(str)
    if cells.str.contains(LABEL_SEPARATOR, regex=False).any():
        return None
    return next((sep for sep in (",", ";") if cells.str.contains(sep, regex=False).any()), None)


def _without_labels(cells: pd.Series, names: Collection[str]) -> tuple[pd.Series, tuple[str, ...]]:
    """The labels column without the labels ``names`` spell (any case or spacing), and the
    spellings that were found."""
    keys = {label_key(name) for name in names}
    found: set[str] = set()
    out = []
    for cell in cells:
        labels = parse_labels(cell)
        kept = [label for label in labels if label_key(label) not in keys]
        found.update(label for label in labels if label_key(label) in keys)
        out.append(LABEL_SEPARATOR.join(kept) if len(kept) < len(labels) else cell)
    return pd.Series(out, index=cells.index, dtype=object), tuple(sorted(found))


def _rows_of_modality(path: Path, table: pd.DataFrame, modality: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``modality``'s rows of a table whose ``modality`` column names several modalities (any
    case), with their 1-based rows in the file; a one-modality table is returned as it is."""
    named = table["modality"].str.strip()
    if not (named != "").any():
        return table, None
    if (named.str.casefold() == modality.casefold()).all():
        return table.assign(modality=modality), None
    names = sorted({name for name in named if name})
    if len(names) == 1:  # one other modality: a manifest given to the wrong modality, not a shared table
        return table, None
    blank = np.flatnonzero((named == "").to_numpy())
    if len(blank):
        raise DataError(path, f"no modality, in a manifest holding several ({', '.join(names)})",
                        row=int(blank[0]) + 1, column="modality")
    keep = (named.str.casefold() == modality.casefold()).to_numpy()
    if not keep.any():
        raise DataError(path, f"no rows of modality '{modality}'; its 'modality' column names {listed(names)}",
                        column="modality")
    table = table[keep].reset_index(drop=True)
    table["modality"] = modality
    return table, np.flatnonzero(keep) + 1


def one_spelling_per_label(cells: pd.Series) -> pd.Series:
    """The labels column with each finding spelled one way: "Cataract", " cataract " and
    "CATARACT" are one class (:func:`label_key`), named by its most frequent spelling in the file
    (ties: the first in sorted order). Repeats within a cell are dropped; a cell without findings
    ("No Finding", empty) is left as it is."""
    parsed = [parse_labels(cell) for cell in cells]
    counts: dict[str, Counter] = {}
    for labels in parsed:
        for label in labels:
            counts.setdefault(label_key(label), Counter())[label] += 1
    spelling = {key: min(c, key=lambda name: (-c[name], name)) for key, c in counts.items()}
    out = []
    for cell, labels in zip(cells, parsed):
        canonical = list(dict.fromkeys(spelling[label_key(label)] for label in labels))
        out.append(LABEL_SEPARATOR.join(canonical) if canonical else cell)
    return pd.Series(out, index=cells.index, dtype=object)


def _posix_path(value: str) -> str:
    """A manifest written on Windows ('images\\p1\\s1.dcm', no '/') read with '/' separators;
    a path that has any '/' is taken as it is (a backslash is then part of a file name)."""
    return value.replace("\\", "/") if "\\" in value and "/" not in value else value


def _is_list_cell(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _list_literal(value: object) -> list | None:
    """The list a CSV cell spells as a literal, ``['Effusion', 'Edema']`` or ``["N"]`` (what pandas'
    ``to_csv`` writes for a list column), else None. ``ast.literal_eval`` evaluates literals only."""
    text = value.strip() if isinstance(value, str) else ""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed) else None


def _joined_list_cell(value: object) -> object:
    """A list cell of a findings column (a JSONL or Parquet array, or a CSV cell holding a list
    literal) as one '|'-separated cell; other cells unchanged."""
    items = value if _is_list_cell(value) else _list_literal(value)
    if items is None:
        return value
    return LABEL_SEPARATOR.join(part for part in (str(p).strip() for p in items) if part)


def _refuse_list_cells(path: Path, table: pd.DataFrame, column: str) -> None:
    """Only findings columns may hold lists; a list path or report is a malformed row, named."""
    for row, value in enumerate(table[column], start=1):
        if _is_list_cell(value):
            raise DataError(path, f"a list ({_short(value)}) where one value is expected", row=row, column=column)


def _short(value: object, limit: int = 60) -> str:
    text = repr(list(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _cell_text(value: object) -> str:
    """A cell as text. A JSONL or Parquet id column with a missing value is read as floats, so
    patient 12 would become "12.0" there and never match "12" in a CSV: whole floats lose the '.0'."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _validate_row(path: Path, row: int, record: dict, modality: str | None, check_files: bool) -> None:
    if not record["path"].strip():
        raise DataError(path, "empty path", row=row, column="path")
    if not record["text"].strip():
        raise DataError(path, "empty text (every study needs its report or caption)", row=row, column="text")
    if record["split"] not in SPLITS:
        raise DataError(path, f"'{record['split']}' is not a split; expected one of {', '.join(SPLITS)}",
                        row=row, column="split")
    if modality is not None and record["modality"] not in ("", modality):
        raise DataError(path, f"modality '{record['modality']}' but this manifest is used for '{modality}'",
                        row=row, column="modality")
    if check_files:
        try:
            exists = (path.parent / record["path"]).exists()
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise DataError(path, f"file '{record['path']}' cannot be looked up: {exc.strerror}",
                            row=row, column="path") from exc
        if not exists:
            raise DataError(path, f"file '{record['path']}' does not exist (paths are relative to the manifest's folder)",
                            row=row, column="path")


def write_manifest(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest in the format its suffix names (csv, jsonl or parquet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        table.to_json(path, orient="records", lines=True)
    elif suffix in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    else:
        raise DataError(path, f"unsupported manifest format '{suffix}'; use .csv (or .tsv), .jsonl or .parquet")
    return path
