"""The engine lifecycle: AIBrix's model-runtime API over a supervisor of engine processes.

``settings`` is read at every start; the rest loads only with ``--enable-runtime``:

- ``requests``: the API's bodies, checked once (sans-IO);
- ``engines``: how each engine is started (argv, environment), as data;
- ``control``: sleep, wake and probes of one engine over HTTP, each engine's contract as data;
- ``processes``: /proc liveness, process groups, markers; ``launcher``: start, watch, stop;
- ``records`` (one model's state), ``store`` (the models, their locks), ``registry`` (the file);
- ``artifacts`` (where the weights come from), ``kvcache``, ``gpus``, ``markers``, ``enginelog``;
- ``service`` (activate ... snapshot), ``supervisor`` (restarts, adoption, shutdown),
  ``beside`` (the engine Patio runs beside), ``metrics``, ``api``, ``component``.
"""
