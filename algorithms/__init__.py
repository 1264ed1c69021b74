"""zarrl.algorithms"""

from zarrl.algorithms.equivalence import (
    LogZValue,
    rtb_from_trust_pcl,
    sequence_rtb_from_trust_pcl,
    sequence_trust_pcl_from_rtb,
    trust_pcl_from_rtb,
)
from zarrl.algorithms.kl_budget import KLBudgetLambda, lambda_for_kl_budget, reweighted_kl
from zarrl.algorithms.kl_reinforce import KLReinforceLoss
from zarrl.algorithms.path_consistency import path_consistency, segment_marks
from zarrl.algorithms.rtb import RTBLoss
from zarrl.algorithms.scoring import BatchedLogProb
from zarrl.algorithms.sequence_losses import (
    SequenceKLReinforceLoss,
    SequenceMLELoss,
    SequenceRTBLoss,
    SequenceTrustPCLLoss,
)
from zarrl.algorithms.sequence_scoring import SequenceHeads, SequencePolicy
from zarrl.algorithms.trust_pcl import PCLLoss, TrustPCLLoss

__all__ = [
    "BatchedLogProb",
    "path_consistency",
    "segment_marks",
    "TrustPCLLoss",
    "PCLLoss",
    "RTBLoss",
    "KLReinforceLoss",
    "KLBudgetLambda",
    "lambda_for_kl_budget",
    "reweighted_kl",
    "LogZValue",
    "trust_pcl_from_rtb",
    "rtb_from_trust_pcl",
    "SequencePolicy",
    "SequenceHeads",
    "SequenceRTBLoss",
    "SequenceTrustPCLLoss",
    "SequenceKLReinforceLoss",
    "SequenceMLELoss",
    "sequence_trust_pcl_from_rtb",
    "sequence_rtb_from_trust_pcl",
]
