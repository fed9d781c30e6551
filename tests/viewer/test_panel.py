"""The rating panel: nothing preselected, keys, pointer hit-testing and an explicit confirm; the session's
own panels (consent, stop, ready) and captions from the protocol."""

import math

import numpy as np
import pytest

from study.engine import Step
from study.protocol import DEFAULT_PROTOCOL, load_protocol
from viewer.backends.base import InputEvent, Ray
from viewer.panel import DISTANCE_M, HEIGHT_M, HEIGHT_PX, WIDTH_M, WIDTH_PX, content_for_step, message_content
from viewer.panel import Panel as _Panel

PROTOCOL = load_protocol(DEFAULT_PROTOCOL)
ACR = Step(
    "rating", "trial/3/ACR/overall", text="Overall quality?",
    labels={1: "Bad", 2: "Poor", 3: "Fair", 4: "Good", 5: "Excellent"}, min_value=1, max_value=5, trial_index=3,
    item_number=1, item_count=9,
)


def Panel(step, **options):
    """The panel of an engine step, as the session shows it."""
    return _Panel(content_for_step(step, PROTOCOL), **options)


def key(name):
    return InputEvent("key", name)


def ray_to_box(panel, target, eye=np.zeros(3)):
    """A ray from ``eye`` through the centre of a button."""
    box = next(b for b in panel.boxes if b.target == target)
    x = ((box.x0 + box.x1) / 2 / WIDTH_PX - 0.5) * WIDTH_M
    y = (0.5 - (box.y0 + box.y1) / 2 / HEIGHT_PX) * HEIGHT_M
    point = panel.center + x * panel.right + y * panel.up
    return Ray(eye, (point - eye) / np.linalg.norm(point - eye))


def test_nothing_is_preselected_and_enter_alone_does_not_confirm():
    panel = Panel(ACR, shown_at_s=0.0)
    assert panel.selected is None
    assert panel.handle(key("enter"), 1.0) == (None, False)
    assert panel.layout.header is None            # "question k of n" is off by default


def test_digit_keys_select_within_the_scale_and_enter_confirms():
    panel = Panel(ACR, shown_at_s=0.0)
    assert panel.handle(key("9"), 0.5) == (None, False)     # out of range: ignored
    assert panel.handle(key("0"), 0.5) == (None, False)
    assert panel.handle(key("4"), 0.6) == (None, True)
    assert panel.handle(key("2"), 0.7) == (None, True)       # a change of mind
    result, _ = panel.handle(key("enter"), 0.8)
    assert (result.action, result.value) == ("confirm", 2)


def test_arrows_start_at_the_ends_and_stop_there():
    panel = Panel(ACR, shown_at_s=0.0)
    panel.handle(key("right"), 0)
    assert panel.selected == 1
    panel.handle(key("left"), 0)
    assert panel.selected == 1
    for _ in range(6):
        panel.handle(key("right"), 0)
    assert panel.selected == 5
    fresh = Panel(ACR, shown_at_s=0.0)
    fresh.handle(key("left"), 0)
    assert fresh.selected == 5


@pytest.mark.parametrize("yaw", [0.0, 135.0, -170.0])
def test_pointer_rays_hit_the_button_they_aim_at(yaw):
    panel = Panel(ACR, shown_at_s=0.0, yaw_deg=yaw)
    # the panel hangs DISTANCE_M ahead in the direction the head faced
    np.testing.assert_allclose(panel.center, DISTANCE_M * np.array([math.sin(math.radians(yaw)), 0, -math.cos(math.radians(yaw))]))
    for value in range(1, 6):
        assert panel.hit(ray_to_box(panel, f"value:{value}")) == f"value:{value}"
    # a controller held low and to the side still hits what it points at
    controller = np.array([0.25, -0.4, 0.1])
    assert panel.hit(ray_to_box(panel, "value:3", controller)) == "value:3"
    assert panel.hit(ray_to_box(panel, "confirm", controller)) == "confirm"
    # pointing away, or beside the panel, hits nothing
    assert panel.hit(Ray(np.zeros(3), -panel.forward)) is None
    assert panel.hit(Ray(np.zeros(3), panel.forward + 2 * panel.right)) is None
    # between buttons (above the row, left of the question area) hits nothing either
    assert panel.hit(Ray(np.zeros(3), panel.forward * DISTANCE_M + panel.up * 0.3 - panel.right * 0.55)) is None


def test_clicks_select_and_confirm_and_hover_highlights():
    panel = Panel(ACR, shown_at_s=0.0, yaw_deg=30)
    assert panel.handle(InputEvent("click", ray=ray_to_box(panel, "confirm")), 0.2) == (None, False)
    assert panel.handle(InputEvent("click", ray=ray_to_box(panel, "value:5")), 0.3) == (None, True)
    panel.hover(ray_to_box(panel, "confirm"))
    assert panel.hovered == "confirm"
    before = panel.quad(0.35)
    assert before.image.shape == (HEIGHT_PX, WIDTH_PX, 4)
    panel.hover(None)
    after = panel.quad(0.36)
    assert after.version != before.version and not np.array_equal(after.image, before.image)
    assert panel.quad(0.37).version == after.version     # unchanged state: no redraw
    result, _ = panel.handle(InputEvent("click", ray=ray_to_box(panel, "confirm")), 0.4)
    assert result.value == 5


