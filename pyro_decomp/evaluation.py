"""A trained run: loading it (:func:`load_run`), judging it (:func:`evaluate`), drawing it
(:func:`write_figures`).

:func:`evaluate` measures what Mathieu et al. (2019) judge a decomposition by, on held-out points: the loss
components of the run's objective, the IWAE log-likelihood, the Hoyer sparsity of the encoder means, the two
factors of decomposition (overlap: I(x; z) and the encoder-to-aggregate variance ratio; alignment:
D(q(z), p(z))), and on ground-truth data the disentanglement score of Kim & Mnih, MIG, and the other metrics
of disentanglement_lib (DCI, SAP, modularity and explicitness, the β-VAE score) with their chance levels
(:func:`factor_metrics`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional, Tuple

import pyro
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pyro_decomp import metrics, plots
from pyro_decomp.build import build
from pyro_decomp.config import RunConfig, resolve_device
from pyro_decomp.data.indexing import subset_index, take
from pyro_decomp.runs import (
    BEST_NAME,
    CHECKPOINT_FILES,
    EVALUATION_NAME,
    METRICS_NAME,
    SHOWN,
    Run,
    check_writable,
    figures_dir,
    load_checkpoint,
    load_config,
    lock_run,
    read_metrics,
    state_mismatch,
    write_json,
)
from pyro_decomp.summary import chance_levels, cluster_ari, collapse_warning, summary_rows
from pyro_decomp.trainer import average_loss_components
from pyro_decomp.util import module_device

__all__ = [
    "encode_in_chunks",
    "evaluate",
    "factor_metrics",
    "factor_split_sizes",
    "load_run",
    "write_figures",
]


def _checkpoint_path(run_dir: str, checkpoint: str) -> str:
    """The file of ``checkpoint`` (``"last"`` or ``"best"``) in ``run_dir``; a ValueError in one line when
    the choice is unknown or ``best.pt`` was never written."""
    if checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINT_FILES)}, got {checkpoint!r}")
    path = os.path.join(run_dir, CHECKPOINT_FILES[checkpoint])
    if checkpoint == "best" and not os.path.exists(path):
        raise ValueError(
            f"{run_dir} has no {BEST_NAME}: it is written only when the held-out loss is measured (a data "
            "set with a test split and eval_every > 0); evaluate the last checkpoint instead"
        )
    return path


def load_run(run_dir: str, device="cpu", checkpoint: str = "last", data=None) -> Run:
    """Rebuild a trained run from ``RUN_DIR/config.json`` and a checkpoint: ``checkpoint="last"``
    (``checkpoint.pt``, where training stopped) or ``"best"`` (``best.pt``, the epoch of lowest held-out
    loss).

    The network initialisation is drawn from a forked generator and the Pyro parameter store is left as it
    is, so loading a run changes neither the caller's random state nor the caller's parameters.

    The data are rebuilt from the recorded source, and a file or folder that changed or vanished since is
    refused, naming it. A run trained on data held in memory needs ``data=(train_set, test_set)`` again.

    :returns: a :class:`~pyro_decomp.runs.Run` whose ``vae`` holds the checkpoint's weights, in eval mode,
        on ``device``; ``epoch`` is the checkpoint's epoch and ``checkpoint`` says which one it is.
    :raises ValueError: ``checkpoint`` is neither ``"last"`` nor ``"best"``, or ``best.pt`` is missing.
    """
    path = _checkpoint_path(run_dir, checkpoint)
    which = checkpoint
    config = load_config(run_dir)
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    checkpoint = load_checkpoint(path, map_location=dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae, elbo, train_set, test_set = build(config, data=data)
    try:
        vae.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise ValueError(
            f"the checkpoint of {run_dir} does not fit the model that its config.json describes "
            f"({state_mismatch(e)}); "
            "was config.json edited?"
        ) from None
    vae.to(dev).eval()
    return Run(
        vae=vae,
        config=config,
        elbo=elbo,
        metrics=read_metrics(run_dir),
        epoch=int(checkpoint["epoch"]),
        global_step=int(checkpoint["global_step"]),
        run_dir=run_dir,
        train_set=train_set,
        test_set=test_set,
        checkpoint=which,
    )


# ---------------------------------------------------------------------------------------------- figures
@torch.no_grad()
def _encode(vae, x: torch.Tensor, sample: bool, batch_size: int = 256) -> torch.Tensor:
    """Encoder means (or one draw of q(z|x) per point) of ``x``, in batches, on the CPU."""
    device = module_device(vae)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        out.append((vae.encoder_distribution(xb).sample() if sample else vae.encoder(xb)[0]).cpu())
    return torch.cat(out)


def _chunks(n: int, size: int, desc: str, progress: bool):
    return tqdm(range(0, n, size), desc=desc, unit="batch", disable=not progress, leave=False)


@torch.no_grad()
def encode_in_chunks(vae, dataset: Dataset, index, chunk: int = 1024, progress: bool = False):
    """Encoder means ``(n, D)`` of the points ``index`` of ``dataset`` and their labels or factors, read and
    encoded ``chunk`` points at a time: memory stays bounded (the full shapes grid is 12 GB as float32)."""
    device, locs, labels = module_device(vae), [], []
    for start in _chunks(len(index), chunk, "encoding", progress):
        x, y = take(dataset, index[start : start + chunk])
        locs.append(vae.encoder(x.to(device))[0].cpu())
        labels.append(y)
    return torch.cat(locs), torch.cat(labels)


def _labels(dataset: Dataset, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Classes for the latent-magnitude figure: pinwheel arms, Fashion-MNIST classes, the shape factor."""
    if y is None:
        return None
    if y.dim() == 1:
        return y.long()
    names = getattr(dataset, "factor_names", None)
    if names is not None and "shape" in names:
        return y[:, list(names).index("shape")].long()
    return None


