"""The HTTP API: dask-gateway's wire protocol on Falcon (WSGI)."""
