"""zarrl.engine.experiments: reproducible experiments of papers, one subpackage each.

:mod:`zarrl.engine.experiments.gmm_posterior` runs the seed paper's GMM diffusion-posterior
experiment (``zarrl experiment gmm-posterior``).
"""
