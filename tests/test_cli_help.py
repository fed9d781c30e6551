"""The top-level command stays light: `panostudy --help` must not pull in torch, diffusers or OpenGL."""

import json
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "moderngl", "glfw", "OpenGL", "openvr", "xr")


def test_help_lists_every_job_and_imports_nothing_heavy():
    probe = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from panostudy.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        f"print(json.dumps({{'code': result.exit_code, 'out': result.output, "
        f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert report["heavy"] == []
    for command in ("study", "session", "generate", "view", "analyze", "power", "demo"):
        assert command in report["out"]