def write_figures(
    vae,
    config: RunConfig,
    dataset: Dataset,
    directory: str,
    *,
    metrics_path: Optional[str] = None,
    kinds: Optional[Tuple[str, ...]] = None,
    max_points: int = 2000,
    seed: int = 0,
    progress: bool = False,
) -> Dict[str, str]:
    """Draw the figures that fit the run's data into ``directory``; returns ``{name: path}``.

    ``training_curves`` (from ``metrics.jsonl``, training and held-out; no divergence panel when α = 0),
    ``aggregate_posterior`` (q(z), one draw per point, against p(z)), ``reconstructions`` (16 images or 400
    points in a seeded random order of a seeded random subset: from across the data set), ``samples``
    (decoder means of prior draws; grey or colour images, 2-D points over the data), ``traversals`` (images
    only: from the code of the first of those random points, at the values written under the columns) and
    ``latent_magnitude``
    (labelled data: mean ``|z_d|`` per class). ``kinds`` selects some of them (default: all that apply). The
    model is moved to the CPU.
    """
    os.makedirs(directory, exist_ok=True)
    index = subset_index(len(dataset), max_points, torch.Generator().manual_seed(seed))
    x, y = take(dataset, index)
    images = x.dim() == 4 and x.shape[1] in (1, 3)  # grey or colour images; other inputs are not drawn
    drawable = images or (x.dim() == 2 and x.shape[1] == 2)  # images or 2-D points
    labels = _labels(dataset, y)
    wanted = set(kinds) if kinds is not None else None
    records = (
        read_metrics(os.path.dirname(metrics_path)) if metrics_path and os.path.exists(metrics_path) else []
    )
    # like with like: the loss and its parts, without the divergence when α = 0 (it is not in the objective)
    unused = {"divergence"} if config.alpha == 0 else set()
    keys = [k for k in SHOWN if records and k in records[-1] and k not in unused]
    # the images shown come from a seeded random order of the (random, sorted) subset: across the data set
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    xs = x[order[: 16 if images else 400]]
    traversal_values = torch.linspace(-3.0, 3.0, 9)

    def path(name):
        return os.path.join(directory, name + ".png")

    def shown(t):
        return t.clamp(0, 1) if images else t

    drawers = {
        "training_curves": (
            bool(keys),
            lambda: plots.plot_training_curves(records, path("training_curves"), keys=keys),
        ),
        "aggregate_posterior": (
            True,
            lambda: plots.plot_aggregate_posterior(
                _encode(vae, x, sample=True),
                vae.prior_distribution(),
                path("aggregate_posterior"),
                generator=torch.Generator().manual_seed(seed),
                title=f"aggregate encoding of {len(x)} points, one draw of q(z|x) each, against p(z)",
            ),
        ),
        "reconstructions": (
            drawable,
            lambda: plots.plot_reconstructions(
                xs,
                shown(vae.reconstruct(xs)),
                path("reconstructions"),
                title=f"{len(xs)} random points and their reconstructions (decoder mean)",
            ),
        ),
        "samples": (
            drawable,
            lambda: plots.plot_samples(
                shown(vae.sample(64 if images else len(xs))),
                path("samples"),
                title="decoder means E[x|z] of z ~ p(z)" + ("" if images else "; data behind"),
                data=None if images else x,
            ),
        ),
        "traversals": (
            images,
            lambda: plots.plot_traversals(
                shown(plots.latent_traversal(vae, vae.encoder(xs[:1])[0][0], values=traversal_values)),
                path("traversals"),
                values=traversal_values,
                title="latent traversals from the code of a random point",
            ),
        ),
        "latent_magnitude": (
            labels is not None,
            lambda: plots.plot_latent_magnitude(
                _encode(vae, x, sample=False), labels, path("latent_magnitude")
            ),
        ),
    }
    todo = [name for name, (applies, _) in drawers.items() if applies and (wanted is None or name in wanted)]
    out: Dict[str, str] = {}
    was_training = vae.training
    vae.cpu().eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in tqdm(todo, desc="figures", unit="figure", disable=not progress, leave=False):
                out[name] = str(drawers[name][1]())
    finally:
        vae.train(was_training)
    return out


