"""Seeded draws leave the caller's random state alone; a JSON-lines file keeps every record that parses."""

import errno
import json
import os
import warnings

import pytest
import torch
from torch import nn

from pyro_decomp.util import append_jsonl, module_device, read_jsonl, seeded


def test_seeded_draws_repeat_and_leave_the_global_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded(torch.Generator().manual_seed(7)):
        a = torch.randn(5)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded(torch.Generator().manual_seed(7)):
        b = torch.randn(5)
    assert torch.equal(a, b)
    generator = torch.Generator().manual_seed(7)
    with seeded(generator):
        first = torch.randn(5)
    with seeded(generator):  # the same generator gives the next call a stream of its own
        second = torch.randn(5)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_seeded_without_a_generator_draws_from_the_global_one():
    torch.manual_seed(3)
    expected = torch.randn(4)
    torch.manual_seed(3)
    with seeded(None):
        got = torch.randn(4)
    assert torch.equal(got, expected)


def test_module_device():
    assert module_device(nn.Linear(2, 3)) == torch.device("cpu")
    assert module_device(nn.Identity()) == torch.device("cpu")
    bn = nn.BatchNorm1d(3, affine=False)  # buffers only
    assert module_device(bn) == torch.device("cpu")


def test_jsonl_round_trip_and_a_damaged_line_costs_no_other_record(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []
    records = [{"epoch": e, "loss": 1.0 / e} for e in range(1, 6)]
    for r in records:
        append_jsonl(path, r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == records
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:7]  # cut short, as by a kill
    lines.insert(4, json.dumps([1, 2]))  # valid JSON, but not a record
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"2 damaged line\(s\).*log.jsonl:3.*log.jsonl:5"):
        kept = read_jsonl(path)
    assert kept == records[:2] + records[3:]


def test_append_jsonl_never_writes_through_a_link_and_names_a_full_disk(tmp_path, monkeypatch):
    from pyro_decomp import util

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / "metrics.jsonl")
    with pytest.raises(util.UnsafePathError, match="symbolic link"):
        util.append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 1})
    assert victim.read_text() == "precious\n"
    path = tmp_path / "log.jsonl"
    util.append_jsonl(path, {"epoch": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(util.os, "fsync", full)
    with pytest.raises(OSError) as info:
        util.append_jsonl(path, {"epoch": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)


@pytest.mark.parametrize("code", ["EROFS", "EACCES", "EEXIST"])
def test_the_shapes_cache_falls_back_to_memory_on_an_unwritable_file_system(tmp_path, monkeypatch, code):
    from pyro_decomp.data import shapes

    def unwritable(path, *args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(path))

    monkeypatch.setattr(shapes, "load_or_build_packed", unwritable)
    subsample = {"scale": 6, "orientation": 40, "position_x": 32, "position_y": 32}
    with pytest.warns(UserWarning, match="rendering in memory .*PYRO_DECOMP_DATA"):
        data = shapes.Shapes(root=tmp_path, subsample=subsample, cache=True, progress=False)
    assert data.cache_path is None and len(data) == 3
    assert torch.equal(data[0][0], data.render(data.factors_from_index(torch.tensor([0])))[0])
