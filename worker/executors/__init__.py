"""The executor seam: how claimed deferred work is run, chosen per deployment.

The flex dispatcher and the batch runner claim rows; the response cache answers what it can;
every other row is handed to the executor of the deployment it goes to (``executor:`` in the
config). ``direct`` (``direct.py``) makes one call per row to the deployment's realtime
endpoint, which is what self-hosted engines want.
"""
