"""Prometheus metrics: Patio's own, and the engine's renamed by a scheme, as ``GET /metrics``.

The text library (sans-IO, no asyncio, no other capability; ``tests/test_metrics_library.py``):
``model`` (families, samples, lines kept as text or offsets), ``grammar`` (one line of text
0.0.4), ``parse`` (the family builder), ``write`` (the safe output subset), ``registry``
(Patio's own metrics), ``process`` (``process_*`` from procfs), ``memory`` (heap trims),
``rules`` (rename schemes), ``assemble`` (modes, clashes, repeats), ``plan`` (the last full
pass replayed on a payload whose series did not change), ``pipeline`` (match or parse, then
assemble), ``exposition`` (compose, gzip).

The edges: ``scrape`` (fetch the engine's payload and read it, blocking), ``component``
(``/metrics``: scrape, account, own families, assemble, compose, gzip) and ``settings``.
"""
