"""Evolutionary search over merges: M2N2, CMA-ES and random search.

Search only: nothing here scores a model. A search proposes candidates (``ask``), the caller scores
each one (a fitness callable returning per-example scores on a dev split) and reports the scores
back (``tell``); ``run_search`` drives that loop with a budget and a checkpoint. Candidates are
small records (a point of a recipe space, or a crossover of two archive members) that the caller
turns into weights; ``crossover`` holds the tensor maths of M2N2's split-point SLERP.
"""
