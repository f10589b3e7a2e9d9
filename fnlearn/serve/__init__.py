"""Serving an exported model: an HTTP server speaking TensorFlow Serving's REST API, and file mode.

- ``cli``: ``python -m fnlearn.serve MODEL`` (server) or ``MODEL INPUT.npy`` (file mode).
- ``batching``: the dynamic batcher, pure asyncio logic.
- ``protocol``: TF Serving's paths, request and answer bodies, as pure functions.
- ``http``: the Starlette app and the uvicorn runner (needs ``pip install 'fnlearn[serve]'``).

These import ``fnlearn.export`` and nothing of the training code.
"""

from fnlearn.serve.cli import main, predict_file

__all__ = ["main", "predict_file"]
