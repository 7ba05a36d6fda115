"""Reading sources: files and directories -> ``(where, row)`` pairs, ``where`` naming the file and line or row.

SOURCE is a .jsonl/.json/.parquet/.arrow file, a Hugging Face ``save_to_disk`` directory (``state.json`` +
``data-*.arrow``, or ``dataset_dict.json`` + one such directory per split), or any other directory, whose
.jsonl/.json/.parquet/.arrow files are read in sorted order (recursively). pyarrow is imported only for
.parquet/.arrow files.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

from .reasons import BAD_SOURCE, BROKEN_JSON, NON_UTF8, Skip

TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise SystemExit("reading .parquet/.arrow needs pyarrow: pip install pyarrow") from None
    return pyarrow


def source_files(source: str) -> list[str]:
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        raise FileNotFoundError(f"no such file or directory: {source}")
    state, splits = os.path.join(source, "state.json"), os.path.join(source, "dataset_dict.json")
    if os.path.isfile(state):  # one save_to_disk split
        with open(state, encoding="utf-8") as f:
            names = [d["filename"] for d in json.load(f).get("_data_files", [])]
        return [os.path.join(source, n) for n in names] or sorted(
            os.path.join(source, n) for n in os.listdir(source) if n.endswith(".arrow"))
    if os.path.isfile(splits):  # a save_to_disk DatasetDict: one directory per split
        with open(splits, encoding="utf-8") as f:
            return [p for s in json.load(f)["splits"] for p in source_files(os.path.join(source, s))]
    found = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        found += [os.path.join(dirpath, n) for n in sorted(filenames)
                  if n.endswith(TABLE_SUFFIXES) and n not in METADATA]
    return found


def _json_rows(path: str, name: str) -> Iterator[tuple[str, object]]:
    with open(path, "rb") as f:
        if path.endswith(".json"):  # a JSON list (or one object); some .json files are really JSON lines
            raw = f.read().decode("utf-8", "surrogateescape")  # bad bytes surface later as NON_UTF8
            try:
                rows = json.loads(raw.lstrip("\ufeff"))
            except json.JSONDecodeError as e:
                if raw.lstrip("\ufeff \t\r\n").startswith("["):
                    yield name, Skip(BROKEN_JSON, f"the whole file: {e.msg} at line {e.lineno}")
                    return
            else:
                for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
                    yield f"{name} row {i}", row
                return
            f.seek(0)
        for n, line in enumerate(f, 1):
            where = f"{name} line {n}"
            line = line.removeprefix(b"\xef\xbb\xbf") if n == 1 else line
            if not line.strip():
                continue
            try:
                yield where, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield where, Skip(NON_UTF8, "the line is not valid UTF-8")
            except json.JSONDecodeError as e:
                yield where, Skip(BROKEN_JSON, f"{e.msg} at character {e.pos}")


def _table_rows(path: str, name: str) -> Iterator[tuple[str, object]]:
    pa = _pyarrow()
    if path.endswith(".parquet"):
        batches = pa.parquet.ParquetFile(path).iter_batches(batch_size=256)
    else:  # save_to_disk writes the Arrow IPC stream format; accept the file format too
        source = pa.memory_map(path)
        try:
            batches = iter(pa.ipc.open_stream(source))
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    i = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield f"{name} row {i}", row
            i += 1


def iter_rows(source: str) -> Iterator[tuple[str, object]]:
    """-> ``(where, row)``; row is a dict, another JSON value, or a ``Skip`` for what could not be read."""
    base = source if os.path.isdir(source) else os.path.dirname(source)
    for path in source_files(source):
        name = os.path.relpath(path, base)
        try:
            yield from (_json_rows if path.endswith((".json", ".jsonl")) else _table_rows)(path, name)
        except (OSError, ValueError, KeyError, TypeError) as e:  # pyarrow's errors subclass these
            yield name, Skip(BAD_SOURCE, f"{type(e).__name__}: {str(e)[:200]}")
