"""Message templates: Jinja2 sandbox with StrictUndefined and `{{ column }}` placeholders.

Templates are compiled once per campaign and rendered per recipient; a placeholder that is not a
recipient column is an error naming it, found before anything is sent. The sandbox forbids
attribute tricks (`''.__class__`) and, beyond Jinja's own guard on `range`, refuses string or
list repetition and powers that would build huge values: a template is user input too.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_PARTS = ("subject", "body", "html")
MAX_RESULT = 1_000_000  # characters or items one `*` may build
MAX_EXPONENT = 100


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent larger than {MAX_EXPONENT}")
            return operator.pow(left, right)
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_RESULT:
                raise SecurityError(f"repetition building more than {MAX_RESULT} items")
        return operator.mul(left, right)


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML_ENV = _Sandbox(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


class TemplateError(ValueError):
    """A template does not compile, or names placeholders that are not recipient columns."""

    def __init__(self, part: str, message: str, line: int | None = None, unknown: Iterable[str] = ()) -> None:
        self.part, self.line, self.unknown = part, line, list(unknown)
        where = f"template.{part}" + (f" line {line}" if line else "")
        self.reason = message
        super().__init__(f"{where}: {message}")

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"part": self.part, "line": self.line}
        if self.unknown:
            out["placeholders"] = self.unknown
        return out


class _Substitution:
    """A plain-text template made only of text and `{{ name }}`, rendered without Jinja's per-call
    context (building it was ~70 % of loading an SMS batch). Anything else, and any name not
    among the values (StrictUndefined's error, or a Jinja global), goes to the Jinja template."""

    def __init__(self, template: Any, pieces: list[tuple[bool, str]]) -> None:
        self._template = template
        self._pieces = pieces

    def render(self, values: Mapping[str, Any]) -> str:
        out: list[str] = []
        for is_name, text in self._pieces:
            if not is_name:
                out.append(text)
            elif text in values:
                out.append(str(values[text]))  # what Jinja's output does without autoescape or finalize
            else:
                return str(self._template.render(values))
        return "".join(out)


def _substitution_pieces(tree: nodes.Template) -> list[tuple[bool, str]] | None:
    pieces: list[tuple[bool, str]] = []
    for output in tree.body:
        if not isinstance(output, nodes.Output):
            return None
        for node in output.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces.append((False, node.data))
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                pieces.append((True, node.name))
            else:
                return None
    return pieces


@lru_cache(maxsize=256)
def _compile(source: str, html: bool) -> Any:
    env = _HTML_ENV if html else _ENV
    template = env.from_string(source)
    pieces = None if html else _substitution_pieces(env.parse(source))
    return template if pieces is None else _Substitution(template, pieces)


def placeholders(part: str, source: str) -> set[str]:
    """The variables a template part uses; compiling it also finds unknown filters and tests."""
    env = _HTML_ENV if part == "html" else _ENV
    try:
        names = set(meta.find_undeclared_variables(env.parse(source)))
        _compile(source, part == "html")
    except TemplateSyntaxError as exc:  # TemplateAssertionError (unknown filter) is one too
        raise TemplateError(part, exc.message or "syntax error", exc.lineno) from None
    return names


def _unknown_message(unknown: list[str]) -> str:
    shown = ", ".join(f"{{{{ {name} }}}}" for name in unknown)
    if len(unknown) == 1:
        return f"placeholder {shown} is not a recipient column"
    return f"placeholders {shown} are not recipient columns"


def check_template(template: Mapping[str, str | None], columns: Iterable[str] | None = None) -> set[str]:
    """Compile every part; with `columns`, every placeholder must be one. Returns the placeholders."""
    names: set[str] = set()
    known = set(columns) if columns is not None else None
    for part in TEMPLATE_PARTS:
        source = template.get(part)
        if source:
            found = placeholders(part, source)
            if known is not None:
                unknown = sorted(found - known)
                if unknown:
                    raise TemplateError(part, _unknown_message(unknown), unknown=unknown)
            names |= found
    return names


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    body: str | None
    html: str | None


def render(template: Mapping[str, str | None], values: Mapping[str, Any]) -> Rendered:
    """Render every part. Raises what Jinja raises (UndefinedError, SecurityError, ...): callers in
    the send path turn it into a failed message, the API into a 422."""
    out: dict[str, str | None] = {}
    for part in TEMPLATE_PARTS:
        source = template.get(part)
        out[part] = _compile(source, part == "html").render(values) if source else None
    return Rendered(subject=out["subject"], body=out["body"], html=out["html"])


def render_error(exc: Exception) -> str:
    """A render failure as one line that names the problem but never a value."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"
