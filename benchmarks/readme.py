"""The one way a benchmark rewrites its table in the docs: the text between two marker comments.

The tables live in docs/benchmarks.md (`DOC`); each benchmark's `--readme` option writes its blocks there."""
from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_block(readme: Path, begin: str, end: str, body: str) -> bool:
    """Replace the text between the markers `begin` and `end` of `readme` with `body` (the markers stay).
    Returns whether the file changed; a file without both markers is an error that says where to add them."""
    text = readme.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{readme} has no {begin} ... {end} block: add the two markers where the table goes")
    head, rest = text.split(begin, 1)
    new = head + begin + "\n" + body.strip() + "\n" + end + rest.split(end, 1)[1]
    if new != text:
        readme.write_text(new)
    return new != text


def write_block(block: str, text: str, readme: Path | None = None) -> None:
    """`update_readme` (None: `DOC` as it is at the call), and say on stdout whether the block changed."""
    readme = DOC if readme is None else readme
    changed = update_readme(block, text, readme)
    print(f"{readme}: the {block} block {'updated' if changed else 'unchanged'}")


def update_readme(block: str, text: str, readme: Path = DOC) -> bool:
    """The block `<!-- {block} -->` ... `<!-- /{block} -->` of docs/benchmarks.md (or `readme`) becomes `text`."""
    return replace_block(readme, f"<!-- {block} -->", f"<!-- /{block} -->", text)
