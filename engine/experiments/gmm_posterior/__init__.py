"""zarrl.engine.experiments.gmm_posterior: the seed paper's experiment (``zarrl experiment
gmm-posterior``): the sweep section and method configs (:mod:`.config`; each method is an ordinary
learner config of the ``gmm_posterior`` task, trained by the one
:class:`~zarrl.engine.trainer.Trainer`), the sweep over methods and seeds (:mod:`.experiment`) and
its report (:mod:`.reporting`). The command-line parser (:mod:`.cli`) imports no torch.
"""
