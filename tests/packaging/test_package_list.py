"""pyproject.toml names every package folder: a folder left out is missing from the wheel,
and only a non-editable install (the compose image, docs/install.md) would notice."""

from __future__ import annotations

import tomllib

from tests.packaging.tree import ROOT


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    assert found == set(setuptools["packages"])
