"""The README and docs/ pages: relative links resolve, and docs/configs.md names every config
key (the table moved there from the README)."""

import re
from pathlib import Path

import pytest

from o2f.config import Config, _all_keys

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    text = re.sub(r"(?s)```.*?```", "", page.read_text())
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = [link for link in links if not re.match(r"[a-z]+:", link)
              and not (page.parent / link.split("#")[0]).exists()]
    assert not broken, f"{page.name}: broken links {broken}"


def test_configs_page_names_every_config_key():
    rows = dict(re.findall(r"(?m)^\| `(\w+)` \| (.*) \|$", (ROOT / "docs/configs.md").read_text()))
    sections = {key for key in _all_keys(Config) if "." in key
                and any(k.startswith(key + ".") for k in _all_keys(Config))}
    missing = []
    for key in _all_keys(Config):
        if "." not in key or key in sections:
            continue
        section, *rest = key.split(".")
        text = rows.get(section, "")
        if len(rest) == 1:
            found = f"`{rest[0]}`" in text
        else:  # `backbone.depth` or `backbone.{name,depth,...}`
            found = (f"`{'.'.join(rest)}`" in text
                     or re.search(rf"`{rest[0]}\.\{{[^`}}]*\b{rest[1]}\b", text) is not None)
        if not found:
            missing.append(key)
    assert not missing, f"docs/configs.md does not name {missing}"
