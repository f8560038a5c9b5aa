"""Probes: small predictors trained on embeddings, and the paper's search over them.

:class:`LinearProbe` and :class:`MLPProbe` are sklearn estimators trained alike (MSE, Adam,
early stopping); :class:`LeastSquaresProbe` is the closed-form linear fit, an extra.
:func:`search_probes` trains the linear probe and the whole MLP grid (as one batched
computation), then picks the probes with the lowest validation MSE.
"""

from embench.probes.estimators import LeastSquaresProbe, LinearProbe, MLPProbe
from embench.probes.metrics import one_hot, probe_loss
from embench.probes.search import SearchResult, mlp_name, probe_grid, search_probes

__all__ = [
    "LeastSquaresProbe",
    "LinearProbe",
    "MLPProbe",
    "SearchResult",
    "mlp_name",
    "one_hot",
    "probe_grid",
    "probe_loss",
    "search_probes",
]
