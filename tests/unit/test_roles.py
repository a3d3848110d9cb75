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


PHASES = {"preflight", "install", "configure", "service"}


def _imports(tasks: list) -> list[dict]:
    """The import_tasks entries of a task list, blocks included."""
    out = []
    for task in tasks or []:
        if "block" in task:
            out += _imports(task["block"])
        elif "ansible.builtin.import_tasks" in task:
            out.append(task)
    return out


PHASED = sorted(p.name for p in ROLES.iterdir() if "import_tasks" in (p / "tasks" / "main.yml").read_text())


@pytest.mark.parametrize("role", PHASED)
def test_each_phase_a_role_imports_is_tagged_with_the_role_and_the_phase(role):
    """`ansible-playbook site.yml --tags configure` (or `--tags gatewayha`) runs the phase it names;
    preflight checks also run under any other tag (`always`)."""
    imports = _imports(yaml.safe_load((ROLES / role / "tasks" / "main.yml").read_text()))
    assert imports, f"{role}: no phase found"
    for task in imports:
        tags = set(task.get("tags", []))
        name = task["ansible.builtin.import_tasks"]
        assert role in tags and tags & PHASES, f"{role}: import of {name} is tagged {sorted(tags)}"
        if "preflight" in tags:
            assert "always" in tags, f"{role}: {name} checks inputs: tag it always"
