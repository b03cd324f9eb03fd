"""What `pip install` ships is the tree: every folder under the folders mapped
onto `tokenhub.*` is a listed package (setuptools warns about a data folder
that is not, and would leave a code folder out of a wheel), and every data file
in them matches a package-data pattern."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
IGNORED = {"__pycache__"}
NOT_SHIPPED = {"infra/Dockerfile"}  # docker builds from the repository, not from the installed package


def shipped_folders() -> dict[str, Path]:
    """Package name -> folder, for every folder under a mapped root."""
    found: dict[str, Path] = {}
    for name, folder in SETUPTOOLS["package-dir"].items():
        root = ROOT / folder
        found[name] = root
        for path in sorted(root.rglob("*")):
            if path.is_dir() and not IGNORED & set(path.relative_to(root).parts):
                child = f"{name}.{'.'.join(path.relative_to(root).parts)}"
                mapped_elsewhere = any(ROOT / other == path for other in SETUPTOOLS["package-dir"].values())
                if not mapped_elsewhere:
                    found[child] = path
    return found


def test_every_folder_is_a_listed_package() -> None:
    missing = sorted(set(shipped_folders()) - set(SETUPTOOLS["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    stale = sorted(set(SETUPTOOLS["packages"]) - set(shipped_folders()))
    assert not stale, f"{stale} are listed in pyproject.toml but no folder holds them"


def test_every_data_file_ships() -> None:
    patterns = SETUPTOOLS.get("package-data", {})
    unshipped = [
        str(path.relative_to(ROOT))
        for package, folder in shipped_folders().items()
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix not in {".py", ".pyc"}
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns.get(package, []))
        and str(path.relative_to(ROOT)) not in NOT_SHIPPED
    ]
    assert unshipped == [], f"no package-data pattern ships {unshipped}"
