"""Software environments (gatewayha.environments): declared in the settings, picked with the
cluster option software_environment, resolved to the interpreter every backend runs."""

from __future__ import annotations

import sys

import pytest

from gatewayha import environments
from gatewayha.clusters import create_cluster
from gatewayha.config import ConfigError, load_settings
from gatewayha.errors import BackendRefused
from gatewayha.options import ClusterConfig, OptionError, cluster_config, option_specs, options_spec, validate_options

BASE = {"GATEWAYHA_SERVER__SECRET": "s" * 32}
TWO = """
[cluster]
default_environment = "dask-2024"
[environments.dask-2024]
prefix = "/opt/dask-2024"
description = "Dask 2024.12"
[environments.gpu]
prefix = "/opt/conda/envs/gpu"
"""


def settings_from(tmp_path, text, env=None):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_settings(p, {**BASE, **(env or {})})


def test_declared_environments_are_read_with_their_default(tmp_path):
    s = settings_from(tmp_path, TWO)
    assert sorted(s.environments) == ["dask-2024", "gpu"]
    assert s.environments["dask-2024"].prefix == "/opt/dask-2024"
    assert s.environments["dask-2024"].description == "Dask 2024.12"
    assert s.cluster.default_environment == "dask-2024"


def test_an_environment_named_default_needs_no_default_setting(tmp_path):
    s = settings_from(tmp_path, "[environments.default]\nprefix = '/opt/dask'\n")
    assert s.cluster.default_environment == "default"


def test_environment_variables_override_and_declare_environments(tmp_path):
    s = settings_from(
        tmp_path,
        TWO,
        {"GATEWAYHA_ENVIRONMENTS__GPU__PREFIX": "/srv/gpu", "GATEWAYHA_ENVIRONMENTS__NEW__PREFIX": "/srv/new"},
    )
    assert s.environments["gpu"].prefix == "/srv/gpu"
    assert s.environments["new"].prefix == "/srv/new"
    s = settings_from(
        tmp_path,
        "",
        {"GATEWAYHA_ENVIRONMENTS__PY311__PREFIX": "/srv/py311", "GATEWAYHA_CLUSTER__DEFAULT_ENVIRONMENT": "py311"},
    )
    assert list(s.environments) == ["py311"] and s.cluster.default_environment == "py311"


@pytest.mark.parametrize(
    "text,env,where",
    [
        ("[environments.Big]\nprefix = '/opt/x'\n", {}, "environments.Big: a name"),
        ("[environments.'a b']\nprefix = '/opt/x'\n", {}, "environments.a b: a name"),
        (f"[environments.{'x' * 41}]\nprefix = '/opt/x'\n", {}, "a name of 1-40"),
        ("[environments.default]\nprefix = 'opt/dask'\n", {}, "environments.default.prefix: an absolute"),
        ("[environments.default]\nprefix = '/opt/../etc'\n", {}, "environments.default.prefix"),
        ("[environments.default]\n", {}, "environments.default.prefix"),
        ("[environments.default]\nprefix = 3\n", {}, "environments.default.prefix: expected str"),
        ("[environments.default]\nprefix = '/opt/x'\nbogus = 1\n", {}, "environments.default.bogus: unknown"),
        ("environments = 3\n", {}, "environments: expected tables"),
        (TWO.replace('"dask-2024"\n[env', '"nope"\n[env'), {}, "cluster.default_environment: one of"),
        ("[environments.gpu]\nprefix = '/opt/gpu'\n", {}, "cluster.default_environment: one of ['gpu']"),
        ("[cluster]\ndefault_environment = 'gpu'\n", {}, "no [environments.<name>] is declared"),
        ("", {"GATEWAYHA_ENVIRONMENTS__PREFIX": "/opt/x"}, "GATEWAYHA_ENVIRONMENTS__<NAME>__<SETTING>"),
        (
            "[environments.default]\nprefix = '/opt/x'\n[[cluster_options]]\n"
            "field = 'software_environment'\ntype = 'string'\ndefault = ''\n",
            {},
            "cluster_options: software_environment comes from",
        ),
    ],
)
def test_bad_environments_are_named_in_the_error(tmp_path, text, env, where):
    with pytest.raises(ConfigError) as info:
        settings_from(tmp_path, text, env)
    assert where in str(info.value)


