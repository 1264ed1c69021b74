"""zarrl.envs.gmm_posterior: the seed paper's task, a diffusion sampler fine-tuned from a 25-mode
Gaussian-mixture prior toward the 9-mode posterior (Deleu et al., 2025; docs/environments.md).

Its densities and reward (:mod:`.mixtures`), the sampler environment (:mod:`.env`), the diffusion
policy and fast sampler (:mod:`.policy`, :mod:`.scoring`), the compiled CPU kernels
(:mod:`.native_gelu`, :mod:`.native_mlp`, built by :mod:`.native_build` from ``csrc/``), the
pre-trained prior (:mod:`.prior`, ``data/gmm_prior.pt``), the metrics (:mod:`.metrics`) and
classifier guidance (:mod:`.guidance`).
"""

from zarrl.envs.gmm_posterior.env import DiffusionSamplerEnv  # noqa: F401
from zarrl.envs.gmm_posterior.guidance import classifier_guidance_sample  # noqa: F401
from zarrl.envs.gmm_posterior.metrics import (  # noqa: F401
    assign_modes,
    elbo,
    is_log_z,
    mode_weight_tv,
    mode_weights,
    near_mode_fraction,
    target_mass,
    target_modes_hit,
    task_metrics,
    wasserstein2,
    wrong_mode_mass,
)
from zarrl.envs.gmm_posterior.mixtures import (  # noqa: F401
    GRID_MEANS,
    MAX_REWARD,
    TARGET_MEANS,
    TARGET_WEIGHTS,
    GaussianMixture,
    log_reward,
    prior_log_prob,
    sample_prior,
    sample_target,
    target_log_prob,
)
from zarrl.envs.gmm_posterior.native_gelu import native_gelu_available  # noqa: F401
from zarrl.envs.gmm_posterior.native_mlp import native_mlp_available, native_mlp_supports  # noqa: F401
from zarrl.envs.gmm_posterior.policy import (  # noqa: F401
    NUM_STEPS,
    SIGMA2,
    DiffusionActor,
    DiffusionStep,
    DriftNetwork,
    gaussian_step_log_prob,
    sample_trajectories,
)
from zarrl.envs.gmm_posterior.prior import (  # noqa: F401
    DEFAULT_PRIOR_PATH,
    brownian_bridge_paths,
    evaluate_prior,
    load_prior,
    load_prior_metadata,
    path_log_likelihood,
    pretrain_prior,
    save_prior,
)
