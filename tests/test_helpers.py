"""`require`: a missing real part skips a test on a developer's machine and fails it on CI."""

import pytest

from tests.helpers import require


def test_require_skips_off_ci_and_fails_on_ci(monkeypatch):
    require(True, "never said")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^no bwrap$"):
        require(False, "no bwrap")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="^CI=true, yet no bwrap$"):
        require(False, "no bwrap")
