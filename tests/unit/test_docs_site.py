"""The docs site builds with mkdocs --strict (no broken link or anchor, every page in the
nav) and the README stays a short entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_with_every_page_in_the_nav(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    in_nav = {next(iter(item.values())) for item in config["nav"]}
    pages = {p.name for p in (REPO_ROOT / "docs").glob("*.md")}
    assert pages == in_nav, pages ^ in_nav
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO_ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for page in in_nav:
        built = tmp_path / "site" / ("" if page == "index.md" else page[:-3]) / "index.html"
        assert built.exists(), built


def test_the_readme_is_short_and_links_every_page() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme.count("\n") < 300
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    for item in config["nav"]:
        page = next(iter(item.values()))
        if page != "index.md":
            assert f"(docs/{page})" in readme, page
