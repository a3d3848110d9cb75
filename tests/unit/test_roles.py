"""Ansible roles: every default is declared in argument_specs and vice versa (as prometheus-community checks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if p.is_dir()))
def test_defaults_and_argument_specs_agree(role):
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), (
        f"{role}: only in defaults {set(defaults) - set(options)}, only in specs {set(options) - set(defaults)}"
    )
    prefix = role + "_"
    assert all(name.startswith(prefix) for name in defaults), f"{role}: every knob is prefixed {prefix}"
    assert all(opt.get("description") for opt in options.values()), f"{role}: every option is described"
    # An unquoted ", " in a flow-style description adds a key ansible-lint's schema refuses.
    known = {"type", "description", "default", "required", "choices", "elements", "no_log", "options"}
    odd = {name: set(opt) - known for name, opt in options.items() if set(opt) - known}
    assert not odd, f"{role}: unknown argument_specs keys {odd}"
