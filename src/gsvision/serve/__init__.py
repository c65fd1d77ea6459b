"""Edge–cloud serving: the embedding service (cloud side) and the edge client that sends splats.

Needs the ``serve`` extra (``pip install 'gsvision[serve]'``: FastAPI, uvicorn, httpx,
python-multipart, prometheus-client).
"""
