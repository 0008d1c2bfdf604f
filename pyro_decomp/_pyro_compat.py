"""The Pyro names this package uses that are not part of Pyro's documented API, in one place.

Each is re-exported here and imported from here by the modules that need it, and each has a test in
``tests/test_pyro_compat.py`` that states the behaviour this package relies on, so that a Pyro release that
renames, moves or changes one fails that test by name rather than somewhere deep in training.

==============================================  =========================================================
name                                            what this package relies on
==============================================  =========================================================
``pyro.infer.util.torch_item``                  ``x.item()`` for a tensor, ``x`` itself for a number
``pyro.infer.util.is_validation_enabled``       follows ``pyro.enable_validation``
``pyro.infer.util.zero_grads``                  sets each tensor's ``.grad`` to zeros (``trainer.py``)
``pyro.poutine.util.site_is_subsample``         true exactly at a plate's subsample site
``pyro.distributions.util.scale_and_mask``      ``tensor * scale``, masked to 0 where ``mask`` is false
``pyro.distributions.util.broadcast_shape``     the broadcast of shapes; ``ValueError`` when they clash
``pyro.util.check_model_guide_match``           raises for a guide site the model lacks
``pyro.util.check_site_shape``                  reads ``site["log_prob"]`` and raises "invalid log_prob shape"
                                                when its batch dims disagree with the site's plates
``pyro.util.check_if_enumerated``               raises for an enumerated guide site
``pyro.util.warn_if_nan``                       warns when the loss is NaN
``pyro.poutine.unwrap`` and                     a ``GuideMessenger`` (e.g. ``AutoNormalMessenger``)
``pyro.poutine.messenger.Messenger``            unwraps to a ``Messenger``; its ``get_traces()``
                                                returns ``(model_trace, guide_trace)`` after a call; a
                                                ``Messenger`` subclass's ``_pyro_sample`` sees each sample
                                                site's own ``infer`` dict before ``poutine.replay`` (which
                                                replaces it with the guide's)
``PyroModule._pyro_name``                       the prefix of a module's names in the parameter store
                                                (``trainer.py``)
==============================================  =========================================================
"""

from __future__ import annotations

from pyro.distributions.util import broadcast_shape, scale_and_mask
from pyro.infer.util import is_validation_enabled, torch_item, zero_grads
from pyro.poutine import unwrap
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape, warn_if_nan

__all__ = [
    "Messenger",
    "broadcast_shape",
    "check_if_enumerated",
    "check_model_guide_match",
    "check_site_shape",
    "is_validation_enabled",
    "pyro_name",
    "scale_and_mask",
    "site_is_subsample",
    "torch_item",
    "unwrap",
    "warn_if_nan",
    "zero_grads",
]


def pyro_name(module) -> str:
    """The parameter-store prefix of a ``PyroModule`` (``""`` for a plain module)."""
    return getattr(module, "_pyro_name", "") or ""
