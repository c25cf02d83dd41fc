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
