"""Ansible roles: every default is declared in argument_specs and vice versa (as prometheus-community checks)."""

from __future__ import annotations

import re
import sys
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


# --- a role reads only its own inputs ------------------------------------------------------------

# What Ansible itself provides: facts, magic and connection variables, lookups and Jinja globals.
ANSIBLE_NAMES = {
    "ansible_facts", "ansible_check_mode", "ansible_managed", "ansible_host", "ansible_play_hosts",
    "inventory_hostname", "inventory_dir", "groups", "hostvars", "group_names", "role_path", "playbook_dir",
    "omit", "lookup", "query", "q", "range", "dict", "lipsum", "namespace", "now", "undef",
    "_",  # the throwaway of `{% set _ = a_list.append(x) %}` in a branch (Jinja reports it)
}  # fmt: skip
# Keys of a task whose value is a bare Jinja expression (no braces).
BARE_EXPRESSIONS = {"when", "changed_when", "failed_when", "until", "that"}


def _jinja_names(text: str) -> set[str]:
    import jinja2
    from jinja2 import meta

    class Anything(dict):  # Ansible's filters and tests: any name is one
        def __contains__(self, name):
            return True

        def __getitem__(self, name):
            return lambda *a, **k: None

        def get(self, name, default=None):
            return self[name]

    env = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])
    env.filters, env.tests = Anything(), Anything()
    return meta.find_undeclared_variables(env.parse(text))


def _walk(node, key=None):
    """(key, string) for every string of a YAML tree, with the key it sits under."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    elif isinstance(node, str):
        yield key, node
    elif isinstance(node, bool) and key in BARE_EXPRESSIONS:
        return


def _bound_names(node) -> set[str]:
    """Names a role's own tasks bind: register, set_fact, loop_var, task and block vars."""
    out: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("register"), str):
            out.add(node["register"])
        for key in ("ansible.builtin.set_fact", "set_fact"):
            if isinstance(node.get(key), dict):
                out |= set(node[key])
        if isinstance(node.get("loop_control"), dict) and "loop_var" in node["loop_control"]:
            out.add(node["loop_control"]["loop_var"])
        if isinstance(node.get("vars"), dict):
            out |= set(node["vars"])
        for v in node.values():
            out |= _bound_names(v)
    elif isinstance(node, list):
        for v in node:
            out |= _bound_names(v)
    return out


def role_reads(role: str) -> dict[str, set[str]]:
    """Every variable name the role's YAML and templates read, with the files that read it."""
    reads: dict[str, set[str]] = {}
    bound: set[str] = {"item"}
    for path in sorted((ROLES / role).rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(ROLES))
        if path.suffix == ".j2":
            names = _jinja_names(path.read_text())
        elif path.suffix in (".yml", ".yaml") and "meta" not in path.parts:
            tree = yaml.safe_load(path.read_text())
            bound |= _bound_names(tree)
            names = set()
            for key, text in _walk(tree):
                if key in BARE_EXPRESSIONS:
                    names |= _jinja_names("{{ " + text + " }}")
                elif "{{" in text or "{%" in text:
                    names |= _jinja_names(text)
        else:
            continue
        # Another host's variable: hostvars[host]['name'], map('extract', hostvars, 'name'),
        # map('extract', hostvars) | map(attribute='name').
        text = path.read_text()
        names |= set(re.findall(r"hostvars\[[^\]]+\]\[['\"](\w+)['\"]\]", text))
        names |= set(re.findall(r"'extract',\s*hostvars,\s*'(\w+)'", text))
        names |= set(re.findall(r"'extract',\s*hostvars\)\s*\|\s*map\(attribute='(\w+)'", text))
        for name in names:
            reads.setdefault(name, set()).add(rel)
    return {name: files for name, files in reads.items() if name not in bound}


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if p.is_dir()))
def test_a_role_reads_only_its_own_declared_inputs(role):
    """As geerlingguy's and prometheus-community's roles: another role's or the inventory's
    variable reaches a role only as one of its own inputs, which the playbooks pass (playbooks/)."""
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    foreign = {
        name: sorted(files)
        for name, files in role_reads(role).items()
        if name not in defaults and name not in ANSIBLE_NAMES
    }
    assert not foreign, f"{role} reads variables it does not declare: {foreign}"


