"""The published APER, RanPAC and SLCA configs: every key is a known key, and offline each
run stops at once with exit code 2 and the message that says which data (or weights) to provide."""

from pathlib import Path

import pytest

from retaincl.cli import main

CONFIGS = sorted(
    p for pattern in ("aper_*_b0inc5.yaml", "ranpac_petl_*.yaml", "slca_*.yaml")
    for p in (Path(__file__).parent.parent / "configs").glob(pattern)
)


def test_all_published_configs_are_found():
    assert len(CONFIGS) == 14


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_published_config_fails_fast_offline(config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no data or hub weights under ~/.cache
    code = main(["run", str(config), "--set", f"output_dir={tmp_path}", "--set", f"cache.dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.root" in err or "hub" in err.lower() or "weights" in err.lower()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_published_config_cites_its_source(config):
    text = config.read_text()
    for key in ("lr:", "batch_size:", "epochs:", "name: vit_base_patch16_224", "transform:", "interpolation:", "normalize:"):
        line = next(line for line in text.splitlines() if line.strip().startswith(key))
        assert "#" in line, f"{config.name}: '{line.strip()}' has no source comment"
    assert "augreg2" not in text
