"""Every panel of a protocol fits: no text overlaps a button or leaves the panel, every word is on some page,
and the drawn pixels stay inside the laid-out boxes — for the shipped protocol and for a protocol with very
long, CJK, Greek and Cyrillic wording, 11-point scales and long anchor labels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _studykit import protocol_toml, write_panorama

from study.errors import ProtocolError
from study.protocol import DEFAULT_PROTOCOL, load_protocol
from viewer.panel import PANEL_BOX, Box, Panel, check_protocol, layout_panel, panel_contents
from viewer.text import FontChain, paragraphs

LONG = ("This sentence is long on purpose, so that the instructions need more than one page even at the smallest "
        "size the panel allows; a participant must still read every word before Continue works. ")
CJK = "这是一段很长的说明，用来检查中文的换行、标点和分页是否正确。"


def stress_protocol(folder) -> str:
    """A protocol whose every text is too long for one page, in several scripts, with an 11-point scale."""
    write_panorama(folder / "train.png", seed=1)
    text = protocol_toml().replace('instructions = "Look around, then rate."', f'''instructions = """
Καλώς ήρθατε. Добро пожаловать. {LONG * 6}

{CJK * 12}

If you feel unwell at any time, tell the experimenter: you may stop at once without giving a reason."""
consent = "{CJK * 3} {LONG * 2}"
thank_you = "感谢您的参与！Спасибо! Thank you."
[panel]
question_progress = true
[captions]
confirm = "确认 / Confirm / Подтвердить"
continue = "继续 / Continue"
continue_in = "{{seconds}} 秒后继续 / Continue in {{seconds}} s"
question_progress = "第 {{number}} 题，共 {{count}} 题 — question {{number}} of {{count}}"
paused = "实验已暂停，请稍候。 The session is paused."
agree = "我同意 / I agree"
decline = "我不同意 / I do not agree"''')
    text = text.replace('question = "Overall quality?"', f'question = "{LONG * 3}{CJK * 4}"')
    text = text.replace('min = 1\nmax = 5\n[[scales.items]]\nid = "clarity"', 'min = 0\nmax = 10\n[[scales.items]]\nid = "clarity"')
    text = text.replace('labels = { 1 = "Very blurry", 5 = "Very clear" }',
                        'labels = { 0 = "Extremely blurry everywhere", 5 = "Neither", 10 = "Perfectly sharp везде" }')
    text = text.replace('labels = { 1 = "No detail", 5 = "Rich detail" }', 'labels = { 0 = "无细节", 10 = "Rich detail" }')
    path = folder / "stress.toml"
    path.write_text(text, encoding="utf-8")
    return path


def shipped():
    return load_protocol(DEFAULT_PROTOCOL)


@pytest.fixture(scope="module")
def chain():
    return FontChain.for_protocol()


def assert_fits(what, content, chain):
    layout = layout_panel(content, chain)
    buttons = layout.buttons()
    for i, button in enumerate(buttons):
        assert button.box.inside(PANEL_BOX), (what, button.box)
        for caption in button.captions:
            assert caption.box.inside(button.box), (what, caption.text, caption.box, button.box)
        for other in buttons[i + 1:]:
            # the next-page button of one page and of another share their place: only one is shown
            if not (button.box.target == other.box.target == "page:next"):
                assert not button.box.overlaps(other.box), (what, button.box, other.box)
    texts = [line for page in layout.pages for line in page] + list(layout.labels)
    texts += [layout.header] if layout.header else []
    for line in texts:
        assert line.box.inside(PANEL_BOX), (what, line.text, line.box)
        for button in buttons:
            assert not line.box.overlaps(button.box), (what, line.text, line.box, button.box)
    for page in layout.pages:
        for a, b in zip(page, page[1:]):
            assert a.box.y1 <= b.box.y0, (what, a.text, b.text)
    for i, a in enumerate(layout.labels):
        for b in layout.labels[i + 1:]:
            assert not a.box.overlaps(b.box), (what, a.text, b.text)
    # no word is lost: the pages hold the body's characters in order
    shown = "".join(line.text for page in layout.pages for line in page)
    assert re.sub(r"\s", "", shown) == re.sub(r"\s", "", "".join(paragraphs(content.text))), what
    return layout


def assert_ink_inside(what, panel: Panel, now: float = 0.0):
    """Every pixel that is not background lies within a laid-out box (2 px for anti-aliasing)."""
    image = panel.draw(now)[..., :3].astype(int)
    ink = np.abs(image - np.array([40, 40, 40])).sum(axis=2) > 30
    allowed = np.zeros(ink.shape, bool)
    layout = panel.layout
    boxes = [b.box for b in layout.buttons()] + [line.box for line in layout.pages[panel.page]] + \
        [line.box for line in layout.labels] + ([layout.header.box] if layout.header else [])
    for box in boxes:
        allowed[max(0, int(box.y0) - 2):int(box.y1) + 3, max(0, int(box.x0) - 2):int(box.x1) + 3] = True
    outside = np.argwhere(ink & ~allowed)
    assert outside.size == 0, (what, outside[:5])


@pytest.mark.parametrize("which", ["dong2025", "stress"])
def test_every_panel_fits_and_draws_inside_its_boxes(which, tmp_path, chain):
    protocol = shipped() if which == "dong2025" else load_protocol(stress_protocol(tmp_path))
    check_protocol(protocol, which, chain)
    pages_seen = 0
    for what, content, _ in panel_contents(protocol):
        layout = assert_fits(what, content, chain)
        panel = Panel(content, shown_at_s=0.0, fonts=chain)
        for page in range(len(layout.pages)):
            panel.page = page
            assert_ink_inside(what, panel)
            pages_seen += 1
    if which == "stress":
        # the long texts really were paged, and the shipped one needs no paging
        assert pages_seen > len(panel_contents(protocol))
    else:
        assert pages_seen == len(panel_contents(protocol))


def test_long_text_is_paged_and_continue_waits_for_the_last_page(tmp_path, chain):
    protocol = load_protocol(stress_protocol(tmp_path))
    content = next(c for what, c, _ in panel_contents(protocol) if what == "instructions")
    panel = Panel(content, shown_at_s=0.0, fonts=chain)
    pages = len(panel.layout.pages)
    assert pages >= 2 and all(line.size == 30 for page in panel.layout.pages for line in page)
    assert not panel.enabled("continue", 1.0)
    from viewer.backends.base import InputEvent

    for _ in range(pages - 1):
        # Enter turns the page until the last one, and confirms nothing meanwhile
        assert panel.handle(InputEvent("key", "enter"), 1.0) == (None, False)
    assert panel.page == pages - 1 and panel.enabled("continue", 1.0)
    assert panel.layout.next_page[0].captions[0].text == f"1/{pages} ›"
    result, _ = panel.handle(InputEvent("key", "enter"), 1.0)
    assert result.action == "continue"


def test_short_text_keeps_the_largest_size_and_long_labels_shrink(chain):
    protocol = shipped()
    contents = {what: c for what, c, _ in panel_contents(protocol)}
    ready = layout_panel(contents["ready"], chain)
    assert {line.size for page in ready.pages for line in page} == {34}
    pcr = layout_panel(contents["PCR layout_consistency"], chain)
    assert len(pcr.pages) == 1 and pcr.labels


def test_a_label_that_cannot_fit_names_its_protocol_key(tmp_path):
    path = stress_protocol(tmp_path)
    text = path.read_text(encoding="utf-8").replace('0 = "Extremely blurry everywhere"',
                                                    '0 = "' + "Unbelievably blurry " * 8 + '"')
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProtocolError, match=r"stress.toml: scales\[1\].items\[0\].labels.0: label .* does not fit"):
        check_protocol(load_protocol(path), "stress.toml")


def test_a_character_no_font_has_names_its_protocol_key(tmp_path):
    path = stress_protocol(tmp_path)
    path.write_text(path.read_text(encoding="utf-8").replace('thank_you = "', 'thank_you = "ขอบคุณ '), encoding="utf-8")
    with pytest.raises(ProtocolError, match=r"stress.toml: thank_you: character 'ข' \(U\+0E02\) is in no panel font"):
        check_protocol(load_protocol(path), "stress.toml")


def test_boxes_overlap_and_containment():
    a, b = Box("a", 0, 0, 10, 10), Box("b", 10, 0, 20, 10)
    assert not a.overlaps(b) and a.overlaps(Box("c", 9, 9, 11, 11))
    assert Box("d", 1, 1, 9, 9).inside(a) and not b.inside(a)