def test_the_check_finds_a_foreign_variable_and_ignores_bound_ones(tmp_path, monkeypatch):
    """The check above can fail: a role reading the inventory's variable is caught, its own
    registered, looped and templated locals are not."""
    role = tmp_path / "demo"
    for sub in ("defaults", "tasks", "templates", "meta"):
        (role / sub).mkdir(parents=True)
    (role / "defaults" / "main.yml").write_text("demo_port: 1\n")
    (role / "tasks" / "main.yml").write_text(
        "- name: a\n  ansible.builtin.command: echo {{ demo_port }} {{ item }} {{ other_port }}\n"
        "  loop: [1]\n  register: demo_out\n  when: demo_out is defined and gatewayha_x\n"
    )
    (role / "templates" / "t.j2").write_text(
        "{% set me = 3 %}{{ me }}{{ ansible_facts['x'] }}{{ stranger }}{{ hostvars[h]['peer_ip'] }}"
        "{{ groups['g'] | map('extract', hostvars, 'peer_port') | list }}"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROLES", tmp_path)
    assert set(role_reads("demo")) - {"demo_port", "ansible_facts", "hostvars", "groups", "h"} == {
        "other_port",
        "gatewayha_x",
        "stranger",
        "peer_ip",
        "peer_port",
    }


PLAYBOOKS = ROLES.parent / "playbooks"
WIRING = PLAYBOOKS / "vars" / "appliance.yml"


def _defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}


def test_the_wiring_sets_only_declared_role_inputs_with_the_owners_defaults():
    """playbooks/vars/appliance.yml passes the inventory's appliance-wide settings to the roles: each
    name it sets is an input some role declares, and each `owner_name | default(x)` repeats the
    owning role's default, so a role used with or without site.yml sees the same value."""
    wiring = yaml.safe_load(WIRING.read_text())
    roles = {p.name for p in ROLES.iterdir() if p.is_dir()}
    for name in wiring:
        if name.startswith("appliance_"):  # the file's own shorthands
            continue
        role = next((r for r in roles if name.startswith(r + "_")), None)
        assert role and name in _defaults(role), f"{name}: not an input of any role"
    text = WIRING.read_text()
    checked = 0
    for owner, name, literal in re.findall(r"\b(gatewayha|postgresql)(_\w+) \| default\(([^()]*)\)", text):
        default = _defaults(owner).get(owner + name)
        if default is None or (isinstance(default, str) and "{{" in default):
            continue  # not the role's, or computed by it
        assert yaml.safe_load(literal) == default, f"{owner}{name}: default({literal}) here, {default!r} in the role"
        checked += 1
    assert checked >= 10


def _plays(path: Path) -> list[dict]:
    return [p for p in yaml.safe_load(path.read_text()) if "hosts" in p]


def _runs_a_role(play: dict) -> bool:
    return bool(play.get("roles")) or "include_role" in yaml.safe_dump(play)


@pytest.mark.parametrize("playbook", sorted(p.name for p in PLAYBOOKS.glob("*.yml")))
def test_every_play_that_runs_a_role_loads_the_wiring(playbook):
    for play in _plays(PLAYBOOKS / playbook):
        if _runs_a_role(play):
            assert "vars/appliance.yml" in play.get("vars_files", []), f"{playbook}: {play['name']}"


# --- --check ------------------------------------------------------------------------------------

COMMANDS = {"ansible.builtin.command", "ansible.builtin.shell", "ansible.builtin.raw", "ansible.builtin.script"}


