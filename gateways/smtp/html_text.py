"""Plain-text alternative derived from an HTML mail body (stdlib ``html.parser`` only).

A multipart/alternative mail needs a text/plain part: spam filters score HTML-only mail worse, and
some readers (screen readers, terminal clients, watches) show only text. When a campaign template
gives HTML alone, :func:`html_to_text` produces the text part: tags dropped, block elements and
``<br>`` turned into line breaks, links kept as ``text (url)``, entities unescaped, ``<script>``,
``<style>`` and ``<head>`` content removed.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text", "text_template_from_html"]

# Elements whose start and end both break the line (block-level in every mail client).
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip
# Paragraph-like elements get a blank line around them, as a reader would expect.
_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol"})
_CELL_TAGS = frozenset({"td", "th"})
# Content of these never reaches the reader.
_HIDDEN_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})

# HTML collapses whitespace runs (a no-break space is kept visually, but plain text needs none).
_SPACES = re.compile(r"[ \t\r\n\f\v\u00a0]+")


class _TextExtractor(HTMLParser):
    """Collects visible text; ``convert_charrefs`` (the default) unescapes entities for us.

    Line breaks are requested, not written: a block boundary asks for one newline, a paragraph
    boundary for two, and the request is paid out only before the next visible text. So nested
    blocks (``<div><p>``) never stack up empty lines, and trailing markup leaves none behind.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._chunks: list[str] = []
        self._pending_newlines = 0
        self._hidden_depth = 0
        self._pre_depth = 0
        # Stack of (href, position in _chunks where the link text starts).
        self._links: list[tuple[str, int]] = []

    def _request_break(self, newlines: int) -> None:
        self._pending_newlines = max(self._pending_newlines, newlines)

    def _emit(self, text: str) -> None:
        if self._pending_newlines:
            text = text.lstrip(" ")
            if not text:
                return
            if self._chunks:
                self._chunks.append("\n" * self._pending_newlines)
            self._pending_newlines = 0
        elif text.startswith(" ") and (not self._chunks or self._chunks[-1].endswith((" ", "\n"))):
            text = text[1:]
        if text:
            self._chunks.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden_depth += 1
        elif tag == "br":
            # Unlike block breaks, consecutive <br> add up: "<br><br>" is a blank line.
            self._pending_newlines += 1
        elif tag in _CELL_TAGS:
            # Cells of one row stay on one line; the row end breaks it.
            self._emit(" ")
        elif tag in _BLOCK_TAGS:
            self._request_break(2 if tag in _PARAGRAPH_TAGS else 1)
            if tag == "li":
                self._emit("- ")
            elif tag == "pre":
                self._pre_depth += 1
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self._links.append((href.strip(), len(self._chunks)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._emit(_SPACES.sub(" ", alt))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/> and <img/> arrive here; a self-closed hidden tag has no content to hide.
        if tag not in _HIDDEN_TAGS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self._chunks[start:]).strip()
            target = href.removeprefix("mailto:")
            if target and not target.startswith(("#", "javascript:")) and target != label:
                self._emit(f" ({target})" if label else target)
        elif tag in _BLOCK_TAGS and tag not in _CELL_TAGS:
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)
            self._request_break(2 if tag in _PARAGRAPH_TAGS else 1)

    def handle_data(self, data: str) -> None:
        if self._hidden_depth:
            return
        if self._pre_depth:
            # Preformatted text keeps its own spacing and line breaks.
            self._emit(data)
        else:
            self._emit(_SPACES.sub(" ", data))

    def text(self) -> str:
        lines = "".join(self._chunks).split("\n")
        return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


def html_to_text(html: str) -> str:
    """Return a readable plain-text version of ``html`` ending with one newline.

    >>> html_to_text('<p>Xin ch&agrave;o<br>b&#7841;n</p><a href="https://x.vn/a">link</a>')
    'Xin chào\\nbạn\\n\\nlink (https://x.vn/a)\\n'
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


# Jinja statements, comments and filters that may emit markup: their output cannot be converted to
# text before rendering, so such templates are converted per message instead.
_UNSAFE_TEMPLATE = re.compile(r"\{%|\{#|\|\s*safe\b|\|\s*striptags\b|\|\s*(x|url)ize\b")
_EXPRESSION = re.compile(r"\{\{.*?\}\}", re.DOTALL)


def text_template_from_html(source: str) -> str | None:
    """The text part as a template, derived once from an HTML template; ``None`` when unsafe.

    Converting the template instead of every rendered message costs one conversion per campaign
    instead of one per recipient (``html_to_text`` is ~0.1 ms a message, the largest share of
    building one). It is equivalent for templates whose ``{{ expressions }}`` stand in text or
    attribute values: the HTML renderer escapes a value and ``html_to_text`` unescapes it again,
    so the text part shows the value as given either way. Templates with statements
    (``{% if %}``, loops), comments or filters that emit markup (``|safe``) return ``None``, and
    so does one whose expressions do not all come through the conversion intact.
    """
    if _UNSAFE_TEMPLATE.search(source):
        return None
    expressions = _EXPRESSION.findall(source)
    text = html_to_text(source)
    # An expression inside a tag name, a comment or a hidden element would vanish or be mangled.
    if sorted(_EXPRESSION.findall(text)) != sorted(" ".join(e.split()) for e in expressions):
        return None
    return text
