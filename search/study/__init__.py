"""The study store: what a search records in its Optuna study, and how it is read back.

``contract`` names every trial attribute, trial state and study state once;
``storage`` opens the database and reads trials through Optuna; ``queries`` reads
the same rules in SQL for the service's status polls; ``resume`` creates a study
or reopens it, repairing what a dead driver left. Nothing here imports Ray or torch.
"""
