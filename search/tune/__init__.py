"""The Ray Tune runtime of a search: everything that runs while a study is searched.

``driver`` (the run, in the driver process), ``schedule`` (ASHA's rungs),
``searcher`` (Tune's searcher over the Optuna study), ``trial`` (one trial, in a
Ray worker), ``twins`` (a graph drawn again continues its twin), ``checkpoints``
(which trial checkpoints stay on disk) and ``patches`` (one fix to Tune).
"""
