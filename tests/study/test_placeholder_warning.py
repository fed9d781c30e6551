"""The desk is told when a study's stimuli are placeholders from the offline tiny model."""

import json

from _studykit import write_panorama, write_protocol
from test_cli_study import invoke

from study.export import placeholder_warning
from study.store import open_study


def test_import_of_placeholder_stimuli_warns_and_real_ones_do_not(tmp_path):
    db = tmp_path / "study.sqlite"
    assert invoke("study", "init", "--db", db, "--protocol", write_protocol(tmp_path)).exit_code == 0
    lines = []
    for n, (scene, model) in enumerate([("street", "tiny"), ("indoor", "tiny"), ("street", "real/sd15")]):
        write_panorama(tmp_path / f"{n}.png", seed=n)
        lines.append(json.dumps({"path": f"{n}.png", "scene": scene, "model": model,
                                 "placeholder_not_meaningful": model == "tiny"}))
    (tmp_path / "real.jsonl").write_text(lines[2] + "\n")
    (tmp_path / "tiny.jsonl").write_text("\n".join(lines[:2]) + "\n")
    real = invoke("study", "import-stimuli", "--db", db, tmp_path / "real.jsonl")
    assert real.exit_code == 0 and "PLACEHOLDER" not in real.output
    with open_study(db) as study:
        assert placeholder_warning(study) is None
    tiny = invoke("study", "import-stimuli", "--db", db, tmp_path / "tiny.jsonl")
    assert tiny.exit_code == 0
    assert "warning: 2 of the study's " in tiny.output and "stimuli are PLACEHOLDERS" in tiny.output
    assert "do not run real participants on them" in tiny.output
