"""Small helpers shared by every floor of the package: seeded draws, a module's device, JSON-lines files.

Each exists once here so that training, evaluation, metrics and experiments agree on what they mean: a
seeded draw never disturbs the caller's random state, and a JSON-lines file with a damaged line keeps every
record that still parses.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

__all__ = ["seeded", "module_device", "read_jsonl", "append_jsonl"]

PathLike = Union[str, os.PathLike]


@contextmanager
def seeded(generator: Optional[torch.Generator]) -> Iterator[None]:
    """Draw from torch's global generator seeded from ``generator``, then restore the global state.

    With ``generator=None`` nothing is forked: draws come from (and advance) the global generator. The seed
    is one draw of ``generator``, so a generator passed to several calls gives each call its own stream.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    """Every record of a JSON-lines file that parses as a JSON object, in order ([] when there is no file).

    A damaged line (cut short by a kill, or edited by hand) is skipped with a warning that names the file
    and the line; the records after it are kept.
    """
    if not os.path.exists(path):
        return []
    records, damaged = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                damaged.append(number)
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                damaged.append(number)
    if damaged:
        shown = ", ".join(f"{os.fspath(path)}:{n}" for n in damaged[:5]) + (
            ", ..." if len(damaged) > 5 else ""
        )
        warnings.warn(f"skipped {len(damaged)} damaged line(s) of JSON records: {shown}", stacklevel=2)
    return records


def append_jsonl(path: PathLike, record: Dict[str, Any]) -> None:
    """Append one record as a line and flush it to disk (fsync), so that a crash keeps every earlier line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
