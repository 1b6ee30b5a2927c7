"""Batch indexing jobs: ``tessera index --corpus PATH --collection NAME (--data-dir DIR | --server HOST:PORT)``.

``readers`` streams corpus files, ``job`` checks, buffers, encodes and writes with checkpoints (``state``),
``sinks`` writes to a data directory or a server, ``distributed`` encodes on Ray.
"""
