"""The engine lifecycle: AIBrix's model-runtime API over a supervisor of engine processes.

``settings`` is read at every start; the rest loads only with ``--enable-runtime``:
``requests`` (the API's bodies, checked once), ``engines`` (how each engine is started,
as data), ``control`` (sleep, wake and probes over HTTP), ``processes`` (process groups),
``registry`` (the crash-safe engine file), ``kvcache``, ``gpus``, ``markers``,
``records`` (one model's state), ``service`` (activate ... snapshot), ``supervisor``,
``beside`` (the engine Patio runs beside), ``metrics``, ``api`` and ``component``.
"""
