"""CLI and file polish: umask-respecting atomic writes, no NaN in JSON, --version,
fast --help, `config METHOD`, --quiet, no escape codes off a terminal, the --import option."""

import json
import math
import os
import stat

import pytest

from retaincl.engine.files import atomic_write_json, atomic_write_text


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    # what open() would give: 0666 & ~umask (mkstemp alone gives 0600 whatever the umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_json_has_null_where_a_float_is_not_finite(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": math.nan, "b": [1.5, math.inf, -math.inf], "c": {"d": 2}})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    # a strict reader (no NaN constants allowed) reads it back
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert strict == {"a": None, "b": [1.5, None, None], "c": {"d": 2}}
