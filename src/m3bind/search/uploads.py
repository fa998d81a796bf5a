"""Uploaded studies: which files are accepted, and turning an upload into a path the readers take.

A study that is one file (DICOM, NIfTI, PNG/JPEG/TIFF, .npy) is uploaded as it is; one that is
several files comes as a ``.zip``: a folder of DICOM slices, or a WFDB record (``.hea`` with
its ``.dat``). Names inside a zip are never used as paths: members are written flat into a
fresh folder under their base names, so a crafted zip cannot write outside it, and the total
unpacked size is capped (a small zip can inflate to gigabytes).
"""
from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from m3bind.data.readers import SUPPORTED_EXTENSIONS
from m3bind.errors import DataError

# A WFDB header or signal file alone is not a study; such records come zipped.
SINGLE_FILE_SUFFIXES = tuple(s for s in SUPPORTED_EXTENSIONS if s not in (".hea", ".dat"))
UPLOAD_SUFFIXES = (*SINGLE_FILE_SUFFIXES, ".zip")
_COPY_CHUNK = 1 << 20


class UnsupportedUpload(DataError):
    """An upload whose file type no reader takes."""


class UploadTooLarge(DataError):
    """An upload, or the contents of an uploaded zip, over the size limit."""


_UNSUPPORTED = (f"unsupported file type; upload one of {', '.join(UPLOAD_SUFFIXES)} (a DICOM slice folder or a "
                "WFDB record as a .zip), or a DICOM file under any name")


def upload_suffix(filename: str | None) -> str:
    """The accepted suffix of ``filename`` (``.nii.gz`` counts as one); "" for any other name,
    whose content decides (:func:`save_upload`): PACS exports name DICOM files IM0001 or by UID."""
    name = (filename or "").lower()
    for suffix in sorted(UPLOAD_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def save_upload(source: BinaryIO, folder: Path, suffix: str, max_bytes: int, filename: str | None = None) -> Path:
    """Copy the uploaded stream to ``folder/upload<suffix>``, refusing more than ``max_bytes``.
    Without a suffix the file must be DICOM (the 'DICM' preamble), else UnsupportedUpload."""
    import pydicom

    target = folder / f"upload{suffix or '.dcm'}"
    with open(target, "wb") as handle:
        _copy_limited(source, handle, max_bytes, "upload")
    if not suffix and not pydicom.misc.is_dicom(target):
        raise UnsupportedUpload(filename or "upload", _UNSUPPORTED)
    return target


def unpack_study(archive: Path, folder: Path, max_bytes: int) -> Path:
    """The study inside an uploaded zip: its ``.hea`` record, its only file, or the folder of slices."""
    folder.mkdir()
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir() and not _is_clutter(m.filename)]
            if not members:
                raise DataError(archive, "the zip holds no files")
            names = [PurePosixPath(m.filename.replace("\\", "/")).name for m in members]
            if len(set(names)) != len(names):
                raise DataError(archive, "the zip holds two files with the same name; zip one study, flat")
            budget = max_bytes
            for member, name in zip(members, names):
                with bundle.open(member) as source, open(folder / name, "wb") as handle:
                    budget -= _copy_limited(source, handle, budget, "unpacked zip")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as error:
        raise DataError(archive, f"unreadable zip file: {error}") from error
    files = sorted(folder.iterdir())
    headers = [f for f in files if f.suffix.lower() == ".hea"]
    if len(headers) == 1:
        return headers[0]
    if len(files) == 1:
        return files[0]
    return folder


def _is_clutter(name: str) -> bool:
    """Files archivers add that are not part of a study (macOS resource forks, hidden files)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(part == "__MACOSX" or part.startswith(".") for part in parts)


def _copy_limited(source: BinaryIO, target: BinaryIO, max_bytes: int, what: str) -> int:
    copied = 0
    while chunk := source.read(_COPY_CHUNK):
        copied += len(chunk)
        if copied > max_bytes:
            raise UploadTooLarge(None, f"the {what} is larger than the limit of {max_bytes} bytes")
        target.write(chunk)
    return copied
