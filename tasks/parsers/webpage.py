"""HTML: decode by BOM, declared charset or detection; then BeautifulSoup, split by heading."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ingestflow.core.types import Segment
from tasks.parsers.base import HTML, ParseInput, parser
from tasks.parsers.encoding import decode_text
from tasks.parsers.sections import SectionBuilder

if TYPE_CHECKING:
    from bs4 import Tag

# Never visible text. <head> goes too, after its <title> has been read.
_DROPPED = (
    "script",
    "style",
    "noscript",
    "template",
    "iframe",
    "object",
    "embed",
    "svg",
    "canvas",
    "head",
)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
# fmt: off
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "div", "dl",
    "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main",
    "nav", "ol", "p", "section", "summary", "table", "tr", "ul",
})
# fmt: on
_CELLS = frozenset({"td", "th"})
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""")


@parser(HTML, label="HTML")
def parse_html(source: ParseInput) -> Iterator[Segment]:
    """Visible text per heading section (``{"heading": "H1 > H2"}``); the ``<title>`` opens
    the document unless the first ``<h1>`` repeats it. ``<pre>`` keeps its layout, table
    cells are joined with ``|``, scripts and styles are dropped."""
    from bs4 import BeautifulSoup  # here, not at module level: keeps imports fast

    data = source.path.read_bytes()
    text = decode_text(data, declared=declared_charset(data))
    # lxml is a hard dependency of python-docx/-pptx already, and much faster than
    # html.parser on large pages.
    soup = BeautifulSoup(text, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(_DROPPED):
        tag.decompose()
    # Site menus repeat on every page of a site and drown the page's own words in search.
    for tag in soup.select('nav, [role="navigation"]'):
        if not tag.decomposed:  # already gone with an enclosing menu
            tag.decompose()
    sections = SectionBuilder()
    first_h1 = soup.find("h1")
    if title and not (first_h1 and first_h1.get_text(" ", strip=True) == title):
        sections.add(title)
    _walk(soup.body or soup, sections)
    yield from sections.segments()


def declared_charset(data: bytes) -> str | None:
    """The charset an HTML file declares in its XML prolog or a ``<meta>`` (first 4 KB)."""
    head = data[:4096]
    match = _XML_ENCODING.match(head) or _CHARSET.search(head)
    return match.group(1).decode("ascii") if match else None


def _walk(root: Tag, sections: SectionBuilder) -> None:
    from bs4 import NavigableString, Tag

    buffer: list[str] = []
    consumed: set[int] = set()  # strings already taken with their heading or <pre>
    for node in root.descendants:  # bs4 iterates this without recursion
        if isinstance(node, Tag):
            if node.name in _HEADINGS or node.name == "pre":
                sections.add(_tidy(buffer))
                buffer = []
                consumed.update(id(s) for s in node.strings)
                if node.name == "pre":
                    sections.add(node.get_text())
                else:
                    sections.heading(_HEADINGS[node.name], node.get_text(" ", strip=True))
            elif node.name in _CELLS:
                buffer.append(" | ")
            elif node.name in _BLOCKS:
                buffer.append("\n")
        # Exact type: Comment, Doctype, CData are NavigableString subclasses, not text.
        elif type(node) is NavigableString and id(node) not in consumed:
            buffer.append(str(node))
    sections.add(_tidy(buffer))


def _tidy(buffer: list[str]) -> str:
    lines = (" ".join(line.split()).strip(" |") for line in "".join(buffer).split("\n"))
    return "\n".join(line for line in lines if line)
