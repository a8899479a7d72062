"""Environments: the worlds a trajectory acts in (envs/base.py); toolscale-mini's QA world is one (envs/qa.py)."""
