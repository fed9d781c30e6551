"""`panostudy view` on the headless backend."""

import numpy as np
import py360convert
from PIL import Image
from typer.testing import CliRunner

from panostudy.cli import app


def test_view_writes_the_e2p_view(headless, panorama_file, tmp_path):
    path, pixels = panorama_file
    out = tmp_path / "views" / "front.png"
    result = CliRunner().invoke(app, ["view", str(path), "--backend", "headless", "--out", str(out),
                                      "--yaw", "-40", "--pitch", "15", "--fov", "80", "--width", "120", "--height", "90"])
    assert result.exit_code == 0, result.output
    view = np.asarray(Image.open(out)).astype(float)
    assert view.shape == (90, 120, 3)
    # square pixels: the vertical field of view follows from the aspect ratio
    v_fov = 2 * np.degrees(np.arctan(np.tan(np.radians(40)) * 120 / 119 * 90 / 120 * 89 / 90))
    reference = py360convert.e2p(pixels, (80, v_fov), -40, 15, (90, 120)).astype(float)
    assert np.abs(view - reference).mean() <= 2.0


def test_view_refuses_bad_arguments_before_writing(tmp_path, panorama_file):
    path, _ = panorama_file
    out = tmp_path / "x.png"
    runner = CliRunner()
    for args, message in [
        (["--backend", "headless"], "pass --out"),
        (["--backend", "openvr", "--out", str(out)], "choose desktop or headless"),
        (["--backend", "headless", "--out", str(out), "--pitch", "95"], "--pitch 95"),
        (["--backend", "headless", "--out", str(tmp_path / "x.jpg")], "write a .png"),
    ]:
        result = runner.invoke(app, ["view", str(path), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    square = tmp_path / "square.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(square)
    result = runner.invoke(app, ["view", str(square), "--backend", "headless", "--out", str(out)])
    assert result.exit_code == 2 and "not 2:1" in result.output
    assert not out.exists()
