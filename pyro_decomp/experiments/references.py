"""Measured references that the reproduction report quotes beside its own runs: the paper's own code at the
``cpu`` scale, and the independence experiment at the paper's 20 epochs (its runs stored beside the report,
in ``independence_20_epochs.json``)."""

from __future__ import annotations

from typing import Any, Dict

from pyro_decomp.experiments.verdicts import independence_differences

__all__ = ["paragraph", "paper_code_reference", "TWENTY_EPOCHS_REFERENCE"]


def paragraph(text: str) -> str:
    """An indented triple-quoted text as one markdown paragraph."""
    return " ".join(text.split())


def paper_code_reference(result: Dict[str, Any]) -> str:
    """The paper's own code at the ``cpu`` scale, quoted as a measured reference, and what the comparison
    shows, with this report's own PCA − isotropic difference at β=4 when it has one."""
    ours = next(
        (r for r in independence_differences(result) if r["group"] == "pca" and r["beta"] == 4.0), None
    )
    if ours is not None:
        mean, se, n = ours["disentanglement"]
        ours_text = f"This report's own runs give {mean:+.3f}" + (
            f" ± {se:.3f} ({n} paired seeds)" if se is not None else f" ({n} seed)"
        )
    else:
        ours_text = "This report has no PCA − isotropic pair at β=4 to compare"
    return paragraph(
        f"""
        **The paper's own code at the same scale (a measured reference).** The paper's code
        (iffsid/disentangling-disentanglement, `src/main.py`) was run outside this package at the `cpu`
        scale: the same 5,760-image procedural shapes grid written in the dSprites file format, 4 epochs,
        batch 64, learning rate 5e-4, 10 latent dimensions, scored with this package's Kim & Mnih score on
        the encoder means of all 5,760 images (800 votes of 100). Anisotropic (PCA) − isotropic
        disentanglement, paired by seed (mean ± standard error): +0.056 ± 0.031 at β=4 over 10 seeds and
        +0.041 ± 0.062 at β=1 over 5 seeds. In 10 of its 30 runs the code collapsed within 4 epochs (its
        encoder means barely vary and its reconstruction is stuck near 520 nats per image), and collapsed
        runs score noise. {ours_text} at β=4. The reference implementation, at this scale, shows a gain of
        the same sign and of similar size, within noise at both β values it was run at: it does not show
        the effect clearly either. That the claim did not hold here is therefore a matter of the scale (4
        epochs on a 5,760-image grid, few seeds, frequent collapse), not of this implementation. The
        paper's PCA prior also differs slightly from ours: its `compute_pca` takes
        `scipy.sparse.linalg.svds(X, k=20)` of the uncentred pixels and squares the singular values, and
        `load_pca` keeps the first 10 of the returned array; `svds` returns the singular values in
        ascending order, so these are the 11th–20th largest, smallest first (ours: the 10 largest
        principal variances of the centred pixels, largest first). `main.py` never calls `compute_pca`, so
        the file must exist beforehand. After normalisation to a sum of D, the two spreads are close (0.55
        to 1.73 against our 0.48 to 1.77).
        """
    )


TWENTY_EPOCHS_REFERENCE = paragraph(
    """
    **At the paper's 20 epochs (a measured reference).** The paper's `independance.sh` trains for 20
    epochs. The β=4 isotropic and PCA arms were trained for 20 epochs on the same 5,760 images, 5 seeds each
    (`experiment_config("independence", "cpu", seeds=(seed,))` with the run's `epochs=20` and the arms
    `iso_beta4` and `pca_beta4`, through `run_experiment(..., workers=2)`; 7 to 18 minutes a run on 2 shared
    cores; the measurements are in `independence_20_epochs.json` beside this report). Paired differences
    PCA − isotropic (mean ± standard error over 5 seeds): Kim & Mnih disentanglement +0.021 ± 0.038 (0.530
    ± 0.046 against 0.509 ± 0.080; per seed −0.078, −0.011, +0.125, −0.022, +0.092), MIG +0.028 ± 0.005,
    DCI +0.044 ± 0.020, SAP +0.017 ± 0.007, reconstruction error +0.5 ± 1.3 nats per image. No run
    collapsed (every run keeps 6 to 10 active dimensions). Five times the epochs does not bring out a gain
    in the score the paper reports, which stays within noise, so no longer scale was added; MIG, DCI and
    SAP favour the PCA prior by more than 2 standard errors at 20 epochs.
    """
)
