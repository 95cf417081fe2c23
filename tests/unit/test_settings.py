"""Settings read every value at once: each problem is one line naming its variable, and a
value that is valid is kept exactly as set."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.settings import from_env


def test_settings_collect_every_problem_before_raising() -> None:
    # given four mistakes of different kinds
    env = {
        "OPPSYNC_VENDORS": "siro,sirro",
        "SIRO_RATE_LIMIT": "lots",
        "OPPSYNC_PREFETCH": "-1",
        "IVVY_TYPE_ID": "eighteen",
    }
    # when settings are built, one error lists them all, one line each
    with pytest.raises(ConfigError) as refused:
        from_env(env)
    problems = refused.value.problems
    assert len(problems) == 5, problems  # SIRO_API_TOKEN is missing too
    for variable in ("OPPSYNC_VENDORS", "SIRO_RATE_LIMIT", "OPPSYNC_PREFETCH", "IVVY_TYPE_ID"):
        assert [p for p in problems if p.startswith(variable)], (variable, problems)
    assert all("\n" not in p for p in problems)


def test_settings_keep_a_password_as_set_and_read_blank_as_unset() -> None:
    settings = from_env(
        {
            "OPPSYNC_VENDORS": "",
            "OPPSYNC_ADMIN_USER": "ops",
            "OPPSYNC_ADMIN_PASSWORD": " pass word ",
            "OPPSYNC_MAX_BODY_BYTES": " ",
            "OPPSYNC_LOG_LEVEL": "warning",
        }
    )
    assert settings.admin_password == " pass word "
    assert settings.max_body_bytes == 1_048_576
    assert settings.log_level == "WARNING"
