"""Fixtures of the OpenXR tests.

Tests marked ``xr`` need ``monado-service`` and a display; ``make test-xr`` runs them inside a Debian 13
root that has both (see ``.ci/xr.sh``) and sets ``PANOSTUDY_XR_REQUIRED``, under which a missing
runtime fails instead of skipping. Elsewhere they skip, saying so.
"""

from __future__ import annotations

import os
import shutil

import pytest
from _xrkit import Monado, why_no_monado


@pytest.fixture
def monado(tmp_path, monkeypatch):
    reason = why_no_monado()
    if reason is not None:
        if os.environ.get("PANOSTUDY_XR_REQUIRED"):
            pytest.fail(f"PANOSTUDY_XR_REQUIRED is set, but {reason}")
        pytest.skip(reason)
    service = Monado(tmp_path / "monado.log")
    service.start()
    for name in ("XDG_RUNTIME_DIR", "XR_RUNTIME_JSON"):
        monkeypatch.setenv(name, service.env[name])
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.runtime_dir, ignore_errors=True)