def test_consent_takes_an_explicit_choice_and_the_stop_panel_asks():
    consent = _Panel(content_for_step(Step("consent", "consent", text="Do you agree?", min_value=0, max_value=1),
                                      PROTOCOL), shown_at_s=0.0)
    assert [b.box.target for b in consent.layout.actions] == ["agree", "decline"]
    assert consent.handle(key("enter"), 0.1) == (None, False)      # nothing chosen: Enter does nothing
    assert consent.handle(key("right"), 0.2) == (None, True)       # the arrows pick a button
    result, _ = consent.handle(key("enter"), 0.3)
    assert result.action == "agree"
    declined, _ = consent.handle(InputEvent("click", ray=consent.ray_to("decline")), 0.4)
    assert declined.action == "decline"
    stop = _Panel(message_content("stop", PROTOCOL), shown_at_s=0.0)
    assert stop.content.text == PROTOCOL.captions["stop_question"]
    result, _ = stop.handle(InputEvent("click", ray=stop.ray_to("go_on")), 0.1)
    assert result.action == "go_on"


def test_captions_and_progress_come_from_the_protocol(tmp_path):
    text = DEFAULT_PROTOCOL.read_text(encoding="utf-8").replace(
        "[training]", '[panel]\nquestion_progress = true\n[captions]\nconfirm = "OK"\n'
                      'question_progress = "{number}/{count}"\n\n[training]', 1)
    (tmp_path / "p.toml").write_text(text, encoding="utf-8")
    from study.protocol import parse_protocol

    protocol = parse_protocol(text, "p.toml", base_dir=DEFAULT_PROTOCOL.parent)
    panel = _Panel(content_for_step(ACR, protocol), shown_at_s=0.0)
    assert panel.layout.header.text == "1/9"
    assert panel.layout.actions[0].captions[0].text == "OK"


def test_breaks_wait_for_their_minimum_and_instructions_take_no_value():
    rest = Step("break", "break/4", text="Rest a moment.", trial_index=4, min_duration_s=30.0)
    panel = Panel(rest, shown_at_s=100.0)
    assert panel.values == ()
    assert panel._caption(panel.layout.actions[0], 101.0).text == "Continue in 29 s"
    assert panel.handle(key("enter"), 129.9) == (None, False)
    result, _ = panel.handle(key("enter"), 130.0)
    assert (result.action, result.value) == ("continue", None)
    assert panel._caption(panel.layout.actions[0], 130.0).text == "Continue"
    info = Panel(Step("instructions", "instructions", text="Look around."), shown_at_s=0.0)
    assert info.handle(key("3"), 0.1) == (None, False)
    assert info.handle(key("enter"), 0.2)[0].value is None


def test_ssq_items_use_their_own_range():
    ssq = Step("ssq", "ssq/pre/1", text="How much?\nFatigue", labels={0: "None", 1: "Slight", 2: "Moderate", 3: "Severe"},
               min_value=0, max_value=3)
    panel = Panel(ssq, shown_at_s=0.0)
    assert panel.values == (0, 1, 2, 3)
    panel.handle(key("0"), 0.1)
    assert panel.handle(key("enter"), 0.2)[0].value == 0


def test_number_keys_point_at_the_buttons_of_a_question_and_enter_confirms():
    stop = _Panel(message_content("stop", PROTOCOL), shown_at_s=0.0)
    assert stop.handle(key("2"), 0.1) == (None, True)               # the second button: Stop
    assert stop.handle(key("3"), 0.2) == (None, False)              # there is no third
    result, _ = stop.handle(key("enter"), 0.3)
    assert result.action == "stop"
    stop.handle(key("1"), 0.4)
    result, _ = stop.handle(key("enter"), 0.5)
    assert result.action == "go_on"


def test_the_lines_of_a_long_anchor_label_move_as_one_centred_block():
    # eleven narrow buttons: the end labels spread under their unlabelled neighbours and wrap there
    long = "Extremely blurry everywhere in the whole picture"
    step = Step("rating", "trial/3/VAR/blur", text="How blurry?", labels={0: long, 10: long},
                min_value=0, max_value=10, trial_index=3, item_number=1, item_count=1)
    panel = Panel(step, shown_at_s=0.0)
    first_top = min(line.box.y0 for line in panel.layout.labels)
    groups: list[list] = []
    for line in panel.layout.labels:
        if line.box.y0 == first_top:
            groups.append([])
        groups[-1].append(line)
    wrapped = [g for g in groups if len(g) > 1]
    assert wrapped, "the long labels should wrap onto a second line"
    for lines in wrapped:
        centres = [(line.box.x0 + line.box.x1) / 2 for line in lines]
        assert max(centres) - min(centres) < 0.5, [line.text for line in lines]
