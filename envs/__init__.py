"""zarrl.envs: the generic environments.

Gymnasium environments (:func:`make_env`) and sequence MDPs with their exact soft-optimal solver.
Each paper's task lives in a subpackage of its own: the GMM diffusion-posterior task of the seed
paper is :mod:`zarrl.envs.gmm_posterior`.
"""

from zarrl.envs.gym_envs import make_base_env, make_env  # noqa: F401

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
