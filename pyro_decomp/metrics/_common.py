"""Checks and helpers shared by the metric modules: argument checks, factor value indices, seeded draws,
train/test splits, and the scikit-learn models fitted side by side."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

#: disentanglement_lib's numbers of training and test points for its predictor metrics
NUM_TRAIN, NUM_TEST = 10_000, 5_000


def _as_matrix(value, name: str, columns: str) -> torch.Tensor:
    value = torch.as_tensor(value)
    if value.dim() != 2 or value.shape[0] < 1 or value.shape[1] < 1:
        raise ValueError(
            f"{name} must be a non-empty 2-D tensor (N, {columns}), got shape {tuple(value.shape)}"
        )
    return value


def _check_pair(
    codes, factors, names: Tuple[str, str] = ("codes", "factors")
) -> Tuple[torch.Tensor, torch.Tensor]:
    codes = _as_matrix(codes, names[0], "D")
    factors = _as_matrix(factors, names[1], "K")
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of rows, got "
            f"{codes.shape[0]} and {factors.shape[0]}"
        )
    if not codes.is_floating_point():
        codes = codes.double()
    return codes, factors


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _factor_indices(factors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map every column of ``factors`` (N, K) to value indices 0..n_k-1 (sorted by value).

    :returns: ``(indices (N, K) int64, num_values (K,) int64)``.
    """
    n = factors.shape[0]
    columns, sizes = [], []
    for k in range(factors.shape[1]):
        column = factors[:, k]
        if not column.is_floating_point() and not column.is_complex() and column.dtype != torch.bool:
            column = column.long()
            lo = column.min()
            if int(column.max() - lo) < 4 * n:
                # small integer range: a look-up table from value to rank, no sort needed
                present = torch.bincount(column - lo) > 0
                rank = torch.cumsum(present, 0) - 1
                columns.append(rank[column - lo])
                sizes.append(int(present.sum()))
                continue
        values, inverse = torch.unique(column, sorted=True, return_inverse=True)
        columns.append(inverse)
        sizes.append(values.numel())
    return torch.stack(columns, dim=-1), torch.tensor(sizes, dtype=torch.long, device=factors.device)


def _uniform_below(high: torch.Tensor, shape, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Integers uniform on ``{0, ..., high-1}`` (elementwise ``high``, broadcast to ``shape``).

    A 62-bit random integer modulo ``high``: the modulo bias is below ``high / 2**62``.
    """
    draws = torch.randint(0, 2**62, shape, generator=generator, dtype=torch.long, device=high.device)
    return draws.remainder_(high)


def _value_groups(column: torch.Tensor, num_values: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The points sorted (stably) by one factor's value index, and each value's offset and size there.

    The points whose factor takes its v-th value are ``order[start[v] : start[v] + size[v]]``, in increasing
    data order.
    """
    order = torch.argsort(column.to(torch.int32), stable=True)  # int32 keys sort several times faster
    size = torch.bincount(column, minlength=num_values)
    start = torch.cumsum(size, 0) - size
    return order, start, size


class _evaluating:
    """``no_grad`` and eval mode for a module; the previous mode is restored on exit."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self._grad = torch.no_grad()
        self._grad.__enter__()
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        return self._grad.__exit__(*exc)


# ---------------------------------------------------------------------------------------------- scikit-learn
def _sklearn():
    """scikit-learn, or a one-line error that names the extra which installs it."""
    try:
        import sklearn  # noqa: F401
        import sklearn.ensemble  # noqa: F401
        import sklearn.exceptions  # noqa: F401
        import sklearn.linear_model  # noqa: F401
        import sklearn.metrics  # noqa: F401
        import sklearn.svm  # noqa: F401
    except ImportError:
        raise ImportError(
            'this metric fits scikit-learn models: pip install "pyro-decomp[metrics]" (or scikit-learn)'
        ) from None
    return sklearn


def _train_test(
    codes,
    factors,
    test_codes,
    test_factors,
    num_train: int,
    num_test: int,
    generator: Optional[torch.Generator],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float64 codes and the factors' raw values as numpy arrays, ``(train codes, train factors, test codes,
    test factors)``.

    With ``test_codes``/``test_factors`` given, ``codes``/``factors`` are the training set, whole. Without,
    ``num_train + num_test`` distinct rows are drawn at random (``torch.randperm`` of the N rows with
    ``generator``): the first ``num_train`` train, the next ``num_test`` test.
    """
    codes, factors = _check_pair(codes, factors)
    if (test_codes is None) != (test_factors is None):
        raise ValueError("give both test_codes and test_factors, or neither (then codes are split at random)")
    if test_codes is not None:
        test_codes, test_factors = _check_pair(test_codes, test_factors, ("test_codes", "test_factors"))
        if test_codes.shape[1] != codes.shape[1] or test_factors.shape[1] != factors.shape[1]:
            raise ValueError(
                f"test codes/factors have {test_codes.shape[1]}/{test_factors.shape[1]} columns, the "
                f"training ones {codes.shape[1]}/{factors.shape[1]}: they must match"
            )
        train_c, train_f = codes, factors
    else:
        num_train = _check_positive_int("num_train", num_train)
        num_test = _check_positive_int("num_test", num_test)
        n = codes.shape[0]
        if num_train + num_test > n:
            raise ValueError(
                f"codes hold {n} points, fewer than num_train + num_test = {num_train + num_test}: "
                "pass smaller counts or explicit test_codes/test_factors"
            )
        order = torch.randperm(n, generator=generator)
        train, test = order[:num_train], order[num_train : num_train + num_test]
        train_c, train_f = codes[train.to(codes.device)], factors[train.to(factors.device)]
        test_codes, test_factors = codes[test.to(codes.device)], factors[test.to(factors.device)]
    for name, t in (("codes", train_c), ("test_codes", test_codes)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contain NaN or infinite values")

    def numpy(t):
        return t.detach().cpu().double().numpy() if t.is_floating_point() else t.detach().cpu().numpy()

    return numpy(train_c), numpy(train_f), numpy(test_codes), numpy(test_factors)


def _labels(train_f: np.ndarray, test_f: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Each factor's values as integer labels 0..n-1 shared by train and test (in value order, which a
    classifier's predictions do not depend on)."""
    both = np.concatenate([train_f, test_f])
    columns = [np.unique(both[:, k], return_inverse=True)[1].reshape(-1) for k in range(both.shape[1])]
    labels = np.stack(columns, 1)
    return labels[: len(train_f)], labels[len(train_f) :]


def _num_jobs(n_jobs: Optional[int], tasks: int) -> int:
    if n_jobs is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(cores, tasks))
    return max(1, min(_check_positive_int("n_jobs", n_jobs), tasks))


def _map(fit: Callable, items: Sequence, n_jobs: Optional[int], progress: bool, desc: str) -> List:
    """``[fit(item) for item in items]``, ``n_jobs`` at a time on threads (scikit-learn's fits release the
    GIL), with a progress bar when ``progress``. Every item's fit is seeded by itself alone, so the results do
    not depend on ``n_jobs``."""
    jobs = _num_jobs(n_jobs, len(items))
    bar = tqdm(total=len(items), desc=desc, unit="fit", disable=not progress, leave=False)
    try:
        if jobs == 1:
            out = []
            for item in items:
                out.append(fit(item))
                bar.update(1)
            return out
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(fit, item) for item in items]
            out = []
            for future in futures:
                out.append(future.result())
                bar.update(1)
            return out
    finally:
        bar.close()
