"""cache_dir: where rebuildable files go."""

from pathlib import Path

from caramba.paths import cache_dir


def test_cache_dir_follows_env_var_and_is_created(tmp_path, monkeypatch):
    target = tmp_path / "nested" / "cache"
    monkeypatch.setenv("CARAMBA_CACHE", str(target))
    assert cache_dir() == target
    assert target.is_dir()


def test_cache_dir_defaults_to_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CARAMBA_CACHE", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "caramba"
    assert cache_dir().is_dir()