def _tasks(node):
    """Every task of a task list, play or playbook (blocks, pre/post tasks and handlers included)."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        if COMMANDS & set(node):
            yield node
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            yield from _tasks(node.get(key))


def _task_files():
    yield from sorted(ROLES.glob("*/tasks/*.yml")) + sorted(ROLES.glob("*/handlers/*.yml"))
    yield from sorted(PLAYBOOKS.glob("*.yml"))


@pytest.mark.parametrize("path", [str(p.relative_to(ROLES.parent)) for p in _task_files()])
def test_every_command_says_what_it_does_under_check(path):
    """`ansible-playbook --check` (molecule's check stage) must not fail: Ansible skips a command
    under --check and its registered result is empty, so each command says what it does there:
    runs anyway (check_mode: false: it only reads, or it reports what it would change) or is
    skipped on purpose (when: not ansible_check_mode) and nothing reads its result."""
    for task in _tasks(yaml.safe_load((ROLES.parent / path).read_text())):
        when = task.get("when", [])
        when = when if isinstance(when, list) else [when]
        assert task.get("check_mode") is False or "not ansible_check_mode" in when, f"{path}: {task['name']}"


# --- the rendered gatewayha.toml ---------------------------------------------------------------


def render_gatewayha_toml(**overrides) -> str:
    """roles/gatewayha/templates/gatewayha.toml.j2 rendered as the role does for gw1 of two nodes,
    from the role's defaults (Ansible's filters the template uses stood in for)."""
    import json

    import jinja2

    defaults = _defaults("gatewayha")
    values = {k: v for k, v in defaults.items() if not (isinstance(v, str) and "{{" in v)}
    values.update(
        ansible_managed="Ansible managed",
        inventory_hostname="gw1",
        groups={"gateway_nodes": ["gw1", "gw2"]},
        hostvars={"gw1": {"gatewayha_node_ip": "192.0.2.11"}, "gw2": {"gatewayha_node_ip": "192.0.2.12"}},
        gatewayha_node_ip="192.0.2.11",
        gatewayha_db_dsn="postgresql://gatewayha:pw@192.0.2.20:5432/gatewayha?sslmode=verify-full",
        gatewayha_secret="s" * 32,
        gatewayha_public_url="https://192.0.2.100:8000",
        gatewayha_api_ports=[8101, 8102],
        gatewayha_haproxy_map_dir="/var/lib/gatewayha/maps",
        gatewayha_jobs_concurrency=4,
        gatewayha_jobs_launch_slots=0,
    )
    values.update(overrides)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)  # as Ansible's template
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = bool
    env.filters["extract"] = lambda item, container, key: container[item][key]
    return env.from_string((ROLES / "gatewayha" / "templates" / "gatewayha.toml.j2").read_text()).render(values)


def test_the_rendered_gatewayha_toml_is_valid_and_uses_no_deprecated_name(tmp_path):
    from gatewayha.cli import check_config
    from gatewayha.config import load_settings

    path = tmp_path / "gatewayha.toml"
    path.write_text(render_gatewayha_toml(gatewayha_jobs_launch_slots=3))
    settings = load_settings(path, {})
    assert settings.deprecations == []
    assert (settings.jobs.launch_slots, settings.node.name, settings.node.dask_slice) == (3, "gw1", "gatewayha.slice")
    assert check_config(str(path)) == 0
    # The role's validate: step refuses a typo before any restart.
    path.write_text(render_gatewayha_toml().replace("launch_slots", "launch_slot"))
    assert check_config(str(path)) == 1


def test_the_roles_software_environments_are_rendered_into_gatewayha_toml(tmp_path):
    from gatewayha.config import load_settings

    path = tmp_path / "gatewayha.toml"
    path.write_text(render_gatewayha_toml())
    assert load_settings(path, {}).environments == {}  # the default: none, node.python runs Dask
    environments = {
        "py311-gpu": {"prefix": "/opt/conda/envs/gpu", "description": 'GPU "CUDA 12"', "image": "reg/dask:gpu"},
        "default": {"prefix": "/opt/dask-2026.11"},
    }
    cluster = {**_defaults("gatewayha")["gatewayha_cluster"], "default_environment": "py311-gpu"}
    path.write_text(render_gatewayha_toml(gatewayha_environments=environments, gatewayha_cluster=cluster))
    settings = load_settings(path, {})
    assert {n: e.prefix for n, e in settings.environments.items()} == {
        "py311-gpu": "/opt/conda/envs/gpu",
        "default": "/opt/dask-2026.11",
    }
    assert settings.environments["py311-gpu"].description == 'GPU "CUDA 12"'
    assert settings.cluster.default_environment == "py311-gpu"


SLURM = {
    "gatewayha_backend": "slurm",
    "gatewayha_slurm_conf": "/etc/slurm/site.conf",
    "gatewayha_slurm_staging_dir": "/shared/gatewayha",
    "gatewayha_slurm_python": "/opt/dask/bin/python",
    "gatewayha_slurm_partition": "dask",
    "gatewayha_slurm_account": "physics",
    "gatewayha_slurm_qos": "normal",
    "gatewayha_slurm_worker_time_limit": "2:00:00",
    "gatewayha_slurm_extra_sbatch_args": '--constraint="dask&ib"',
}


def test_the_local_backend_renders_no_slurm_section():
    import tomllib

    data = tomllib.loads(render_gatewayha_toml())
    assert data["backend"] == {"name": "local"}
    assert "slurm" not in data


def test_the_roles_slurm_settings_are_rendered_into_gatewayha_toml(tmp_path, monkeypatch):
    """gatewayha_backend: slurm gives [backend] name = "slurm" and a [slurm] the configuration's
    check (the role's validate: step) and the Slurm backend's own checks both accept."""
    from gatewayha.backends.slurm import SlurmBackend
    from gatewayha.cli import check_config
    from gatewayha.config import load_settings

    defaults = _defaults("gatewayha")
    path = tmp_path / "gatewayha.toml"
    path.write_text(render_gatewayha_toml(**SLURM))
    assert check_config(str(path)) == 0
    settings = load_settings(path, {})
    slurm = settings.slurm
    assert settings.backend.name == "slurm"
    assert (slurm.conf, slurm.staging_dir, slurm.python) == (
        "/etc/slurm/site.conf",
        "/shared/gatewayha",
        "/opt/dask/bin/python",
    )
    assert (slurm.partition, slurm.account, slurm.qos, slurm.worker_time_limit) == (
        "dask",
        "physics",
        "normal",
        "2:00:00",
    )
    assert slurm.extra_sbatch_args == '--constraint="dask&ib"'
    # The pool the role creates is the one the backend draws from.
    assert (slurm.run_as, slurm.uid_min, slurm.uid_count) == (
        "pool",
        defaults["gatewayha_slurm_uid_min"],
        defaults["gatewayha_slurm_uid_count"],
    )
    monkeypatch.setattr("os.geteuid", lambda: 1000)  # as root it would open the python's directories
    backend = SlurmBackend(settings)
    assert backend.extra_args == ["--constraint=dask&ib"]
    assert backend.env["SLURM_CONF"] == "/etc/slurm/site.conf"

    # The role's defaults as they are, and the owner's own account.
    path.write_text(render_gatewayha_toml(gatewayha_backend="slurm", gatewayha_slurm_run_as="user"))
    settings = load_settings(path, {})
    assert (settings.slurm.run_as, settings.slurm.conf, settings.slurm.staging_dir) == (
        "user",
        "/etc/slurm/slurm.conf",
        "/var/lib/gatewayha/slurm",
    )
    SlurmBackend(settings)


def test_the_role_refuses_an_unknown_backend_or_slurm_pool_mode():
    """Ansible checks the role's inputs against meta/argument_specs.yml before any task: other
    values of these are refused there (the preflight phase checks them again, with the rest)."""
    options = yaml.safe_load((ROLES / "gatewayha" / "meta" / "argument_specs.yml").read_text())
    options = options["argument_specs"]["main"]["options"]
    assert options["gatewayha_backend"]["choices"] == ["local", "slurm"]
    assert options["gatewayha_slurm_run_as"]["choices"] == ["pool", "user"]
    assert options["gatewayha_slurm_munge_key"]["no_log"] is True
    defaults = _defaults("gatewayha")
    assert defaults["gatewayha_backend"] == "local"
    assert defaults["gatewayha_slurm_run_as"] in options["gatewayha_slurm_run_as"]["choices"]