def test_the_option_is_a_select_of_the_declared_names_in_the_clients_format(tmp_path):
    from dask_gateway.options import Options

    s = settings_from(tmp_path, TWO)
    (spec,) = [o for o in options_spec(option_specs(s)) if o["field"] == "software_environment"]
    assert spec == {
        "field": "software_environment",
        "label": "Software environment",
        "default": "dask-2024",
        "spec": {"type": "select", "options": ["dask-2024", "gpu"]},
    }
    opts = Options._from_spec(options_spec(option_specs(s)))
    assert opts.software_environment == "dask-2024"
    with pytest.raises(ValueError):
        opts.software_environment = "nope"


def test_without_environments_there_is_no_option_and_node_python_runs_dask(tmp_path):
    s = settings_from(tmp_path, "")
    assert option_specs(s) == []
    cfg = cluster_config(s, validate_options(option_specs(s), {}))
    assert cfg.software_environment == ""
    assert environments.python_for(s, cfg) == sys.executable
    s.node.python = "/opt/other/bin/python3"
    assert environments.python_for(s, cfg) == "/opt/other/bin/python3"
    assert environments.bin_dir_for(s, cfg) == "/opt/other/bin"


def test_the_chosen_environment_or_the_default_gives_the_interpreter(tmp_path):
    s = settings_from(tmp_path, TWO)
    default = cluster_config(s, validate_options(option_specs(s), {}))
    gpu = cluster_config(s, validate_options(option_specs(s), {"software_environment": "gpu"}))
    assert (default.software_environment, gpu.software_environment) == ("dask-2024", "gpu")
    assert environments.python_for(s, default) == "/opt/dask-2024/bin/python"
    assert environments.python_for(s, gpu) == "/opt/conda/envs/gpu/bin/python"
    assert environments.bin_dir_for(s, gpu) == "/opt/conda/envs/gpu/bin"


def test_an_unknown_environment_is_refused_at_create_before_the_database(tmp_path):
    s = settings_from(tmp_path, TWO)
    with pytest.raises(OptionError, match="'nope' is not a valid option for software_environment") as info:
        create_cluster(None, s, "alice", {"software_environment": "nope"})
    assert info.value.status == 422


def test_a_missing_or_undeclared_environment_refuses_the_start_naming_it(tmp_path):
    s = settings_from(tmp_path, TWO.replace("/opt/conda/envs/gpu", str(tmp_path / "absent")))
    gpu = cluster_config(s, {"software_environment": "gpu"})
    missing = r"software environment 'gpu': .*/absent/bin/python is not an executable on gw9"
    with pytest.raises(BackendRefused, match=missing):
        environments.require_python(s, gpu, "gw9")
    gone = cluster_config(s, {"software_environment": "removed-since"})
    with pytest.raises(BackendRefused, match="software environment 'removed-since' is not declared"):
        environments.python_for(s, gone)


def test_a_config_stored_by_an_older_release_still_loads_and_runs_node_python(tmp_path):
    old_row = {
        "scheduler_cores": 1.0,
        "scheduler_memory_gib": 1.0,
        "worker_cores": 1.0,
        "worker_memory_gib": 1.0,
        "worker_threads": 0,
        "idle_timeout": 0.0,
        "max_workers": 100,
        "heartbeat_period": 5.0,
        "adaptive_period": 3.0,
        "environment": {},
    }
    cfg = ClusterConfig.from_json(old_row)
    assert cfg.software_environment == ""
    assert environments.python_for(settings_from(tmp_path, TWO), cfg) == sys.executable
    assert ClusterConfig.from_json(cfg.to_json()) == cfg
