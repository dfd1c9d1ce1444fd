"""Accessibility of the Evaluations, Fine-tuning and Batches pages in a real browser: the
keyboard reaches every control of the new-evaluation form in order, each showing a focus
outline; and the text on these pages has WCAG AA contrast against its background
(4.5:1, or 3:1 for large text), as computed from the browser's own styles.

(Every control's accessible name is checked on every page by test_browser.py's
`test_every_control_has_a_label_and_the_keyboard_reaches_the_content`.)
"""

from __future__ import annotations

from typing import Any

from test_browser import sign_in

from support import CumuloServer

# Text with too little contrast: each element holding text (outside charts), its colour
# against the first opaque background of it or its ancestors (white if none).
LOW_CONTRAST = """() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const bad = [];
  let checked = 0;
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("svg, script, style, [hidden]")) continue;
    const text = Array.from(el.childNodes).filter((n) => n.nodeType === 3)
      .map((n) => n.textContent.trim()).join("");
    if (!text || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || el.closest(".skip")) continue;
    checked += 1;
    const fg = lum(rgb(style.color)), bg = lum(background(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) bad.push(`${el.tagName} "${text.slice(0, 40)}" ${ratio.toFixed(2)}`);
  }
  return {checked, bad};
}"""

FOCUSED = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  return {name: el.name || el.id || el.textContent.trim(), value: el.value || "",
          outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2};
}"""


def test_the_keyboard_reaches_every_control_of_the_eval_form_with_a_focus_outline(
    page: Any, server: CumuloServer
) -> None:
    sign_in(page, server, server.admin_key)
    page.goto(server.url + "/console/evals")
    expected = (
        page.locator("main form")
        .first.locator("input, select, button")
        .evaluate_all(
            "els => els.map(e => [e.name || e.id || e.textContent.trim(), e.value || ''])"
        )
    )
    expected = [tuple(x) for x in expected if x[0] != "csrf"]
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Enter")  # to the content
    reached = []
    for _ in range(len(expected)):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        assert focused["outline"], focused  # a visible focus ring
        reached.append((focused["name"], focused["value"]))
    assert reached == expected


def test_text_on_the_job_pages_has_aa_contrast(page: Any, server: CumuloServer) -> None:
    sign_in(page, server, server.admin_key)
    for path in ("evals", "fine-tuning", "files"):
        page.goto(f"{server.url}/console/{path}")
        found = page.evaluate(LOW_CONTRAST)
        assert found["bad"] == [], path
        assert found["checked"] >= 20, found  # the page's text was looked at
    # And the check sees faint text when there is some.
    page.evaluate(
        """document.querySelector("main").insertAdjacentHTML(
             "beforeend", '<p style="color: #aaaaaa">faint text</p>')"""
    )
    assert [b for b in page.evaluate(LOW_CONTRAST)["bad"] if "faint text" in b]
