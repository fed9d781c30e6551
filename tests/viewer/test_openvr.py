"""The OpenVR backend without SteamVR, the shipped SteamVR Input files, the backend registry and lazy imports."""

import json
import subprocess
import sys
from importlib import resources

import pytest

from study.errors import BackendUnavailable
from viewer.backends.base import BACKENDS, backend_class


def test_without_steamvr_open_names_the_init_error():
    openvr = pytest.importorskip("openvr")
    if openvr.isRuntimeInstalled():
        pytest.skip("SteamVR is installed here; this test is for machines without it")
    backend = backend_class("openvr")()
    with pytest.raises(BackendUnavailable, match="InitError_Init_PathRegistryNotFound") as caught:
        backend.open()
    assert "SteamVR is not installed" in caught.value.why_not and "--backend desktop" in caught.value.why_not
    assert "not installed" in backend.why_not()
    backend.close()   # nothing was opened: a no-op


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendUnavailable, match="choose one of headless, desktop, openvr, openxr"):
        backend_class("oculus")
    assert set(BACKENDS) == {"headless", "desktop", "openvr", "openxr"}


def test_action_manifest_and_vive_bindings_agree():
    folder = resources.files("viewer") / "openvr_actions"
    manifest = json.loads((folder / "actions.json").read_text())
    actions = {a["name"]: a["type"] for a in manifest["actions"]}
    assert actions == {
        "/actions/panostudy/in/select": "boolean",
        "/actions/panostudy/in/pointer": "pose",
        "/actions/panostudy/out/haptic": "vibration",
    }
    (default,) = manifest["default_bindings"]
    assert default["controller_type"] == "vive_controller"
    bindings = json.loads((folder / default["binding_url"]).read_text())
    used = set()
    for section in bindings["bindings"].values():
        for source in section["sources"]:
            used.update(i["output"] for i in source["inputs"].values())
        used.update(p["output"] for p in section["poses"])
        used.update(h["output"] for h in section["haptics"])
    assert used == set(actions)


def test_importing_the_viewer_core_needs_no_gl_glfw_or_openvr():
    probe = (
        "import sys, viewer.renderer, viewer.panel, viewer.session_runner, viewer.pose, "
        "viewer.backends.headless, viewer.backends.desktop, viewer.backends.openvr, viewer.backends.openxr\n"
        "print([m for m in ('moderngl', 'glfw', 'OpenGL', 'openvr', 'xr') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_without_steamvr_libopenvr_writes_nothing_before_our_one_line():
    """libopenvr wrote "Unable to read VR Path Registry from …" to stderr before the backend's error line."""
    openvr = pytest.importorskip("openvr")
    if openvr.isRuntimeInstalled():
        pytest.skip("SteamVR is installed here; this test is for machines without it")
    probe = (
        "from study.errors import BackendUnavailable\n"
        "from viewer.backends.openvr import OpenVRBackend\n"
        "print(OpenVRBackend.why_not())\n"
        "try:\n"
        "    OpenVRBackend().open()\n"
        "except BackendUnavailable as exc:\n"
        "    print(exc.why_not)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    why_not, init_error = done.stdout.splitlines()
    assert "SteamVR is not installed" in why_not and "SteamVR is not installed" in init_error
