"""pyproject.toml ships exactly the packages of the tree, and its package data exists.

The package list is explicit (no discovery), so a new sub-package that is not added to it
would be silently left out of the wheel: the installed ``tiergate`` would then fail on import.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.support.paths import ROOT

PACKAGE_ROOTS = ("app", "worker")
MIGRATIONS_PACKAGE = "tiergate_migrations"


def setuptools_config() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]


def packages_in_tree() -> set[str]:
    """Dotted names of the directories under app/ and worker/ that hold an ``__init__.py``."""
    found = set()
    for top in PACKAGE_ROOTS:
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


def package_path(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools looks for ``package``: the nearest ``package-dir`` entry, else its path."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[cut:])
    return ROOT / package_dir.get("", ".") / Path(*parts)


def test_listed_packages_are_exactly_the_tree():
    listed = setuptools_config()["packages"]
    assert len(listed) == len(set(listed)), "a package is listed twice"
    expected = packages_in_tree() | {MIGRATIONS_PACKAGE}
    assert set(listed) == expected, (
        f"missing from pyproject.toml: {sorted(expected - set(listed))}; "
        f"listed but not a package here: {sorted(set(listed) - expected)}"
    )


def test_listed_packages_have_an_init():
    config = setuptools_config()
    package_dir = config.get("package-dir", {})
    for package in config["packages"]:
        assert (package_path(package, package_dir) / "__init__.py").is_file(), package
    assert package_path(MIGRATIONS_PACKAGE, package_dir) == ROOT / "migrations"


def test_every_package_data_glob_matches_a_file():
    config = setuptools_config()
    package_dir = config.get("package-dir", {})
    package_data: dict[str, list[str]] = config.get("package-data", {})
    assert package_data, "the migrations' SQL and templates must be shipped as package data"
    for package, patterns in package_data.items():
        # "" and "*" apply to every package: a glob must then match in at least one of them.
        targets = config["packages"] if package in ("", "*") else [package]
        if package not in ("", "*"):
            assert package in config["packages"], f"package-data for unlisted {package}"
        for pattern in patterns:
            matches = [
                path
                for target in targets
                for path in package_path(target, package_dir).glob(pattern)
                if path.is_file() and "__pycache__" not in path.parts
            ]
            assert matches, f"package-data {package}: {pattern!r} matches no file"


def test_migration_scripts_are_covered_by_package_data():
    """versions/ and sql/ have no ``__init__.py``: only package-data puts them in the wheel."""
    config = setuptools_config()
    patterns = config["package-data"][MIGRATIONS_PACKAGE]
    migrations = ROOT / "migrations"
    shipped = {path for pattern in patterns for path in migrations.glob(pattern)}
    needed = [
        path
        for path in migrations.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix in (".py", ".sql", ".mako")
        and path.parent != migrations  # top-level modules ship as the package's own modules
    ]
    needed.append(migrations / "script.py.mako")
    missing = sorted(str(path.relative_to(ROOT)) for path in needed if path not in shipped)
    assert not missing, f"not shipped in the wheel: {missing}"
