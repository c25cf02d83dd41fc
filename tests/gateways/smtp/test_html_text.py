"""html_to_text: the text/plain alternative derived from an HTML body."""

from __future__ import annotations

import pytest

from gateways.smtp.html_text import html_to_text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Xin ch&agrave;o</p><p>b&#7841;n</p>", "Xin chào\n\nbạn\n"),
        ("dòng 1<br>dòng 2<br/><br />dòng 4", "dòng 1\ndòng 2\n\ndòng 4\n"),
        ('<a href="https://x.vn/a?b=1&amp;c=2">Bấm đây</a>', "Bấm đây (https://x.vn/a?b=1&c=2)\n"),
        ('<a href="https://x.vn">https://x.vn</a>', "https://x.vn\n"),
        ('<a href="mailto:hotro@gso.gov.vn">hotro@gso.gov.vn</a>', "hotro@gso.gov.vn\n"),
        ('<a href="#top">Lên đầu</a>', "Lên đầu\n"),
        ("<ul><li>một</li><li>hai</li></ul>", "- một\n- hai\n"),
        (
            "<table><tr><td>Mã</td><td>HN-1</td></tr><tr><td>Mật khẩu</td><td>x</td></tr></table>",
            "Mã HN-1\nMật khẩu x\n",
        ),
        ("<div><div><p>nested</p></div></div>after", "nested\n\nafter\n"),
        ("<pre>a\n   b</pre>", "a\n   b\n"),
        ("<head><title>T</title><style>p{}</style></head><script>x()</script>visible", "visible\n"),
        ("  lots   of\n\t whitespace  ", "lots of whitespace\n"),
        ('<img src="logo.png" alt="Logo TCTK"> text', "Logo TCTK text\n"),
        ("1 &lt; 2 &amp;&amp; 3 &gt; 2 &nbsp;ok", "1 < 2 && 3 > 2 ok\n"),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


VALUES = {
    "don_vi": "Công ty TNHH <Sông Hồng> & Cộng sự",
    "username": "DN2026001",
    "password": "p&<>\"'x",
    "link": "https://gso.gov.vn/khai-bao?u=1&v=2",
}


@pytest.mark.parametrize(
    "template",
    [
        "<p>Kính gửi <b>{{ don_vi }}</b>,</p><ul><li>Tên đăng nhập: {{ username }}</li>"
        "<li>Mật khẩu: <code>{{ password }}</code></li></ul><p>Tổng cục Thống kê</p>",
        '<p>Khai báo tại <a href="{{ link }}">đây</a>.</p><p>{{ don_vi|upper }}</p>',
        "<table><tr><td>Đơn vị</td><td>{{ don_vi }}</td></tr><tr><td>Mã</td><td>{{username}}</td></tr></table>",
    ],
)
def test_text_template_renders_what_converting_each_message_gives(template: str) -> None:
    from campaigns.templates import render
    from gateways.smtp.html_text import text_template_from_html

    text_template = text_template_from_html(template)
    assert text_template is not None
    # Rendered as the send path renders: the HTML part escaped, the text part not.
    rendered = render({"html": template, "body": text_template}, VALUES)
    assert rendered.html is not None
    assert rendered.body == html_to_text(rendered.html)
    assert "&lt;" not in rendered.body  # values as given, not HTML-escaped
    assert "&lt;" in rendered.html


@pytest.mark.parametrize(
    "template",
    [
        "{% if x %}<b>{{ x }}</b>{% endif %}",  # statements: the structure depends on the data
        "<p>{# note #}{{ x }}</p>",
        "<div>{{ x|safe }}</div>",  # the value is markup: only the rendered message can be converted
        '<p title="{{ x }}">title only</p>',  # the expression would silently vanish
        "<style>{{ x }}</style><p>a</p>",
    ],
)
def test_templates_that_cannot_be_converted_up_front(template: str) -> None:
    from gateways.smtp.html_text import text_template_from_html

    assert text_template_from_html(template) is None
