"""``ktg compare``: several graphs trained with the same seeds, and their paired differences.

``jobs`` (one (graph, seed) job, run here or on Ray, and resumable), ``stats``
(the paired t interval), ``report`` (the table, ``compare.json``, the plot) and
``command`` (what the command does once its flags are parsed).
"""
