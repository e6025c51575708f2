"""Where a file that ASE cannot read goes wrong: the frame, and for extxyz the property (per-atom column or
per-frame key) whose value is not what its declaration says, so that read_structures' error names both."""

from __future__ import annotations

import re
from pathlib import Path

_KEY = re.compile(r"""([A-Za-z_][\w-]*)\s*=""")


def failing_frame(path: Path, index: str) -> int | None:
    """The index of the first frame ASE cannot read (None when it reads them all one by one)."""
    import ase.io

    k = 0
    try:
        for _ in ase.io.iread(str(path), index=index):
            k += 1
    except Exception:  # noqa: BLE001  ASE raises many types for malformed input
        return k
    return None


def _extxyz_frame(path: Path, k: int) -> tuple[str, list[str]] | None:
    """The comment line and the atom lines of frame k of an extxyz file (None when it is not laid out as one)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
        pos = 0
        for frame in range(k + 1):
            n = int(lines[pos].strip())
            if frame == k:
                return lines[pos + 1], lines[pos + 2 : pos + 2 + n]
            pos += n + 2
    except (ValueError, IndexError, OSError):
        return None
    return None


def _bad_column(comment: str, atom_lines: list[str]) -> str | None:
    """The first per-atom property of a Properties= declaration whose values do not parse as its type."""
    m = re.search(r"Properties=(\S+)", comment, re.IGNORECASE)
    if not m:
        return None
    spec = m.group(1).strip("\"'").split(":")
    col = 0
    for name, kind, width in zip(spec[0::3], spec[1::3], spec[2::3]):
        try:
            n = int(width)
        except ValueError:
            return name
        convert = {"R": float, "I": int}.get(kind.upper())
        for line in atom_lines:
            tokens = line.split()[col : col + n]
            if len(tokens) < n:
                return name
            try:
                for t in tokens if convert is not None else ():
                    convert(t)
            except ValueError:
                return name
        col += n
    return None


def locate(path: Path, index: str, message: str) -> str:
    """' frame K, property NAME' (or the part of it that can be told) for an ASE read error; '' when unknown."""
    k = failing_frame(path, index)
    if k is None:
        return ""
    where = f" frame {k}"
    frame = _extxyz_frame(path, k)
    if frame is None:
        return where
    comment, atom_lines = frame
    named = [key for key in _KEY.findall(comment) if re.search(rf"\b{re.escape(key)}\b", message)]
    bad = named[0] if named else _bad_column(comment, atom_lines)
    return f"{where}, property '{bad}'" if bad else where
