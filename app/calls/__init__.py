"""The call core: how a call to a model is made, whoever makes it.

The realtime proxy (``app/gateway``), the flex dispatcher and the batch runner (``worker/``)
all choose deployments, retry, classify outcomes and price calls here.
"""
