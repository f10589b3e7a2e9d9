"""The training loop behind ``fit``: one epoch loop, two feeds, every compiled program.

- ``hooks``: the ``Callback`` protocol (Keras's hooks) and the runner.
- ``setup``: validation split, the step, the mesh, the start state.
- ``compiled``: every jitted program ``fit``, ``evaluate`` and ``predict`` run.
- ``progress``: what a run prints (bar, epoch lines) and raises (non-finite loss).
- ``epochs``: the one epoch loop, with its host stops and the fast road.
- ``arrays`` and ``stream``: the two feeds, batches gathered on the device or read from a
  source on the host.

A loop of your own needs none of this: ``fnlearn.step`` has the pure pieces.
"""
