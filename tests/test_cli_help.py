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


def test_every_help_is_readable_at_80_columns_and_no_flag_shows_a_value():
    """At 80 columns no option name is cut ("--panorama-mode…" was), and a flag such as --fullscreen shows no
    ``<bool>`` (it takes no value: `--fullscreen true` is refused)."""
    import os

    probe = (
        "import json\n"
        "import typer.main\n"
        "from typer.testing import CliRunner\n"
        "from panostudy.cli import app\n"
        "def paths(command, prefix):\n"
        "    yield prefix\n"
        "    for name, sub in getattr(command, 'commands', {}).items():\n"
        "        yield from paths(sub, prefix + [name])\n"
        "helps = {}\n"
        "for path in paths(typer.main.get_command(app), []):\n"
        "    result = CliRunner().invoke(app, path + ['--help'])\n"
        "    helps[' '.join(path)] = [result.exit_code, result.output]\n"
        "print(json.dumps(helps))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "80"})  # fmt: skip
    helps = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"generate panorama", "generate sets", "session run", "demo"} <= set(helps)
    for path, (code, text) in helps.items():
        assert code == 0, path
        assert max(map(len, text.splitlines())) <= 80, path
        options = [word for line in text.splitlines() for word in line.split() if word.startswith("--")]
        assert not any(word.endswith("…") for word in options), (path, text)
        assert "<bool>" not in text, path
    assert "--panorama-model-config <str>" in helps["generate sets"][1]
    fullscreen = next(line for line in helps["session run"][1].splitlines() if "--fullscreen" in line)
    assert fullscreen.split()[:2] == ["--fullscreen", "Desktop"]
