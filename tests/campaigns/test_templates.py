"""Templates: Jinja2 sandbox with StrictUndefined; syntax errors carry the line, unknown
placeholders are named, the sandbox refuses attribute tricks and huge values, HTML escapes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import UndefinedError
from jinja2.exceptions import SecurityError

from campaigns.templates import (
    _ENV,
    TemplateError,
    _compile,
    _Substitution,
    check_template,
    placeholders,
    render,
    render_error,
)


def test_placeholders_are_found_in_every_part() -> None:
    template = {
        "subject": "Tài khoản {{ don_vi }}",
        "body": "{{ username }} / {{ password }}",
        "html": "<b>{{ ten }}</b>",
    }
    assert check_template(template) == {"don_vi", "username", "password", "ten"}
    assert check_template(template, ["don_vi", "username", "password", "ten", "extra"]) == {
        "don_vi",
        "username",
        "password",
        "ten",
    }


def test_loop_variables_and_filters_are_not_placeholders() -> None:
    assert placeholders("body", "{% for x in items %}{{ x|upper }}{% endfor %}{{ name|default('bạn') }}") == {
        "items",
        "name",
    }


def test_a_syntax_error_names_the_part_and_the_line() -> None:
    with pytest.raises(TemplateError) as caught:
        check_template({"body": "Kính gửi {{ ten }}\ndòng hai\n{% if ten %}chưa đóng"})
    assert caught.value.part == "body"
    assert caught.value.line == 3
    assert str(caught.value).startswith("template.body line 3: ")


def test_an_unknown_filter_is_a_template_error_not_a_crash_later() -> None:
    with pytest.raises(TemplateError, match="No filter named 'nofilter'") as caught:
        check_template({"subject": "{{ ten|nofilter }}", "body": "x"})
    assert caught.value.part == "subject"


def test_unknown_placeholders_are_all_named() -> None:
    with pytest.raises(TemplateError) as caught:
        check_template({"body": "{{ ten }} {{ tinh }} {{ huyen }}"}, ["ten"])
    assert caught.value.unknown == ["huyen", "tinh"]
    assert "{{ huyen }}, {{ tinh }} are not recipient columns" in str(caught.value)
    assert caught.value.details() == {"part": "body", "line": None, "placeholders": ["huyen", "tinh"]}


def test_rendering_is_strict_about_missing_values() -> None:
    assert render({"body": "Chào {{ ten }}"}, {"ten": "An"}).body == "Chào An"
    with pytest.raises(UndefinedError, match="'ten' is undefined"):
        render({"body": "Chào {{ ten }}"}, {})


def test_html_is_escaped_and_text_is_not() -> None:
    values = {"ten": "<Trần & Lê>"}
    rendered = render({"subject": "{{ ten }}", "body": "{{ ten }}", "html": "<p>{{ ten }}</p>"}, values)
    assert rendered.subject == "<Trần & Lê>"
    assert rendered.body == "<Trần & Lê>"
    assert rendered.html == "<p>&lt;Trần &amp; Lê&gt;</p>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ten.__init__.__globals__ }}",
        "{{ 'x' * 100000000 }}",
        "{{ [1] * 100000000 }}",
        "{{ 9 ** 999999 }}",
        "{% set _ = ten.append(1) %}",
    ],
)
def test_the_sandbox_refuses_escapes_and_huge_values(source: str) -> None:
    with pytest.raises(SecurityError) as caught:
        render({"body": source}, {"ten": []})
    assert "SecurityError" in render_error(caught.value)


def test_small_arithmetic_and_repetition_still_work() -> None:
    assert render({"body": "{{ '-' * 3 }} {{ 2 ** 10 }} {{ n|int * 2 }}"}, {"n": "21"}).body == "--- 1024 42"


_PIECES = st.lists(
    st.one_of(
        st.text(st.characters(blacklist_characters="{}%#"), max_size=8),
        st.sampled_from(["{{ a }}", "{{b}}", "{{- a -}}", "{{ missing }}", "{{ range }}", "{# note #}", "\n"]),
    ),
    max_size=8,
)
_VALUES = st.dictionaries(
    st.sampled_from(["a", "b"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
)


def _outcome(renderer: Any, values: dict[str, Any]) -> tuple[str, str]:
    try:
        return "ok", renderer.render(values)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@given(pieces=_PIECES, values=_VALUES)
@settings(max_examples=300, deadline=None)
def test_plain_substitution_renders_exactly_as_jinja_does(pieces: list[str], values: dict[str, Any]) -> None:
    """Text-and-`{{ name }}` templates skip Jinja's per-call context; the output (and a missing
    value's error) must be what the sandboxed Jinja template gives."""
    source = "".join(pieces)
    jinja = _ENV.from_string(source)
    assert _outcome(_compile(source, False), values) == _outcome(jinja, values)


def test_only_plain_text_templates_take_the_substitution_path() -> None:
    assert isinstance(_compile("Chào {{ ten }}, mã {{ ma }}", False), _Substitution)
    for source in ("{{ ten|upper }}", "{{ a.b }}", "{% if a %}x{% endif %}", "{{ 'x' }}"):
        assert not isinstance(_compile(source, False), _Substitution), source
    assert not isinstance(_compile("<b>{{ ten }}</b>", True), _Substitution)  # HTML escapes: Jinja