# ------------------------------------------------------------------------------------------ factor metrics
def factor_split_sizes(n: int) -> Tuple[int, int]:
    """Training and test points of the predictor metrics among ``n`` codes: disentanglement_lib's 10,000 and
    5,000 when ``n`` >= 15,000, else two thirds and one third of them."""
    return (10_000, 5_000) if n >= 15_000 else (n - n // 3, n // 3)


def factor_metrics(
    codes: torch.Tensor, factors: torch.Tensor, *, seed: int, progress: bool = False
) -> Dict[str, Any]:
    """The disentanglement metrics of disentanglement_lib on ``(N, D)`` codes of ground-truth points and
    their ``(N, K)`` factors, each with its chance level: the same metric, on the same factors, of N(0, 1)
    codes of the same shape (seeded by ``seed``).

    DCI, SAP, modularity and explicitness take :func:`factor_split_sizes` training and test points, drawn
    without replacement from the N (disentanglement_lib's 10,000 and 5,000 when N >= 15,000); the β-VAE score
    draws its 10,000 + 5,000 batches of 64 pairs from the N points. Keys: ``dci_disentanglement``,
    ``dci_completeness``, ``dci_informativeness``, ``sap``, ``modularity``, ``explicitness``, ``beta_vae``,
    ``chance`` (a dict of the same keys: the chance levels), and ``factor_metric_points`` (train, test). A
    metric that cannot be computed (scikit-learn missing, no factor varying in the training points) is null,
    and ``factor_metrics_skipped`` says why.
    """
    n = codes.shape[0]
    num_train, num_test = factor_split_sizes(n)
    noise = torch.randn(codes.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def split():
        return dict(num_train=num_train, num_test=num_test, generator=torch.Generator().manual_seed(seed))

    def measure(z):
        dci = metrics.dci(z, factors, progress=progress, **split())
        me = metrics.modularity_explicitness(z, factors, progress=progress, **split())
        beta = metrics.beta_vae_score(z, factors, generator=torch.Generator().manual_seed(seed))
        return {
            "dci_disentanglement": dci["disentanglement"],
            "dci_completeness": dci["completeness"],
            "dci_informativeness": dci["informativeness_test"],
            "sap": metrics.sap(z, factors, progress=progress, **split()),
            "modularity": me["modularity"],
            "explicitness": me["explicitness_test"],
            "beta_vae": beta["eval_accuracy"],
        }

    out: Dict[str, Any] = {"factor_metric_points": [num_train, num_test]}
    try:
        if num_test < 1:
            raise ValueError(f"{n} ground-truth points: too few to split into training and test points")
        values, chance = measure(codes), measure(noise)
    except (ImportError, ValueError) as e:
        names = ("dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "modularity")
        values = chance = dict.fromkeys(names + ("explicitness", "beta_vae"))
        out["factor_metrics_skipped"] = str(e).strip().splitlines()[0]
    out.update(values)
    out["chance"] = chance
    return out


# ---------------------------------------------------------------------------------------------- evaluate
def _test_labels(dataset: Dataset, y: Optional[torch.Tensor], index: torch.Tensor) -> Optional[torch.Tensor]:
    """Class labels of the points ``index``: the data set's ``labels`` attribute (data of one's own, which
    may carry factors too), else integer labels ``(n,)`` as items carry them; ``None`` without."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return torch.as_tensor(labels)[index]
    if y is not None and y.dim() == 1 and not y.is_floating_point():
        return y
    return None


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if torch.is_tensor(value):
        return _finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(
    run_dir: str,
    *,
    device="cpu",
    max_points: int = 1000,
    iwae_samples: int = 100,
    factor_points: Optional[int] = None,
    num_votes: int = 20000,
    votes_size: int = 1000,
    seed: int = 0,
    figures: bool = True,
    progress: bool = False,
    checkpoint: str = "last",
    data=None,
) -> Dict[str, Any]:
    """Judge a trained run; writes ``RUN_DIR/evaluation.json`` and figures under ``RUN_DIR/figures``.

    On at most ``max_points`` test points (a seeded random subset): the loss components of the run's
    objective per data point (``reconstruction`` = E_q log p(x|z), ``kl``, ``divergence`` D̂, ``loss``), the
    squared reconstruction error of the decoded encoder mean, the IWAE log-likelihood with ``iwae_samples``
    importance samples, the Hoyer sparsity of the encoder means, the overlap diagnostics (I(x; z) and the
    encoder-to-aggregate variance ratio) and the alignment D(q(z), p(z)) with the run's divergence. On
    ground-truth data (shapes, dSprites), also the disentanglement score of Kim & Mnih (``num_votes`` votes
    of ``votes_size`` codes; Student-t codes mapped through the prior's CDF first, as the paper), MIG and
    :func:`factor_metrics` (DCI, SAP, modularity, explicitness, β-VAE score), on the encoder means of
    ``factor_points`` points (default all), each beside its chance level (the score of random codes by the
    same metric on the same factors). ``collapse_warning`` is a line when the encoder has collapsed (see
    :func:`~pyro_decomp.summary.collapse_warning`), else null; ``summary`` lists the main numbers with unit
    and better direction. ``checkpoint`` chooses the weights (``"last"``: ``checkpoint.pt``; ``"best"``:
    ``best.pt``); ``checkpoint`` and ``epoch`` in the result say which were evaluated. ``progress`` shows a
    bar per stage on stderr.

    Where the test points carry labels (pinwheel, Fashion-MNIST, labelled data of one's own), ``ari`` is the
    adjusted Rand index between them and the clusters of the encoder means (see
    :func:`~pyro_decomp.summary.cluster_ari`). Data of one's own with ``factors`` get the factor metrics
    too. ``data``: the ``(train_set, test_set)`` of a run trained on data held in memory (required for
    those, refused in one line without).

    The run directory is locked while it is evaluated, and checked for writing before any work is done.

    :returns: the dict written to ``evaluation.json`` (non-finite numbers as null).
    """
    load_config(run_dir)  # a directory that holds no run is refused before anything is written there
    check_writable(run_dir)
    if figures:
        check_writable(figures_dir(run_dir))  # a real directory: a link there is refused
    with lock_run(run_dir):
        result = _measure(
            run_dir,
            device,
            max_points,
            iwae_samples,
            factor_points,
            num_votes,
            votes_size,
            seed,
            progress,
            checkpoint,
            data,
        )
        run = result.pop("_run")
        if figures:
            result["figures"] = write_figures(  # under the lock: the figures of this run
                run.vae,
                run.config,
                run.test_set,
                figures_dir(run_dir),
                metrics_path=os.path.join(run_dir, METRICS_NAME),
                max_points=max_points,
                seed=seed,
                progress=progress,
            )
        result = _finite(result)
        result["summary"] = summary_rows(result)
        write_json(os.path.join(run_dir, EVALUATION_NAME), result)
    return result


def _measure(
    run_dir,
    device,
    max_points,
    iwae_samples,
    factor_points,
    num_votes,
    votes_size,
    seed,
    progress,
    checkpoint,
    data=None,
):
    run = load_run(run_dir, device=device, checkpoint=checkpoint, data=data)
    config, vae, elbo, test_set = run.config, run.vae, run.elbo, run.test_set
    dev = module_device(vae)
    pyro.set_rng_seed(seed)
    index = subset_index(len(test_set), max_points, torch.Generator().manual_seed(seed))
    x, y = take(test_set, index)
    n = len(x)
    result: Dict[str, Any] = {
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": run.checkpoint,
        "checkpoint_file": CHECKPOINT_FILES[run.checkpoint],
        "epoch": run.epoch,
        "dataset": config.dataset,
        "test_points": n,
        "_run": run,
    }
    with torch.no_grad():
        batches = (
            x[i : i + config.batch_size].to(dev)
            for i in _chunks(n, config.batch_size, "loss components", progress)
        )
        result.update(average_loss_components(elbo, vae, batches))
        err = [
            (vae.reconstruct(x[i : i + 256].to(dev)).cpu() - x[i : i + 256]).square().flatten(1).sum(1)
            for i in _chunks(n, 256, "reconstructions", progress)
        ]
        result["reconstruction_squared_error"] = float(torch.cat(err).mean())
        ll = torch.cat(
            [
                metrics.iwae_log_likelihood(
                    vae, x[i : i + 64].to(dev), num_samples=iwae_samples, batch_size=8192
                )
                for i in _chunks(n, 64, "IWAE", progress)
            ]
        ).cpu()
        result["iwae_log_likelihood"] = {
            "mean": float(ll.mean()),
            "standard_error": float(ll.std() / math.sqrt(n)) if n > 1 else None,
            "num_samples": iwae_samples,
        }
        ground_truth = (
            hasattr(test_set, "factors_from_index") or getattr(test_set, "factors", None) is not None
        )
        stages = tqdm(
            total=6 if ground_truth else 3, desc="metrics", unit="metric", disable=not progress, leave=False
        )
        codes = _encode(vae, x, sample=False)
        try:
            result["hoyer_sparsity"] = metrics.hoyer_sparsity(codes)
        except ValueError as e:  # constant codes (a collapsed encoder) have no normalised sparsity
            result["hoyer_sparsity"] = None
            result["hoyer_sparsity_undefined"] = str(e)
        stages.update(1)
        ov = metrics.overlap(vae, x, num_samples=n, generator=torch.Generator().manual_seed(seed))
        result["overlap"] = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in ov.items()}
        result["collapse_warning"] = collapse_warning(result["overlap"])
        labels = _test_labels(test_set, y, index)
        if labels is not None and len(labels.unique()) > 1:
            result["ari"] = cluster_ari(codes, labels, getattr(vae, "prior", None), seed=seed)
        stages.update(1)
        result["alignment"] = {
            "divergence": config.divergence,
            "value": metrics.alignment(
                vae,
                x,
                config.divergence,
                num_samples=n,
                batch_size=config.batch_size,
                generator=torch.Generator().manual_seed(seed),
            ),
        }
        stages.update(1)
        if ground_truth:
            index = subset_index(len(test_set), factor_points, torch.Generator().manual_seed(seed))
            fcodes, factors = encode_in_chunks(vae, test_set, index, chunk=4096, progress=progress)
            transform = None
            if config.prior == "student-t":
                transform = metrics.prior_cdf_transform(vae.prior_distribution())
            stages.set_postfix_str(f"{num_votes} disentanglement votes")
            result["disentanglement"] = metrics.disentanglement_score(
                fcodes,
                factors,
                num_votes=num_votes,
                votes_size=votes_size,
                generator=torch.Generator().manual_seed(seed),
                transform=transform,
            )
            stages.update(1)
            result["mig"] = metrics.mig(fcodes, factors)
            result["chance"] = chance_levels(
                factors, fcodes.shape[1], num_votes=num_votes, votes_size=votes_size, seed=seed
            )
            stages.update(1)
            standard = factor_metrics(fcodes, factors, seed=seed, progress=progress)
            result["chance"].update(standard.pop("chance"))
            result.update(standard)
            stages.update(1)
            result["factor_points"] = len(index)
        stages.close()
    return result
