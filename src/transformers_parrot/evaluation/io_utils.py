"""Small file helpers: atomic writes and an append-only, fsynced JSONL prediction store."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from transformers.utils.logging import get_logger

logger = get_logger(__name__)

PathLike = str | os.PathLike


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj, indent: int | None = 2) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=False) + ("\n" if indent else "")


def atomic_write_json(path: PathLike, obj) -> None:
    atomic_write_text(path, dumps_json(obj))


def jsonl_line(record: Mapping) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def record_key(record: Mapping) -> tuple:
    return (str(record.get("benchmark", "")), str(record["language"]), int(record["index"]))


class PredictionStore:
    """``predictions.jsonl``: records are appended and fsynced per batch; a rerun reads them back.

    A torn last line (the process died while writing) is dropped when the store is opened, so at most the batch
    in flight is lost. :meth:`finalize` rewrites the file atomically in a canonical order.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.records: dict[tuple, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good_lines: list[str] = []
        dropped = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = record_key(rec)
                except (ValueError, KeyError, TypeError):
                    dropped += 1
                    continue
                if not line.endswith("\n"):
                    line += "\n"
                good_lines.append(line)
                self.records[key] = rec
        if dropped:
            logger.warning("dropped %d incomplete line(s) from %s (interrupted write)", dropped, self.path)
            atomic_write_text(self.path, "".join(good_lines))

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

    def get(self, key: tuple) -> dict | None:
        return self.records.get(key)

    def append(self, records: Iterable[Mapping]) -> None:
        records = [dict(r) for r in records]
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(jsonl_line(r) for r in records))
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[record_key(r)] = r

    def finalize(self, ordered: Iterable[Mapping]) -> None:
        """Rewrite the file atomically, grouped by benchmark (in order of first appearance): a benchmark's
        ``ordered`` records first, then its other stored records (e.g. rows beyond a ``limit``) in stored order."""
        ordered = [dict(r) for r in ordered]
        keys = {record_key(r) for r in ordered}
        groups: dict[str, list[dict]] = {}
        for r in self.records.values():
            groups.setdefault(str(r.get("benchmark", "")), [])
        for r in ordered:
            groups.setdefault(str(r.get("benchmark", "")), []).append(r)
        for k, r in self.records.items():
            if k not in keys:
                groups[str(r.get("benchmark", ""))].append(r)
        all_records = [r for g in groups.values() for r in g]
        atomic_write_text(self.path, "".join(jsonl_line(r) for r in all_records))
        self.records = {record_key(r): r for r in all_records}
