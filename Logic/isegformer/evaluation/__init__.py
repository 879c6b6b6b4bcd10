"""Evaluation protocols: NoC for the click engine (paper Table 1, ``noc.py``, ``plot.py``,
``samples.py``) and propagation (Table 2, ``propagation.py``).

Submodules are imported explicitly (``from isegformer.evaluation.noc import evaluate``), so that
one protocol does not load the other's dependencies.
"""
