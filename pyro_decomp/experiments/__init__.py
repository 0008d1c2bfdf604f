"""The paper's three experiments (Mathieu et al., 2019, §5): configurations, runs, verdicts and a report.

``configs`` says what each experiment trains at each scale; ``measure`` trains and measures one run;
``verdicts`` decides from the measurements whether each claim held; ``report`` writes ``report.md``;
``runner`` runs everything (:func:`reproduce`, the ``pyro-decomp reproduce`` command).
"""

from pyro_decomp.experiments.configs import EXPERIMENTS, SCALES, Arm, ExperimentConfig, experiment_config
from pyro_decomp.experiments.report import write_report
from pyro_decomp.experiments.runner import reproduce, run_experiment

__all__ = [
    "EXPERIMENTS",
    "SCALES",
    "Arm",
    "ExperimentConfig",
    "experiment_config",
    "run_experiment",
    "write_report",
    "reproduce",
]
