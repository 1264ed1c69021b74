"""zarrl.envs"""

# sequence MDPs and their exact solver (re-exported)
from zarrl.envs.sequence import (
    SequenceEnv,  # noqa: F401
    make_synthetic_tree_env,  # noqa: F401
)
from zarrl.envs.tree_solver import (
    SequenceTree,  # noqa: F401
    SoftOptimalSolution,  # noqa: F401
    TabularReward,  # noqa: F401
    random_log_policy,  # noqa: F401
    solve_soft_optimal,  # noqa: F401
    synthetic_tree_rewards,  # noqa: F401
    terminal_log_prob,  # noqa: F401
    uniform_log_policy,  # noqa: F401
)

# isort: split
# Gymnasium environments and the GMM diffusion-posterior task (environments engineer)
from zarrl.envs.diffusion_env import DiffusionSamplerEnv  # noqa: F401
from zarrl.envs.diffusion_policy import (  # noqa: F401
    NUM_STEPS,
    SIGMA2,
    DiffusionActor,
    DiffusionStep,
    DriftNetwork,
    gaussian_step_log_prob,
    sample_trajectories,
)
from zarrl.envs.gmm import (  # noqa: F401
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
from zarrl.envs.gmm_metrics import (  # noqa: F401
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
from zarrl.envs.guidance import classifier_guidance_sample  # noqa: F401
from zarrl.envs.gym_envs import make_base_env, make_env  # noqa: F401
from zarrl.envs.native_gelu import native_gelu_available  # noqa: F401
from zarrl.envs.native_mlp import native_mlp_available, native_mlp_supports  # noqa: F401
from zarrl.envs.prior_training import (  # noqa: F401
    DEFAULT_PRIOR_PATH,
    brownian_bridge_paths,
    evaluate_prior,
    load_prior,
    load_prior_metadata,
    path_log_likelihood,
    pretrain_prior,
    save_prior,
)
