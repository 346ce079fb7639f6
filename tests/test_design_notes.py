"""The code's pointers into ``docs/design-notes.md`` lead somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r'design notes,? ((?:"[^"]+"(?:, )?)+)')


def _titles(notes: str) -> list[str]:
    """Headings, bold and italic lead-ins, and the first words of paragraphs."""
    titles = re.findall(r"^#+ (.+)$", notes, re.M)
    titles += re.findall(r"\*\*(.+?)\*\*", notes) + re.findall(r"^- \*(.+?)\*", notes, re.M)
    titles += [paragraph.strip()[:80] for paragraph in notes.split("\n\n")]
    return titles


def test_every_reference_from_the_code_names_a_part_of_the_design_notes():
    titles = _titles((ROOT / "docs" / "design-notes.md").read_text())
    references = []
    for path in sorted((ROOT / "curvkit").rglob("*.py")):
        text = re.sub(r'\s*\n\s*(?:#\s*|""")?', " ", path.read_text())  # comments and docstrings joined
        for match in REFERENCE.finditer(text):
            references += [(path.name, name) for name in re.findall(r'"([^"]+)"', match.group(1))]
    assert len(references) > 10  # the pattern finds them
    missing = [
        (file, name)
        for file, name in references
        if not any(title.startswith(name.rstrip(".")) or name.rstrip(".") in title for title in titles)
    ]
    assert not missing, f"references to no part of docs/design-notes.md: {missing}"
