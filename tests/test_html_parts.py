from epochal.html_parts import Markup, html_table, page


def test_cells_escape_text_but_not_markup():
    table = html_table(["name", "badge"], [["<b>x</b>", Markup("<i>ok</i>")]])
    assert "&lt;b&gt;x&lt;/b&gt;" in table and "<td><i>ok</i></td>" in table


def test_numbers_are_right_aligned_to_four_digits_and_none_is_a_dash():
    table = html_table(None, [["lr", 0.0012345678], ["best", None], ["nan", float("nan")]])
    assert '<th>lr</th><td class="num">0.001235</td>' in table
    assert "<td>–</td>" in table and '<td class="num">nan</td>' in table


def test_page_escapes_its_title_and_keeps_sections_in_order():
    html = page("a < b", ["<p>first</p>", "<p>second</p>"])
    assert "<title>a &lt; b</title>" in html and html.index("first") < html.index("second")
