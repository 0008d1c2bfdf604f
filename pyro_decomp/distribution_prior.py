"""A prior given as a distribution object, held as a module so that it trains and moves with the model.

A Pyro user writes a prior as a distribution: ``dist.Laplace(0., 1.).expand([D]).to_event(1)``, a mixture
whose locations are ``nn.Parameter`` objects, or a normalising flow::

    flow = dist.TransformedDistribution(dist.Normal(torch.zeros(D), 1.).to_event(1), [T.spline_coupling(D)])

The tensors and transform modules inside such an object are invisible to ``nn.Module`` machinery, so on
their own they would neither train (no ``pyro.param`` ever sees them) nor follow ``.to(device)`` or
``.double()``. :class:`DistributionPrior` finds them once, by walking the distribution (its nested
distributions and transforms), and registers

* every transform that is a module (Pyro's ``TransformModule`` classes: a flow's layers) as a submodule,
* every leaf tensor that requires grad (an ``nn.Parameter``) as a parameter,
* every other tensor as a non-persistent buffer (it follows ``.to()``, and checkpoints stay as they were).

Inside :class:`~pyro_decomp.DecompVAE` it is the ``prior`` submodule, so its parameters are registered with
``pyro.module`` under the VAE's own prefix (``DecompVAE0$$$prior$$$transforms.0...``) and train with the
model. Calling it returns the distribution built on the module's current tensors: the given object itself
while none of them has been replaced, otherwise a copy that refers to the current ones (after ``.to()``).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.distributions import Distribution, Transform
from torch.distributions.constraints import Constraint

__all__ = ["DistributionPrior"]

_LAZY_NAMES: Dict[type, Tuple[str, ...]] = {}


def _lazy_names(obj) -> Tuple[str, ...]:
    """The names of the class's lazily computed, cached properties (torch's ``lazy_property``)."""
    cls = type(obj)
    if cls not in _LAZY_NAMES:
        _LAZY_NAMES[cls] = tuple(
            name
            for klass in cls.__mro__
            for name, attr in vars(klass).items()
            if type(attr).__name__ == "lazy_property"
        )
    return _LAZY_NAMES[cls]


def _walk(d: Distribution):
    """``(objects, tensors, modules)`` held by ``d``: the distributions, plain transforms and constraints
    (in order), the distinct tensors stored in their attributes, and the transform modules.

    Attributes that are caches are skipped: a transform's last ``(x, y)`` and a lazy property's value that
    was derived from another attribute (a lazy property's value is kept only when it is a leaf tensor, the
    one the distribution was built from, such as ``Categorical(logits=...)``'s ``logits``)."""
    objects, tensors, modules, seen = [], {}, {}, set()
    stack = [d]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            modules[id(obj)] = obj
            continue
        if isinstance(obj, (list, tuple)):
            stack.extend(reversed(obj))
            continue
        if not isinstance(obj, (Distribution, Transform, Constraint)):
            continue
        objects.append(obj)
        lazy = _lazy_names(obj)
        for name, value in vars(obj).items():
            if name.startswith("_cached") or name == "_inv":
                continue
            if torch.is_tensor(value):
                if name in lazy and not value.is_leaf:
                    continue
                if value.requires_grad and not value.is_leaf:
                    raise ValueError(
                        f"the prior {type(d).__name__} holds a tensor computed from learnable parameters "
                        f"({type(obj).__name__}.{name}, made by {value.grad_fn.name()}): it would not follow "
                        "training. Build it from the parameters themselves (nn.Parameter), or pass a module "
                        "whose forward() builds the distribution when called"
                    )
                tensors[id(value)] = value
            else:
                stack.append(value)
    return objects, list(tensors.values()), list(modules.values())


class DistributionPrior(nn.Module):
    """A distribution prior as a module: its learnable tensors and transform modules train, and all its
    tensors follow ``.to()``, ``.double()``, ``.cuda()`` (see the module docstring).

    :param distribution: a distribution with ``event_shape == (D,)`` (checked by the model that uses it).
    :raises ValueError: when the distribution holds a tensor computed from learnable parameters (such a
        tensor would keep its value and graph from construction time).
    """

    def __init__(self, distribution: Distribution):
        super().__init__()
        if not isinstance(distribution, Distribution):
            raise TypeError(f"distribution must be a torch Distribution, got {type(distribution).__name__}")
        objects, tensors, modules = _walk(distribution)
        self.transforms = nn.ModuleList(modules)
        self.params = nn.ParameterList()
        self._originals: List[torch.Tensor] = []
        # where each original tensor lives now: ("params", i) or ("fixed", i)
        self._slots: List[Tuple[str, int]] = []
        for t in tensors:
            if t.requires_grad:
                self._slots.append(("params", len(self.params)))
                self.params.append(t if isinstance(t, nn.Parameter) else nn.Parameter(t))
            else:
                self._slots.append(("fixed", sum(kind == "fixed" for kind, _ in self._slots)))
                self.register_buffer(f"fixed_{self._slots[-1][1]}", t, persistent=False)
            self._originals.append(t)
        self._distribution = distribution
        self._objects = objects
        self._copy = None  # (key, distribution, its objects) after a tensor was replaced

    def _current(self) -> List[torch.Tensor]:
        return [
            self.params[i] if kind == "params" else getattr(self, f"fixed_{i}") for kind, i in self._slots
        ]

    @staticmethod
    def _drop_caches(objects, keep) -> None:
        """Forget cached values derived from the tensors (recomputed on demand from the current values)."""
        for obj in objects:
            for name in _lazy_names(obj):
                value = obj.__dict__.get(name)
                if value is not None and id(value) not in keep:
                    del obj.__dict__[name]
            if "_cached_x_y" in obj.__dict__:
                obj._cached_x_y = None, None

    def forward(self) -> Distribution:
        current = self._current()
        keep = {id(t) for t in current}
        if all(c is o for c, o in zip(current, self._originals)):
            self._drop_caches(self._objects, keep)
            return self._distribution
        key = tuple(id(t) for t in current)
        if self._copy is None or self._copy[0] != key:
            self._drop_caches(self._objects, {id(t) for t in self._originals})
            memo = {id(o): c for o, c in zip(self._originals, current)}
            memo.update({id(m): m for m in self.transforms})
            rebuilt = copy.deepcopy(self._distribution, memo)
            self._copy = (key, rebuilt, _walk(rebuilt)[0])
        self._drop_caches(self._copy[2], keep)
        return self._copy[1]

    def __getstate__(self):
        self._drop_caches(self._objects, {id(t) for t in self._originals})
        state = dict(self.__dict__)
        state["_copy"] = None
        return state

    def extra_repr(self) -> str:
        return repr(self._distribution)
