"""A short computation through the stock dask-gateway client (configured by local.env)."""

import time
import urllib.request

from dask_gateway import Gateway

t0 = time.monotonic()
gateway = Gateway()
print(f"gateway: {gateway.address}")
with gateway.new_cluster(shutdown_on_close=True) as cluster:
    print(f"cluster {cluster.name} running after {time.monotonic() - t0:.1f}s")
    print(f"dashboard: {cluster.dashboard_link}")
    cluster.scale(2)
    client = cluster.get_client()
    client.wait_for_workers(2, timeout=120)
    futures = client.map(lambda x: x * x, range(100))
    total = client.submit(sum, futures).result()
    print(f"sum of squares 0..99 on {len(client.scheduler_info()['workers'])} workers: {total}")
    # Dashboards are their owner's: log in (HAProxy then checks the token cookie per request).
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    login = urllib.request.Request(cluster.dashboard_link, headers=gateway.auth.pre_request(None)[0])
    with opener.open(login, timeout=10) as r:
        print(f"dashboard answered {r.status}")
    client.close()
print(f"example done in {time.monotonic() - t0:.1f}s; the cluster was shut down, the stack keeps running")
