"""The console's charts: SVG from pygal, labels escaped, no script, no import hook left."""

from __future__ import annotations

import sys

from cumulo.console import charts


def test_a_chart_is_inline_svg_with_escaped_labels_and_no_script() -> None:
    html = str(
        charts.bars(
            "Budget <b>use</b>",
            ['<img src=x onerror="alert(1)">'],
            {"spent": [1.0], "budget": [5.0]},
        )
    )
    assert html.startswith('<figure class="chart" role="img" aria-label="Budget &lt;b&gt;use')
    assert "<svg" in html and "<script" not in html
    assert "<img" not in html and "&lt;img src=x" in html


def test_pygal_leaves_no_import_hook_behind() -> None:
    assert [f for f in sys.meta_path if type(f).__module__.startswith("pygal")] == []
