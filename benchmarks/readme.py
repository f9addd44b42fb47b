"""The one way a benchmark rewrites its table in the README: the text between `<!-- NAME -->` and `<!-- /NAME -->`."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme(block: str, text: str, readme: Path = README) -> bool:
    """Replace the README's text between `<!-- {block} -->` and `<!-- /{block} -->` (False if no markers)."""
    start, end = f"<!-- {block} -->", f"<!-- /{block} -->"
    content = readme.read_text()
    if start not in content or end not in content:
        return False
    head, rest = content.split(start, 1)
    readme.write_text(head + start + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1])
    return True
