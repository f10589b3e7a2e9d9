"""Serving exported models: TensorFlow Serving's REST and gRPC APIs, and file mode.

- ``cli``: ``python -m fnlearn.serve`` (server, TF Serving's flags) or ``MODEL INPUT.npy``.
- ``config``: what to serve: models, base paths, version policies, labels, config files.
- ``versions``: version folders under a base path, loaded and swapped live.
- ``batching``: the dynamic batcher, pure asyncio logic.
- ``protocol``: TF Serving's REST paths, request and answer bodies, as pure functions.
- ``http``: the Starlette app (REST, metrics); ``grpc``: the gRPC services;
  ``metrics``: Prometheus metrics; ``server``: uvicorn, slow-client guards, worker processes
  (need ``pip install 'fnlearn[serve]'``).

These import ``fnlearn.export`` and nothing of the training code.
"""

from fnlearn.serve.cli import main, predict_file

__all__ = ["main", "predict_file"]
