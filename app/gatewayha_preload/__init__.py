"""What gatewayha's schedulers import at start, by module name (``dask scheduler --preload
gatewayha_preload.control_tls --preload gatewayha_preload.prompt_reports``).

A package of its own, installed with gatewayha (same distribution), so that a scheduler imports
it from its Python's site-packages rather than from a path into the gateway's files. It imports
only distributed, dask-gateway and the standard library, never ``gatewayha``: importing it
starts nothing of the gateway (no settings, no database driver) in a tenant's process.
"""
