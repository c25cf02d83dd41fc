"""Message templates: Jinja2 sandbox with StrictUndefined and `{{ column }}` placeholders.

Templates are compiled once per campaign and rendered per recipient; a placeholder that is not a
recipient column is an error naming it, found before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)

TEMPLATE_PARTS = ("subject", "body", "html")


class TemplateError(ValueError):
    """A template does not compile or names an unknown placeholder."""

    def __init__(self, part: str, message: str, line: int | None = None) -> None:
        self.part, self.line = part, line
        where = f"template.{part}" + (f" line {line}" if line else "")
        super().__init__(f"{where}: {message}")


@lru_cache(maxsize=256)
def _compile(source: str, html: bool) -> Any:
    env = _HTML_ENV if html else _ENV
    return env.from_string(source)


def placeholders(part: str, source: str) -> set[str]:
    env = _HTML_ENV if part == "html" else _ENV
    try:
        return set(meta.find_undeclared_variables(env.parse(source)))
    except TemplateSyntaxError as exc:
        raise TemplateError(part, exc.message or "syntax error", exc.lineno) from None


def check_template(template: Mapping[str, str | None], columns: Iterable[str] | None = None) -> set[str]:
    """Compile every part; with `columns`, every placeholder must be one. Returns the placeholders."""
    names: set[str] = set()
    for part in TEMPLATE_PARTS:
        source = template.get(part)
        if source:
            found = placeholders(part, source)
            if columns is not None:
                unknown = sorted(found - set(columns))
                if unknown:
                    raise TemplateError(part, f"placeholder {{{{ {unknown[0]} }}}} is not a recipient column")
            names |= found
    return names


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    body: str | None
    html: str | None


def render(template: Mapping[str, str | None], values: Mapping[str, Any]) -> Rendered:
    out: dict[str, str | None] = {}
    for part in TEMPLATE_PARTS:
        source = template.get(part)
        out[part] = _compile(source, part == "html").render(values) if source else None
    return Rendered(subject=out["subject"], body=out["body"], html=out["html"])
