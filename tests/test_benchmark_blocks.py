"""Every generated block of the READMEs has a script that writes it, and the shared writer replaces only its block."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.common import write_block

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
MARKER = re.compile(r"(?<!`)<!-- ([A-Z0-9-]+):(BEGIN|END) -->")  # not the ones quoted in the text


def writes(name: str) -> list[str]:
    """The scripts under benchmarks/ and scripts/ that write the block `name`."""
    forms = (f'write_block("{name}"', f'"<!-- {name}:BEGIN -->"')
    return [str(p.relative_to(ROOT)) for folder in ("benchmarks", "scripts") for p in sorted((ROOT / folder).glob("*.py"))
            if any(form in p.read_text() for form in forms)]


def test_every_marked_block_is_closed_and_has_a_script_that_writes_it() -> None:
    names = []
    for readme in READMES:
        markers = MARKER.findall(readme.read_text())
        assert markers, readme
        for (begin, kind), (end, end_kind) in zip(markers[::2], markers[1::2], strict=True):
            assert (kind, end_kind, begin) == ("BEGIN", "END", end), (readme, begin, end)
            names.append(begin)
    assert len(names) == len(set(names)) and {"DETECTION", "DEFENSE-TABLE", "BAD-INPUTS"} <= set(names)
    orphans = [name for name in names if not writes(name)]
    assert not orphans, f"blocks no script writes: {orphans}"


def test_write_block_replaces_its_own_block_and_appends_a_new_one(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\n<!-- A:BEGIN -->\nold a\n<!-- A:END -->\ntext\n<!-- C:BEGIN -->\nold c\n<!-- C:END -->\n")
    write_block("A", "new a\n", readme)
    write_block("D", "d", readme)
    assert readme.read_text() == ("# B\n\n<!-- A:BEGIN -->\nnew a\n<!-- A:END -->\ntext\n<!-- C:BEGIN -->\nold c\n"
                                  "<!-- C:END -->\n\n<!-- D:BEGIN -->\nd\n<!-- D:END -->\n")
