"""The documents hold together: every relative link of the README and docs/ reaches a file of the
repository and, where it names a section, a heading of that file; every import of their snippets
exists. The docs move sections between pages (method.md says what the methods do, design-record.md
why) and snippets call the package's functions, so a link or a snippet can outlive its target.
"""

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", re.S | re.M)  # code blocks: their brackets and '#' lines are code
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.M)


def anchor_of(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped (backticks too),
    each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors_in(path: Path) -> set[str]:
    """A document's anchors; a repeated heading's later copies get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCED.sub("", path.read_text())):
        base = anchor_of(heading)
        count = seen.get(base, 0)
        anchors.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return anchors


def test_an_anchor_is_github_s():
    assert anchor_of("Up to `N = 159`") == "up-to-n--159"
    assert anchor_of("`slg_adaptive`'s heavy-tail check: heavy tails at large `N`") == \
        "slg_adaptives-heavy-tail-check-heavy-tails-at-large-n"


def test_every_relative_link_reaches_a_file_and_its_section():
    broken = []
    for document in DOCUMENTS:
        for target in LINK.findall(FENCED.sub("", document.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            destination = (document.parent / path).resolve() if path else document
            if not destination.exists():
                broken.append(f"{document.relative_to(REPOSITORY)}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors_in(destination):
                broken.append(f"{document.relative_to(REPOSITORY)}: {target} (no such section)")
    assert DOCUMENTS and not broken, "\n".join(broken)


IMPORT = re.compile(r"^(?:from [\w.]+ import [\w, ]+|import [\w.]+(?: as \w+)?(?:, [\w.]+(?: as \w+)?)*)$", re.M)


def test_every_import_of_the_snippets_exists():
    """The import lines of the docs' snippets (Python blocks, and Python run from bash blocks) name
    modules and names the package still has: a snippet outlives the private functions it calls."""
    imports = [(document, line) for document in DOCUMENTS
               for block in FENCED.findall(document.read_text()) for line in IMPORT.findall(block)]
    failed = []
    for document, line in imports:
        try:
            exec(line, {})
        except ImportError as error:
            failed.append(f"{document.relative_to(REPOSITORY)}: {line} ({error})")
    assert len(imports) > 20 and not failed, "\n".join(failed)
