"""zarrl.engine.experiments.gmm_posterior: the seed paper's experiment (``zarrl experiment
gmm-posterior``): its configs (:mod:`.config`), the learners of each method (:mod:`.methods`), the
training loop (:mod:`.runner`), the sweep over methods and seeds (:mod:`.experiment`) and its
report (:mod:`.reporting`). The command-line parser (:mod:`.cli`) imports no torch.
"""
