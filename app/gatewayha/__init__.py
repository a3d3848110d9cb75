"""gatewayha: a highly available, multi-tenant gateway for Dask clusters."""

__version__ = "0.1.0"
