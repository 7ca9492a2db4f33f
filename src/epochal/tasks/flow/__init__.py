"""Flow matching on vectors (seed 004): ICFM / OT-CFM, fixed-step ODE sampling, sliced Wasserstein.

Modules, one concern each: ``data`` (datasets, files, normalisation), ``splits``
(nested training subsets), ``augment``, ``model`` (velocity networks), ``icfm``
(paths, loss and the exact OT pairing), ``ode`` (solvers),
``metrics`` (sliced Wasserstein), ``plot`` and ``task`` (the registered ``flow`` task).
"""
