"""Read an offline W&B run (`<run dir>/wandb/offline-run-*/run-<id>.wandb`) back, without W&B.

wandb 0.31 has no reader of its own any more (`wandb sync --view` and
`wandb.sdk.internal.datastore` are gone). The file is a LevelDB-style log: a 7-byte header
(`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC-32 of type + data, little-endian data length, type: 1 full, 2 first, 3 middle, 4 last);
a block's tail shorter than a chunk header is zero padding. Each reassembled record is a
`wandb.proto.wandb_internal_pb2.Record`.

    run = read_run(path)          # OfflineRun: id, name, group, tags, config, history, summary
    python tests/wandb_offline.py <run dir or .wandb file>   # prints it
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


class CorruptRunFile(ValueError):
    pass


def iter_records(path: str | Path):
    """Yield the raw records (bytes) of a .wandb file, checking every chunk's CRC."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size:
        raise CorruptRunFile(f"{path}: too short for a W&B header")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise CorruptRunFile(f"{path}: not a W&B run file (header {ident!r} {magic:#x} {version})")
    pos, pending = HEADER.size, None
    while pos < len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK.size:  # zero padding at the end of a block
            pos += left_in_block
            continue
        if pos + CHUNK.size > len(data):
            break
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if crc == 0 and length == 0 and kind == 0:  # preallocated, never written
            break
        body = data[pos + CHUNK.size : pos + CHUNK.size + length]
        if len(body) < length:
            break  # a run still being written: the last record is incomplete
        if kind not in _TYPE_CRC or zlib.crc32(body, _TYPE_CRC[kind]) != crc:
            raise CorruptRunFile(f"{path}: bad chunk at byte {pos}")
        pos += CHUNK.size + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = bytearray(body)
        elif pending is not None:
            pending += body
            if kind == LAST:
                yield bytes(pending)
                pending = None


def _item_value(item) -> Any:
    """A HistoryItem / SummaryItem / ConfigItem value as a Python object."""
    if item.value_json:
        try:
            return json.loads(item.value_json)
        except ValueError:
            return item.value_json
    # Newer writers may use typed fields (a oneof named "value") instead of value_json.
    oneofs = type(item).DESCRIPTOR.oneofs_by_name
    kind = item.WhichOneof("value") if "value" in oneofs else None
    if kind in (None, "none"):
        return None
    value = getattr(item, kind)
    return json.loads(value) if kind == "json" else value


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    path: Path
    id: str = ""
    name: str = ""
    group: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    files: list[str] = field(default_factory=list)
    job_type: str = ""
    defined: dict[str, Any] = field(default_factory=dict)  # define_metric: name -> MetricRecord
    artifacts: list[Any] = field(default_factory=list)  # ArtifactRecord (type, name, manifest)

    def metric(self, key: str) -> list[Any]:
        """Every logged value of `key`, in order."""
        return [row[key] for row in self.history if key in row]


def read_run(path: str | Path) -> OfflineRun:
    """Parse a .wandb file (or the single one under a run/offline-run folder)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("*.wandb"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected one .wandb file, found {len(found)}")
        path = found[0]
    run = OfflineRun(path=path)
    for raw in iter_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.name, run.group = r.run_id, r.display_name, r.run_group
            run.project, run.tags, run.job_type = r.project, list(r.tags), r.job_type
            for item in r.config.update:
                run.config[_item_key(item)] = _item_value(item)
        elif kind == "config":
            for item in record.config.update:
                run.config[_item_key(item)] = _item_value(item)
            for item in record.config.remove:
                run.config.pop(_item_key(item), None)
        elif kind == "history":
            run.history.append({_item_key(i): _item_value(i) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_item_key(item)] = _item_value(item)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "metric":
            run.defined[record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
    # W&B wraps every config value as {"value": ..., "desc": ...}.
    run.config = {
        k: (v["value"] if isinstance(v, dict) and "value" in v else v)
        for k, v in run.config.items()
    }
    return run


def find_runs(folder: str | Path) -> list[Path]:
    """Every .wandb file under `folder` (e.g. a sweep dir), sorted."""
    return sorted(Path(folder).rglob("*.wandb"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python tests/wandb_offline.py <run dir or .wandb file>")
        return 2
    paths = [Path(args[0])] if str(args[0]).endswith(".wandb") else find_runs(args[0])
    for path in paths:
        run = read_run(path)
        last = {k: v for row in run.history for k, v in row.items() if not k.startswith("_")}
        print(f"{path}\n  run {run.id} name={run.name!r} group={run.group!r} tags={run.tags}")
        print(f"  {len(run.history)} history rows; last values: " + json.dumps(last, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
