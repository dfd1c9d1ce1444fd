"""Charts drawn on the server as SVG by pygal, shown inline: no JavaScript needed.

pygal writes its SVG with an XML serializer, so labels (key names, model names) are
escaped. Its tooltips need a script from the network, which the console never loads:
the charts are configured without it, and the small inline config script pygal adds
anyway is removed (the console's Content-Security-Policy would refuse it).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping, Sequence

import pygal
from markupsafe import Markup
from pygal.style import Style

# Importing pygal appends an import hook for its map plugins (`pygal.maps.*`, unused here)
# to `sys.meta_path`; it has no `find_spec`, so every later failed import in the process
# raises an ImportWarning. It is taken out again.
sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, pygal.PluginImportFixer)]

_SCRIPT = re.compile(r"<script[^>]*>.*?</script>", re.S)
# Colours with AA contrast on white for text, and distinct series.
STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1f2933",
    foreground_strong="#1f2933",
    foreground_subtle="#52606d",
    colors=("#1c5fb8", "#b3261e", "#1b7a3c", "#7a4fb3", "#8a5a00"),
    font_family="system-ui, sans-serif",
    label_font_size=15,
    major_label_font_size=15,
    legend_font_size=16,
    title_font_size=18,
    no_data_font_size=20,
)


def _config(
    title: str, height: int = 320, empty: str = "No requests in this range"
) -> dict[str, object]:
    return {
        "title": title,
        "style": STYLE,
        "js": [],
        "disable_xml_declaration": True,
        "width": 560,
        "height": height,
        "show_dots": False,
        "fill": False,
        "stroke_style": {"width": 2.5},
        "x_label_rotation": 0,
        "truncate_label": 18,
        "legend_at_bottom": True,
        "no_data_text": empty,
        "print_values": False,
    }


def _svg(chart: pygal.graph.graph.Graph, label: str) -> Markup:
    svg = _SCRIPT.sub("", chart.render(is_unicode=True))
    return Markup('<figure class="chart" role="img" aria-label="{}">{}</figure>').format(
        label, Markup(svg)
    )


def time_labels(starts: Sequence[float], width_s: float) -> list[str]:
    fmt = "%H:%M" if width_s < 86400 else "%m-%d"
    return [time.strftime(fmt, time.gmtime(t)) for t in starts]


def line(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    empty: str = "No requests in this range",
) -> Markup:
    """A line chart over time (each series one line); `empty`: what it says without data."""
    chart = pygal.Line(**_config(title, empty=empty))
    step = max(1, len(labels) // 8)
    chart.x_labels = list(labels)
    chart.x_labels_major = list(labels[::step])
    chart.show_minor_x_labels = False
    for name, values in series.items():
        chart.add(name, list(values))
    return _svg(chart, title)


def bars(title: str, labels: Sequence[str], series: dict[str, Sequence[float | None]]) -> Markup:
    """Horizontal bars, one group per label (e.g. spend against budget per tenant)."""
    chart = pygal.HorizontalBar(**_config(title, height=max(160, 60 + 48 * len(labels))))
    chart.x_labels = list(labels)
    for name, values in series.items():
        chart.add(name, list(values))
    return _svg(chart, title)
