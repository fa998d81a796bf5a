"""Property-based fuzzing of the manifest loader, read_manifest (hypothesis).

Each case writes a manifest (random bytes, or a drawn table written as CSV, JSONL or Parquet,
possibly gzip-truncated or under a wrong name) and reads it; it must end in a DataError
naming the manifest, or a valid Manifest, within the limits of :mod:`_fuzz`.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, reject
from hypothesis import strategies as st

from _fuzz import case_count, fuzz_settings, outcome, write_counts
from m3bind.data.manifest import SPLITS, Manifest, read_manifest

EXAMPLES = 700  # about 8 s on two CPU cores

# Column names: the real ones (so tables often validate far enough to reach row checks),
# odd ones, and duplicates.
COLUMNS = st.sampled_from(["path", "text", "labels", "split", "patient_id", "modality", "site",
                           "", "path ", "Path", "0", "päth", "a,b", "x\ny"])
CELLS = st.one_of(
    st.sampled_from(["s0.npy", "sub/s1.npy", "../outside.npy", "/etc/hostname", "", " ",
                     "train", "val", "test", "tran", "xray", "ct", "a|b||c", "nan", "None",
                     "null", "x\0y.npy", "a" * 5000, "sub", "ünï.npy", "\ufeffs0.npy"]),
    st.text(max_size=20),
    st.integers(-2 ** 63, 2 ** 63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
)


@st.composite
def tables(draw) -> tuple[list[str], list[list[object]]]:
    """A drawn table: a header (which may repeat or miss the required columns) and its rows."""
    columns = draw(st.lists(COLUMNS, max_size=7))
    rows = draw(st.lists(st.lists(CELLS, min_size=len(columns), max_size=len(columns)),
                         max_size=6))
    return columns, rows


VALID_ROW = ["s0.npy", "Small left pleural effusion.", "effusion|cardiomegaly", "train", "007",
             "xray"]


@st.composite
def near_valid_tables(draw) -> tuple[list[str], list[list[object]]]:
    """A valid table with one cell drawn freely, so the case reaches the per-row checks."""
    columns = ["path", "text", "labels", "split", "patient_id", "modality"]
    rows = [list(VALID_ROW) for _ in range(draw(st.integers(1, 4)))]
    rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, len(columns) - 1))] = draw(CELLS)
    return columns, rows


def _csv(columns: list[str], rows: list[list[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue().encode("utf-8", "surrogatepass")


def _jsonl(columns: list[str], rows: list[list[object]]) -> bytes:
    lines = [json.dumps(dict(zip(columns, row))) for row in rows]  # NaN/Infinity as JSON5 does
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _parquet(columns: list[str], rows: list[list[object]]) -> bytes:
    arrays = []
    for i in range(len(columns)):
        values = [row[i] for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowException, OverflowError):  # mixed types: store as text
            arrays.append(pa.array([None if v is None else str(v) for v in values]))
    table = pa.Table.from_arrays(arrays, names=columns)  # duplicate names are allowed here
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _encode(fmt: str, table: tuple[list[str], list[list[object]]]) -> bytes:
    try:
        return {"csv": _csv, "jsonl": _jsonl, "parquet": _parquet}[fmt](*table)
    except Exception:  # noqa: BLE001 - the writer cannot store this table: no loader case
        reject()


manifest_cases = st.one_of(
    st.tuples(st.just("random bytes"), st.binary(max_size=2048),
              st.sampled_from([".csv", ".jsonl", ".parquet", ".csv.gz", ".jsonl.gz", ".ndjson",
                               ".pq", ".txt", ".json"])),
    st.tuples(st.just("empty file"), st.just(b""), st.sampled_from([".csv", ".jsonl", ".parquet"])),
    st.tuples(st.just("drawn table"), st.tuples(st.sampled_from(["csv", "jsonl", "parquet"]),
                                                tables()),
              st.sampled_from(["as written", "gzip", "gzip truncated", "wrong extension"])),
    st.tuples(st.just("valid table, one cell drawn"),
              st.tuples(st.sampled_from(["csv", "jsonl", "parquet"]), near_valid_tables()),
              st.just("as written")),
)


@fuzz_settings(EXAMPLES)
@given(case=manifest_cases, cut=st.integers(0, 10 ** 5),
       modality=st.sampled_from([None, "xray", "ct"]), check_files=st.booleans(),
       as_folder=st.sampled_from([False, False, False, False, True]))
# found by this fuzzing: a truncated gzip raised EOFError, and a 5000-character path
# OSError (name too long) from the existence check
@example(case=("random bytes", gzip.compress(b"path,text\n")[:15], ".csv.gz"), cut=0,
         modality=None, check_files=True, as_folder=False)
@example(case=("valid table, one cell drawn", ("csv", (["path", "text"], [["a" * 5000, "x"]])),
               "as written"), cut=0, modality=None, check_files=True, as_folder=False)
def _fuzz_manifest(case, cut, modality, check_files, as_folder):
    kind, payload, variant = case
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "s0.npy").write_bytes(b"x")
        (folder / "sub").mkdir()
        (folder / "sub" / "s1.npy").write_bytes(b"x")
        if kind in ("drawn table", "valid table, one cell drawn"):
            fmt, table = payload
            data = _encode(fmt, table)
            suffix = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}[fmt]
            if variant.startswith("gzip"):
                if fmt == "parquet":
                    reject()
                data, suffix = gzip.compress(data), suffix + ".gz"
                if variant == "gzip truncated":
                    data = data[:cut % (len(data) + 1)]
            elif variant == "wrong extension":
                suffix = {".csv": ".parquet", ".jsonl": ".csv", ".parquet": ".jsonl"}[suffix]
            label = (f"{kind} ({fmt})" if kind != "drawn table"
                     else f"drawn {fmt} table (header and cells), {variant}")
        else:
            data, suffix, label = payload, variant, kind
        path = folder / f"manifest{suffix}"
        if as_folder:
            path.mkdir()
            (path / "inner.csv").write_bytes(data)
            label = "a folder named like a manifest"
        else:
            path.write_bytes(data)
        outcome("manifest", label, str(path),
                lambda: read_manifest(path, modality=modality, check_files=check_files),
                _valid_manifest)


def _valid_manifest(manifest: Manifest) -> None:
    assert isinstance(manifest, Manifest) and len(manifest) > 0
    for column in ("path", "text", "labels", "split", "patient_id", "modality"):
        assert all(isinstance(v, str) for v in manifest.table[column])
    assert set(manifest.table["split"]) <= set(SPLITS)
    assert all(manifest.labels(i) is not None for i in range(len(manifest)))


def test_fuzz_manifest():
    _fuzz_manifest()
    assert case_count("manifest") >= EXAMPLES * 0.8, case_count("manifest")


@pytest.fixture(scope="module", autouse=True)
def _write_case_counts():
    yield
    if os.environ.get("M3BIND_FUZZ_COUNTS"):
        write_counts(os.environ["M3BIND_FUZZ_COUNTS"])
